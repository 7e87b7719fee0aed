"""Suite files (YAML) -> typed, validated config: profiles overlaid, `key.path=value` overrides applied.

A suite's top level holds the `paper` settings; `profiles.<name>` overlays them (quick, smoke, ...).
"""
from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import HarnessError
from .registry import DATASETS, METHODS, MODELS, normalize, unknown

BENCHMARKS_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
PROFILES = ("paper", "quick", "smoke")


class NoBoolNumbers(BaseModel):
    """YAML's true/false is not a number: pydantic's lax mode would read `batch_size: true` as 1 (also inside
    lists and mappings of numbers, and for numeric choices such as `channels: 1 | 3`). Nor is a quoted "8" a
    whole number. Strings stay allowed where a float goes: PyYAML reads `1e-3` (no dot) as a string."""

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, v, info):
        if why := _wrong_number(cls.model_fields[info.field_name].annotation, v):
            raise ValueError(why)
        return v


def _wrong_number(annotation, v) -> str | None:
    """Why v cannot stand where `annotation` types a number (true/false; a string for a whole number), or None."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _wrong_number(args[0], v)
    if origin in (typing.Union, types.UnionType):
        if any(_takes(a, type(v)) for a in args) or (isinstance(v, str) and float in args):  # int | float: 1e-4
            return None
        return next((why for a in args if (why := _wrong_number(a, v))), None)
    whole = annotation is int or (origin is Literal and all(type(a) is int for a in args))
    if isinstance(v, bool) and (whole or annotation is float):
        return "expected a number, not true/false"
    if isinstance(v, str) and whole:
        digits = v.strip().lstrip("+-")
        quoted = digits.isascii() and digits.isdigit()  # "8": a number in quotes
        return f"expected a whole number, not the string {v!r} (write it without quotes)" if quoted else \
            "expected a whole number"
    if isinstance(v, (list, tuple)) and origin in (list, tuple) and args:
        return next((_in_list(why) for x in v if (why := _wrong_number(args[0], x))), None)
    if isinstance(v, dict) and origin is dict and len(args) == 2:
        return next((_in_list(why) for x in v.values() if (why := _wrong_number(args[1], x))), None)
    return None


def _in_list(why: str) -> str:
    return "expected numbers, not true/false" if "true/false" in why else why


def _takes(annotation, kind: type) -> bool:
    """Whether the annotation takes values of this Python type as they are (bool: true/false; str: text)."""
    if annotation is Any or annotation is kind:
        return True
    return typing.get_origin(annotation) is Literal and any(type(a) is kind for a in typing.get_args(annotation))


class Strict(NoBoolNumbers):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ModelCfg(Strict):
    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, v):
        MODELS.get(v)
        return v


class PaperFlops(Strict):
    """The paper's FLOPs column (multiply-accumulates per image) for its teacher and its student: the report's paper
    rows show them beside the counts of the models the runs used."""

    teacher: Optional[float] = Field(None, gt=0)
    student: Optional[float] = Field(None, gt=0)


class FolderDataCfg(Strict):
    """A user's image-classification dataset in the ImageFolder layout, `<folder>/{train,test}/<class>/<image>`
    (classes: the train folder's subfolders, sorted). Images are decoded once, resized to `size`, and cached."""

    folder: str
    size: list[int] = Field(default_factory=lambda: [32, 32], min_length=2, max_length=2)  # H, W
    channels: Literal[1, 3] = 3
    # per channel, for images scaled to [0, 1]; unset: 0.5 and 0.5, i.e. [-1, 1] (the generator's tanh range)
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    augment: Literal["none", "crop_flip"] = "none"  # crop_flip: CIFAR's random padded crop and flip

    @model_validator(mode="after")
    def _shapes(self):
        if min(self.size) < 1:
            raise ValueError(f"size must be two positive numbers (H, W), got {self.size}")
        for key in ("mean", "std"):
            v = getattr(self, key)
            if v is not None and len(v) != self.channels:
                raise ValueError(f"{key} needs one value per channel ({self.channels}), got {v}")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        return self


class TeacherRecipe(Strict):
    """How the harness trains a teacher; part of the teacher cache key."""

    epochs: int = Field(10, gt=0)
    batch_size: int = Field(256, gt=0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["none", "multistep", "cosine", "onecycle"] = "none"
    milestones: list[int] = Field(default_factory=list)  # epochs, for multistep
    gamma: float = Field(0.1, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment: Optional[bool] = None  # None: the dataset's own training augmentation
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    train_subset: Optional[int] = Field(None, gt=0)  # N training images drawn with the seed (smoke profiles)
    # as many epochs (at most `epochs`) as fit in this many seconds, from a timing of the step on this
    # machine; the schedule spans the epochs chosen. Left out of the cache key when unset.
    time_budget_s: Optional[float] = Field(None, gt=0)
    seed: int = 0

    @model_validator(mode="after")
    def _milestones_in_range(self):
        late = [m for m in self.milestones if not 0 < m < self.epochs] if self.schedule == "multistep" else []
        if late:  # a milestone at or past the last epoch is never reached: the schedule would not be the one written
            raise ValueError(f"milestones {late} are not within this recipe's epochs (1 to {self.epochs - 1}: "
                             f"a decay at epoch {self.epochs} or later never happens)")
        return self


class TeacherCfg(Strict):
    model: ModelCfg
    checkpoint: Optional[str] = None  # a user's weights (state_dict); skips training
    recipe: TeacherRecipe = Field(default_factory=TeacherRecipe)


class BudgetCfg(Strict):
    iterations: int = Field(gt=0)
    eval_every: int = Field(50, gt=0)  # the official "epoch" is 50 iterations
    # fail a run whose test accuracy sits at chance for this many evaluations in a row (None: never)
    chance_evals: Optional[int] = Field(None, gt=0)
    # as many iterations (at most `iterations`) as fit in this many seconds of training and evaluation, from a
    # timing of the method's steps and of one evaluation on this machine before the run (loop.fit_iterations);
    # the schedule spans the iterations chosen, a resumed run keeps them, and summary.json records them. The
    # count then depends on the machine: the config names the budget, not the iterations. Left out of the
    # run's config (and its hash) when unset.
    time_budget_s: Optional[float] = Field(None, gt=0)


class RuntimeCfg(Strict):
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # the students' test evaluations: fp32 whatever `precision` trains in (what student.pt scores wherever it is
    # loaded), or `run`: in the run's precision (bf16 evaluation measured 1.5-1.8x faster on a CPU; a few
    # predictions in 10,000 differ). Trained teachers' recorded accuracy is always fp32.
    eval_precision: Literal["fp32", "run"] = "fp32"
    channels_last: Literal["auto", "on", "off"] = "auto"
    threads: Optional[int] = Field(None, gt=0)
    deterministic: bool = False
    compile: bool = False
    # False: the teacher keeps parameter gradients and imitation steps build its graph (the official loop);
    # with precision=fp32 and channels_last=off this is the plain path `speed` compares against
    frozen_teacher: bool = True
    # generators compute each nearest-upsample + 3x3 conv as four 2x2 convs on the small input (4/9 of the
    # multiply-adds, the same function; harness/upconv.py); off on the plain path
    fused_upsample: bool = True
    # the frozen teacher's conv -> BatchNorm pairs folded into single convs (the same function, one kernel and
    # one pass over the activations fewer; harness/fold.py); needs frozen_teacher; methods that read the
    # teacher's BN layers (DFQ-style) keep them
    fold_teacher_bn: bool = True
    # a checkpoint at an evaluation only when this many seconds passed since the last (0: every evaluation);
    # the first evaluation, the end and a stop (Ctrl-C, SIGTERM) always write one. A SIGKILL loses at most this much.
    checkpoint_every_s: float = Field(60.0, ge=0)
    # CUDA only: after 3 eager iterations, capture a graphable method's iteration (DFAD, DFQ-style) once and
    # replay it, one launch instead of thousands (harness/graphs.py); other methods run eagerly. Off by default
    # until measured on a GPU.
    cuda_graph: bool = False
    # CPU, glibc: large blocks come from the heap and freed memory is kept for the next iteration, instead of
    # being unmapped and page-faulted in again at every allocation (env.set_allocator); process-wide
    keep_freed_memory: bool = True

    @model_validator(mode="after")
    def _one_launcher(self):
        if self.cuda_graph and self.compile:
            raise ValueError("cuda_graph and compile cannot both be on: choose one")
        return self

    @field_validator("channels_last", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare on/off (in a suite file or a key=value override) as a boolean
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v


class WandbCfg(Strict):
    mode: Optional[Literal["offline", "online", "disabled"]] = None  # None: $WANDB_MODE, else offline
    project: Optional[str] = None  # None: dfad-bench
    entity: Optional[str] = None
    sample_every: int = Field(5, gt=0)  # evaluations between grids of generated samples
    samples: int = Field(64, gt=0)


class TrackingCfg(Strict):
    wandb: WandbCfg = Field(default_factory=WandbCfg)


class SearchParam(Strict):
    """One dimension of a method's search space: a range (low, high[, log, step]) or a list of choices."""

    low: Optional[int | float] = None  # ints (1, 10) search integers, floats (1.0, 8.0) reals
    high: Optional[int | float] = None
    log: bool = False
    step: Optional[int | float] = Field(None, gt=0)
    choices: Optional[list[Any]] = Field(None, min_length=1)

    @model_validator(mode="after")
    def _shape(self):
        if (self.choices is None) == (self.low is None or self.high is None):
            raise ValueError("give either low and high, or choices")
        if self.choices is None and not self.low < self.high:
            raise ValueError(f"low {self.low} must be below high {self.high}")
        if self.log and (self.choices is not None or self.low <= 0 or self.step is not None):
            raise ValueError("log ranges need low > 0 and no step")
        return self

    @property
    def is_int(self) -> bool:
        return self.choices is None and all(isinstance(v, int) for v in (self.low, self.high, self.step or 1))


def folder_name(kind: str, name) -> None:
    """Names that become folders (runs, caches): letters, digits, '_' and '-', starting with a letter."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", name):
        raise ValueError(f"{kind} name {name!r}: use letters, digits, '_' and '-' (it names folders)")


class Suite(Strict):
    name: str
    description: str = ""
    profile: str = "paper"
    datasets: dict[str, FolderDataCfg] = Field(default_factory=dict)  # the suite's own datasets, by name
    dataset: str
    teacher: TeacherCfg
    student: ModelCfg
    budget: BudgetCfg
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    methods: dict[str, Optional[dict[str, Any]]]
    runtime: RuntimeCfg = Field(default_factory=RuntimeCfg)
    # the paper's numbers beside ours: a value, [mean, std] where the paper gives a spread, or its FAILED
    paper: dict[str, Union[float, tuple[float, float], Literal["FAILED"]]] = Field(default_factory=dict)
    paper_flops: PaperFlops = Field(default_factory=PaperFlops)
    # paper rows this suite cannot run, and why (e.g. the related data is not to be had): the report's footnote
    unavailable: dict[str, str] = Field(default_factory=dict)
    notes: dict[str, str] = Field(default_factory=dict)  # per profile: what was scaled and why
    tracking: TrackingCfg = Field(default_factory=TrackingCfg)
    search: dict[str, dict[str, SearchParam]] = Field(default_factory=dict)  # per method, for `tune`

    @field_validator("methods")
    @classmethod
    def _method_names(cls, v):
        for name in v:  # a label names its runs' folder and override paths (methods.<label>.<key>)
            folder_name("method", name)
            if name in ("teacher", "report"):  # the suite's own folders beside the methods'
                raise ValueError(f"method name {name!r} is reserved (the suite's {name} folder)")
        return v

    @field_validator("paper", mode="before")
    @classmethod
    def _paper_values(cls, v):
        import math

        def number(x):
            return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

        for k, x in (v.items() if isinstance(v, dict) else ()):
            ok = (x == "FAILED" or number(x)
                  or (isinstance(x, (list, tuple)) and len(x) == 2 and all(number(y) for y in x)))
            if not ok:
                raise ValueError(f"paper.{k}: a number, [mean, std] or FAILED (got {x!r})")
            if isinstance(x, (list, tuple)) and x[1] < 0:
                raise ValueError(f"paper.{k}: [mean, std] with std >= 0, not {list(x)}")
        return v

    @field_validator("unavailable")
    @classmethod
    def _unavailable_rows(cls, v, info):
        if "paper" not in info.data:
            return v  # `paper` failed its own validation, whose error says what is wrong
        if extra := sorted(set(v) - set(info.data["paper"])):
            raise ValueError(f"{extra[0]!r} is not a row of `paper` (only the paper's rows can be marked unavailable)")
        return v

    @field_validator("seeds")
    @classmethod
    def _seed_values(cls, v):
        if any(s < 0 for s in v) or len(set(v)) < len(v):
            raise ValueError(f"seeds {v}: each seed once, none negative")
        return v

    @field_validator("datasets")
    @classmethod
    def _own_names(cls, v):
        from .data import is_builtin

        for name in v:
            folder_name("dataset", name)
            if is_builtin(name):
                raise ValueError(f"{name!r} is a built-in dataset; give yours another name")
        return v

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v, info):
        if "datasets" not in info.data:
            return v  # `datasets` failed its own validation, whose error says what is wrong
        own = info.data["datasets"]
        if v in own:
            from .data import register_folder

            register_folder(v, own[v])
        else:
            DATASETS.get(v)
        return v

    def own_dataset(self) -> dict | None:
        """The definition of the suite's dataset when the suite defines it (with its files' fingerprint)."""
        if self.dataset not in self.datasets:
            return None
        from .data import get_dataset

        return {**self.datasets[self.dataset].model_dump(mode="json"), "files": get_dataset(self.dataset).cache_name}

    def method_class(self, name: str):
        """A methods entry is a registered method, or a variant label with `method: <registered name>`."""
        return METHODS.get(method_of(name, self.methods.get(name)))

    def method_params(self, name: str):
        entry = dict(self.methods.get(name) or {})
        entry.pop("method", None)
        return self.method_class(name).Params.model_validate(entry)  # keys need not be strings

    def method_names(self) -> list[str]:
        return list(self.methods)

    def run_config(self, method: str, seed: int) -> dict:
        """The resolved config of one run: what config.yaml holds and what identifies the run."""
        d = self.model_dump(mode="json", exclude={"methods", "seeds", "paper", "paper_flops", "unavailable", "notes",
                                                            "description", "tracking", "search", "datasets"})
        if own := self.own_dataset():  # only then: the configs (and hashes) of runs on built-in data stay as they were
            d["dataset_def"] = own
        if self.teacher.checkpoint and (digest := file_digest(self.teacher.checkpoint)):
            d["teacher_sha256"] = digest  # the weights, not the path: a file replaced under one name is another teacher
        if d["budget"].get("time_budget_s") is None:  # added later: unset, the configs of earlier runs stay as they were
            d["budget"].pop("time_budget_s", None)
        d.update(method=method, seed=seed, params=self.method_params(method).model_dump(mode="json"))
        cls = method_of(method, self.methods.get(method))
        if cls != method:  # a variant: record which registered method runs it
            d["method_class"] = cls
        if (version := self.method_class(method).version) != 1:  # from 2 on: version 1 runs' hashes stay as they were
            d["method_version"] = version
        return d


def file_digest(path: str) -> str | None:
    """sha256 (16 hex digits) of a file's bytes, None if there is no such file; computed once per version."""
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        return None
    st = p.stat()
    return _digest(str(p), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def method_of(label: str, entry: dict | None) -> str:
    return (entry or {}).get("method", label) if isinstance(entry, dict) else label


def config_hash(d: dict, ignore=("runtime",)) -> str:
    d = {k: v for k, v in d.items() if k not in ignore}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def suite_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise HarnessError(f"suite file {p} does not exist")
        return p
    candidate = BENCHMARKS_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    raise HarnessError(unknown("suite", name_or_path, list_suites()))


def list_suites() -> list[str]:
    return sorted(p.stem for p in BENCHMARKS_DIR.glob("*.yaml"))


def read_yaml(path: Path, what: str = "suite file") -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise HarnessError(f"{path}:{where} malformed YAML ({getattr(e, 'problem', e)})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise HarnessError(f"{path}: cannot read {what} ({e})") from None
    if not isinstance(data, dict):
        raise HarnessError(f"{path}: a {what} must be a mapping of keys, got {type(data).__name__}")
    return data


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise HarnessError(f"override {text!r} is not key.path=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts) or not all(p.replace("_", "").replace("-", "").isalnum() for p in parts):
        raise HarnessError(f"override {text!r}: {key!r} is not a dotted key path")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_override(data: dict, parts: list[str], value: Any) -> None:
    node = data
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise HarnessError(f"override {'.'.join(parts)}: {p!r} is not a section")
        node = nxt
    node[parts[-1]] = value


def default_profile(profiles=None) -> tuple[str, str]:
    """`paper` with CUDA, `quick` without, and `paper` for a suite whose `profiles` has no quick one."""
    import torch

    if torch.cuda.is_available():
        return "paper", "CUDA is available"
    if not (isinstance(profiles, dict) and "quick" in profiles):
        return "paper", "no CUDA device, and the suite has no quick profile"
    return "quick", "no CUDA device"


def load_suite(name_or_path: str, profile: str | None = None, overrides: list[str] = (),
               methods: list[str] | None = None, seeds: list[int] | None = None,
               params_file: str | None = None, also_methods: list[str] | None = None) -> Suite:
    """also_methods: methods outside the suite that overrides may set (those a command runs with --methods even
    where this load selects the whole suite, e.g. for the report after the runs)."""
    path = suite_path(name_or_path)
    raw = read_yaml(path)
    profiles = raw.pop("profiles", {}) or {}
    if not isinstance(profiles, dict):
        raise HarnessError(f"{path}: 'profiles' must be a mapping")
    profile = profile or default_profile(profiles)[0]
    if profile != "paper":
        if profile not in profiles:
            raise HarnessError(unknown("profile", profile, ["paper", *profiles]) + f" (suite {path.stem})")
        if not isinstance(profiles[profile], dict):
            raise HarnessError(f"{path}: profiles.{profile} must be a mapping")
        raw = deep_merge(raw, profiles[profile])
    raw.setdefault("name", path.stem)
    raw["profile"] = profile
    source = str(path)
    if params_file:  # errors name both files: a key may come from either
        raw = deep_merge(raw, read_yaml(Path(params_file), "--params file"))
        source = f"{path} with --params {params_file}"
    overridden = []
    has = raw.get("methods") if isinstance(raw.get("methods"), dict) else {}
    methods = _method_keys(methods, has) if methods else methods
    settable = {*has, *(methods or []), *(also_methods or [])}  # the suite's methods and those the command runs
    for text in overrides:
        parts, value = parse_override(text)
        if (len(parts) > 1 and parts[0] == "methods" and parts[1] not in settable
                and parts[1] in registered_methods()):  # (an unknown name is refused as such when validated)
            # it would add a method with its built-in defaults to every run of the suite
            names = ", ".join(has) or "none"
            hint = (f"; did you mean {close[0]!r}?" if (close := difflib.get_close_matches(parts[1], list(has), 1))
                    else f"; run a method outside it with --methods {parts[1]} (its defaults, then this override)")
            raise HarnessError(f"override {text.strip()}: suite {path.stem} has no method {parts[1]!r} "
                               f"(its methods: {names}){hint}")
        apply_override(raw, parts, value)
        overridden.append((".".join(parts), text.strip()))
    try:
        return _select_and_validate(raw, path, source, methods, seeds)
    except HarnessError as e:
        raise _blame_override(e, source, overridden) from None


def _method_keys(names: list[str], suite_methods: dict) -> list[str]:
    """--methods as typed (`DFAD`, `kd-ori`) -> the suite's entry of that name, else the registered method's name;
    each once, in order. An unknown name passes through: validation refuses it, with a suggestion."""
    by_key, registered = {normalize(k): k for k in suite_methods}, registered_methods()
    out = []
    for m in names:
        n = normalize(m)
        key = m if m in suite_methods else by_key.get(n) or (n if n in registered else m)
        if key not in out:
            out.append(key)
    return out


def registered_methods() -> list[str]:
    import methods  # noqa: F401  (register every method)

    return METHODS.names()


def _blame_override(e: HarnessError, source: str, overridden: list[tuple[str, str]]) -> HarnessError:
    """An error at a key a command-line override set names that override, not the suite file."""
    msg = str(e)
    if not msg.startswith(source + ": "):
        return e
    rest = msg[len(source) + 2:]
    loc = rest.split(":", 1)[0].split(" ", 1)[0]
    for key, text in reversed(overridden):  # the last override of a key is the one that counts
        if loc == key or loc.startswith(key + "."):
            return HarnessError(f"override {text}: {rest}")
    for key, text in reversed(overridden):  # a name check without a key ("unknown model 'x'") naming its value
        names = [text.split("=", 1)[1].strip(), *key.split(".")[1:]]  # or a name in its key (methods.<name>.lr)
        if any(n and f"'{n}'" in rest for n in names):
            return HarnessError(f"override {text}: {rest}")
    inside = [text for key, text in overridden if key.startswith(loc + ".")]
    if inside:  # a check of a whole section (e.g. milestones within epochs): the file and the overrides together
        return HarnessError(f"{source} with override {', '.join(inside)}: {rest}")
    return e


def _select_and_validate(raw: dict, path: Path, source: str, methods, seeds) -> Suite:
    default_methods = raw.pop("run_methods", None)  # a profile's default selection (e.g. CPU-sized)
    if default_methods is not None and not (isinstance(default_methods, list)
                                            and all(isinstance(m, str) for m in default_methods)):
        raise HarnessError(f"{path}: run_methods must be a list of method names (got {default_methods!r})")
    if not methods and default_methods:
        methods = list(default_methods)
    if methods:
        known = raw.get("methods") or {}
        if not isinstance(known, dict):
            raise HarnessError(f"{path}: methods must be a mapping of method names (got {known!r})")
        # every entry, also those --methods leaves out: an override's typo is not ignored (whether a left-out
        # method could find its data here is not asked)
        validate(raw, source, data_sources=False)
        for m in methods:
            if m not in known:
                METHODS.get(m)
        raw["methods"] = {m: known.get(m, {}) for m in methods}
    if seeds is not None:
        raw["seeds"] = list(seeds)
    return validate(raw, source)


def validate(raw: dict, source: str = "suite", data_sources: bool = True) -> Suite:
    import methods  # noqa: F401  (register every method before checking names)

    from .data import READING_STORED_RUNS

    try:
        suite = Suite.model_validate(raw)  # not Suite(**raw): a YAML key may be a number
        for name, params in suite.methods.items():
            if params is not None and not isinstance(params, dict):
                raise HarnessError(f"methods.{name}: expected a mapping of hyperparameters, got {params!r}")
            try:
                params = suite.method_params(name)
            except ValidationError as e:
                raise HarnessError(f"{source}: {one_line(e, prefix=f'methods.{name}.')}") from None
            if getattr(params, "data", None) is not None and params.data not in DATASETS:  # KD's data source
                raise HarnessError(f"methods.{name}.data: {unknown('dataset', params.data, DATASETS.names())}")
            cls = suite.method_class(name)
            if (data_sources and not READING_STORED_RUNS.get() and not cls.data_free
                    and cls.training_data(params, suite.dataset) is None):
                raise HarnessError(f"methods.{name}: no default data source for dataset {suite.dataset!r}; set "
                                   f"methods.{name}.data to a dataset name")
        check_search(suite)
        return suite
    except ValidationError as e:
        raise HarnessError(f"{source}: {one_line(e)}") from None
    except HarnessError as e:
        msg = str(e)
        raise HarnessError(msg if msg.startswith(source) else f"{source}: {msg}") from None


def check_search(suite: Suite) -> None:
    """Every searched name is a hyperparameter of its method, and every bound or choice a valid value."""
    for name, space in suite.search.items():
        if name not in suite.methods:
            continue  # a search for a method this run leaves out (--methods) is not an error
        base = dict(suite.methods.get(name) or {})
        base.pop("method", None)
        fields = suite.method_class(name).Params.model_fields
        for key, sp in space.items():
            if key not in fields:
                raise HarnessError(f"search.{name}.{key}: not a hyperparameter of {name} ({', '.join(fields)})")
            for v in sp.choices if sp.choices is not None else (sp.low, sp.high):
                try:
                    suite.method_class(name).Params.model_validate({**base, key: v})
                except ValidationError as e:
                    raise HarnessError(f"search.{name}.{key}: {v!r} is not valid ({one_line(e)})") from None
            if sp.choices is None and not sp.is_int:  # a real range draws fractions: the field must take them
                inside = sp.low + 0.37 * (sp.high - sp.low)
                try:
                    suite.method_class(name).Params.model_validate({**base, key: inside})
                except ValidationError:
                    raise HarnessError(f"search.{name}.{key}: low {sp.low!r} and high {sp.high!r} make a range of "
                                       f"real numbers, and {key} takes whole numbers (e.g. not {inside:.3g}); write "
                                       f"both bounds (and step) as integers") from None


def _key(part) -> str:
    """A key of an error's location as written, quoted when it would not read as one (empty, spaces, a newline)."""
    s = str(part)
    return s if s and s.isprintable() and not any(c.isspace() or c == "." for c in s) else repr(s)


def one_line(e: ValidationError, prefix: str = "") -> str:
    """A pydantic error as one line: where, what, and the value given."""
    errs = e.errors()
    err = errs[0]
    missing = [x for x in errs if x["type"] == "missing"]
    extra = [x for x in errs if x["type"] == "extra_forbidden"]
    if missing and extra:  # a misspelt required key is both: the unknown key is the mistake to name
        err = extra[0]
    loc = prefix + ".".join(_key(x) for x in err["loc"])
    msg = " ".join(err["msg"].split())
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
        beside = [str(x["loc"][-1]) for x in missing if tuple(x["loc"][:-1]) == tuple(err["loc"][:-1])]
        if close := difflib.get_close_matches(str(err["loc"][-1]), beside, n=1):
            msg += f"; did you mean {close[0]!r}?"
    given = err.get("input")
    shown = "" if err["type"] in ("extra_forbidden", "missing") or isinstance(given, dict) else f" (got {given!r})"
    more = f" (+{e.error_count() - 1} more)" if e.error_count() > 1 else ""
    return f"{loc}: {msg}{shown}{more}"
