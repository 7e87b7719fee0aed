"""Runs a suite: the teacher, then every (method, seed) into the store, skipping what is finished."""
from __future__ import annotations

import copy
import math
import os
import time
import traceback
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from . import env
from .api import build_context, make_method, runtime_switches
from .config import Suite, config_hash
from .data import get_dataset, metric_word
from .errors import DivergenceError, HarnessError, MissingDataError, NotApplicableError, first_line
from .locks import Busy, exclusive
from .loop import CHECKPOINT_VERSION, fit_iterations, run_loop
from .models import build_model, check_fits, check_same_output, count_macs
from .progress import SuiteProgress
from .store import STORAGE_ERRNOS, RunDir, Store, atomic_torch_save
from .teacher import ensure_teacher, is_cached, load_weights


@dataclass
class SuiteOutcome:
    done: list[tuple[str, int]] = field(default_factory=list)
    skipped: list[tuple[str, int]] = field(default_factory=list)
    failed: list[tuple[str, int, str]] = field(default_factory=list)
    # cannot apply to this config (e.g. DFQ-style on a teacher without BatchNorm): n/a in tables, not an error
    not_applicable: list[tuple[str, int, str]] = field(default_factory=list)
    # their data is not on this machine (e.g. KD-REL's USPS): n/a in tables; tried again when the suite runs again
    missing_data: list[tuple[str, int, str]] = field(default_factory=list)
    # of the failed, those that crashed (an exception that is not a diagnosed failure such as divergence, or a
    # launcher job that died): no result was measured, so the command exits non-zero
    crashed: list[tuple[str, int, str]] = field(default_factory=list)

    def merge(self, other: "SuiteOutcome") -> None:
        """Add another process's outcome (a launcher's job) to this one."""
        for f in fields(self):
            getattr(self, f.name).extend(getattr(other, f.name))

    def messages(self) -> list[str]:
        """End-of-suite lines for the user: what failed and why, and what does not apply here."""
        out = []
        if self.failed:
            why = "; ".join(f"{m} seed {s}: {r}" for m, s, r in self.failed[:3])
            more = f"; +{len(self.failed) - 3} more" if len(self.failed) > 3 else ""
            out.append(f"{len(self.failed)} run(s) failed ({why}{more})")
        if self.not_applicable:
            reasons = sorted({f"{m}: {r}" for m, _, r in self.not_applicable})
            out.append(f"{len(self.not_applicable)} run(s) not applicable here, shown as n/a ({'; '.join(reasons)})")
        if self.missing_data:
            reasons = sorted({f"{m}: {r}" for m, _, r in self.missing_data})
            out.append(f"{len(self.missing_data)} run(s) without their data here, shown as n/a until it is added "
                       f"and the suite runs again ({'; '.join(reasons)})")
        return out


def planned_runs(suite: Suite) -> list[tuple[str, int]]:
    return [(m, s) for m in suite.method_names() for s in suite.seeds]


def check_finished_runs(suite: Suite, store: Store, force: bool) -> None:
    """A finished run made with another config is never silently reused, nor silently overwritten."""
    if force:
        return
    for method, seed in planned_runs(suite):
        if why := finished_elsewise(suite, store.run(method, seed), method, seed):
            raise HarnessError(why)


def finished_elsewise(suite: Suite, rd: RunDir, method: str, seed: int) -> str | None:
    """Why a finished run cannot stand for this config (its config differs, or cannot be read), or None."""
    s = rd.summary()
    if not (s and s.get("status") == "done"):
        return None
    stored = read_yaml_or_none(rd.config)
    current = suite.run_config(method, seed)
    if stored is None:
        state = "is missing" if not rd.config.exists() else "cannot be read"
        return (f"{rd.path} finished, but its config.yaml {state}, so it cannot be matched to this config; "
                f"restore the file, or pass --force to redo the run (--runs-dir to keep both)")
    if precision_of(stored) != precision_of(current):
        return (f"{rd.path} finished with runtime.precision={precision_of(stored)}, not {precision_of(current)}; "
                f"pass --force to redo it or --runs-dir to keep both")
    if key := run_difference(stored, current):
        return (f"{rd.path} finished with a different config ({key} differs, profile {s.get('profile')!r}, "
                f"{s.get('iterations')} iterations); pass --force to redo it or --runs-dir to keep both")
    return None


def other_seed_conflicts(suite: Suite, store: Store) -> list[str]:
    """Finished seeds of this suite's methods that this invocation does not run, made with another config: the
    table will not average them with the new ones (a cell of mixed configs is n/a), so say so before training."""
    out, warned = [], set()
    for rd in store.runs():
        if rd.method not in suite.methods or rd.method in warned or rd.seed in suite.seeds or not rd.is_done():
            continue
        stored = read_yaml_or_none(rd.config)
        if stored and (key := run_difference(stored, suite.run_config(rd.method, rd.seed))):
            warned.add(rd.method)
            out.append(f"{rd.method} seed {rd.seed} in {store.dir} finished with another config ({key} differs); "
                       f"the table will show {rd.method} as n/a until its seeds share one config")
    return out


def same_config(stored: dict, current: dict, ignore=("runtime",)) -> bool:
    """Equal on every key the stored run recorded; keys added to the schema since then are ignored,
    so upgrading the harness does not orphan finished runs. Runtime switches (device, threads, layout,
    fusion, BN folding, frozen teacher, compile) only change speed and rounding order and do not change what a run
    is; precision does (bf16 against fp32 is what the default-vs-plain parity experiment compares)."""
    return run_difference(stored, current, ignore) is None


def run_difference(stored: dict, current: dict, ignore=("runtime",), missing_differs: bool = True) -> str | None:
    """The first key in which two run configs differ as runs (see same_config), or None."""
    if "runtime" in ignore and precision_of(stored) != precision_of(current):
        return "runtime.precision"
    return config_difference(stored, current, ignore, missing_differs)


def config_difference(stored: dict, current: dict, ignore=("runtime",), missing_differs: bool = True) -> str | None:
    """The first key (dotted) the stored run recorded with another value than now, or None. missing_differs=False:
    only keys both have are compared (two stored runs, one made before a key was added to the schema)."""
    for k, v in stored.items():
        if k in ignore:
            continue
        if k not in current:
            if missing_differs:
                return str(k)
            continue
        if isinstance(v, dict) and isinstance(current[k], dict):
            if (sub := config_difference(v, current[k], (), missing_differs)) is not None:
                return f"{k}.{sub}"
        elif v != current[k]:
            return str(k)
    return None


def precision_of(cfg: dict) -> str:
    rt = cfg.get("runtime")
    return rt.get("precision", "auto") if isinstance(rt, dict) else "auto"


def read_yaml_or_none(path: Path) -> dict | None:
    import yaml

    try:
        d = yaml.safe_load(Path(path).read_text())
        return d if isinstance(d, dict) else None
    except (OSError, yaml.YAMLError):
        return None


def build_student(suite: Suite):
    spec = get_dataset(suite.dataset)
    return build_model(suite.student.name, num_classes=spec.num_classes, in_channels=spec.input_shape[0],
                       **suite.student.kwargs)


# check_models runs models at inputs up to this many pixels for real (2 zeros: milliseconds on a CPU), larger ones
# on "meta"
SMALL_INPUT = 64 * 64


def check_models(suite: Suite, roles=("teacher", "student")) -> None:
    """The suite's teacher and student built, and a batch passed through each: on the CPU for inputs of up to
    SMALL_INPUT pixels, else on the meta device (shapes only, no arithmetic; where that fails, once more on the CPU,
    whose messages are the informative ones). A model
    its kwargs cannot build, one that cannot take the dataset's input, or one with the wrong number of outputs
    is then a one-line error before any training, not a failed run later. Draws no random numbers a run sees."""
    spec = get_dataset(suite.dataset)
    cfgs = {"teacher": suite.teacher.model, "student": suite.student}
    outputs = {}
    for role in roles:
        cfg = cfgs[role]
        what = f"{role} {cfg.name}" + (f" ({', '.join(f'{k}={v!r}' for k, v in cfg.kwargs.items())})"
                                       if cfg.kwargs else "")

        def build():
            # torch's warnings about such a model (zero-element layers): the one-line error below says what is wrong
            with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return build_model(cfg.name, num_classes=spec.num_classes, in_channels=spec.input_shape[0],
                                   **cfg.kwargs)

        try:
            model = build()
        except HarnessError:
            raise
        except Exception as e:
            raise HarnessError(f"{what} cannot be built: {type(e).__name__}: {first_line(e)}") from None
        if role == "teacher" and suite.teacher.checkpoint:  # its keys and shapes fit the model, nothing loaded
            load_weights(model, suite.teacher.checkpoint, load=False)
        fits = (what, spec.input_shape, spec.num_classes, f"{suite.dataset}'s input")
        if math.prod(spec.input_shape[1:]) <= SMALL_INPUT:  # 2 zeros through the real model: milliseconds
            with torch.random.fork_rng(devices=[]):  # (a lazy layer initialises itself on its first call)
                outputs[role] = check_fits(model, *fits)
            continue
        try:  # on "meta" no size costs anything, but the first such call imports torch._dynamo (over a second)
            outputs[role] = check_fits(model.to("meta"), *fits)
        except HarnessError:
            outputs[role] = check_fits(build(), *fits)
    if len(outputs) == 2:
        check_same_output(outputs["teacher"], outputs["student"], f"{suite.dataset}'s input")


def data_needs(suite: Suite, runs_dir: Path | None = None) -> dict[tuple[str, str], list[str]]:
    """(dataset, split) -> what reads it: the suite's test split (evaluation), its train split (the teacher,
    unless a checkpoint is given or runs_dir caches it) and each data-driven method's training data."""
    needs: dict[tuple[str, str], list[str]] = {(suite.dataset, "test"): ["evaluation"]}
    if not suite.teacher.checkpoint and not (runs_dir is not None and is_cached(suite, runs_dir)):
        needs[(suite.dataset, "train")] = ["teacher training"]
    for m in suite.method_names():
        source = suite.method_class(m).training_data(suite.method_params(m), suite.dataset)
        if source:
            needs.setdefault((source, "train"), []).append(m)
    return needs


def load_resume_state(rd: RunDir, fingerprint: str, log, cfg: dict | None = None,
                      previous_cfg: dict | None = None) -> dict | None:
    if not rd.checkpoint.exists():
        return None
    try:
        state = torch.load(rd.checkpoint, map_location="cpu", weights_only=True)
        if state.get("version") != CHECKPOINT_VERSION or state.get("fingerprint") != fingerprint:
            raise ValueError("it was made by another config or version")
        if cfg is not None and previous_cfg is not None and precision_of(previous_cfg) != precision_of(cfg):
            raise ValueError(f"it was made with runtime.precision={precision_of(previous_cfg)}, "
                             f"not {precision_of(cfg)}")
        return state
    except Exception as e:  # corrupt, foreign or incompatible: start over, say so once
        log(f"warning: checkpoint {rd.checkpoint} unusable ({str(e).splitlines()[0][:100]}); restarting the run")
        return None


class RunCallback:
    """Observers of a run (tracking, tuning): the local store stays the source of truth."""

    def on_run_start(self, rd: RunDir, config: dict, summary: dict) -> dict:
        """Called before training; returns fields to add to summary.json (e.g. a tracker's run id)."""
        return {}

    def on_eval(self, row: dict, method) -> None:
        pass

    def on_run_end(self, summary: dict) -> None:
        pass


def execute_run(suite: Suite, method: str, seed: int, rd: RunDir, teacher, test, device, progress: SuiteProgress,
                callbacks: list[RunCallback] = ()):
    cfg = suite.run_config(method, seed)
    fp = config_hash(cfg)
    rd.path.mkdir(parents=True, exist_ok=True)
    previous_cfg = read_yaml_or_none(rd.config)  # what an unfinished run's checkpoint was made with
    rd.write_config(cfg)
    spec = get_dataset(suite.dataset)
    base = {"suite": suite.name, "profile": suite.profile, "method": method, "seed": seed, "config_hash": fp,
            "dataset": suite.dataset, "teacher_acc": teacher.acc, "git_commit": env.git_commit(),
            "versions": env.versions(), "device": env.device_name(device)}
    base.update(metric=spec.metric, **getattr(teacher.model, "summary_info", {}))  # mIoU runs; teacher backbone
    t0 = time.perf_counter()
    try:
        torch.manual_seed(seed)
        student = build_student(suite)
        macs = count_macs(student, spec.input_shape)
        resume = load_resume_state(rd, fp, progress.log, cfg, previous_cfg)

        def method_on(model, iterations):
            ctx = build_context(teacher.model, model, spec.input_shape, spec.num_classes, seed, iterations, device,
                                dataset=suite.dataset, **runtime_switches(suite.runtime))
            return make_method(cfg.get("method_class", method), ctx, cfg["params"])

        iterations, budget_s = suite.budget.iterations, suite.budget.time_budget_s
        budget_started = time.perf_counter()  # the budget's clock: the probe, building the run and the run
        if resume:  # the iterations planned when the run began (a time budget's choice), not a new probe's
            iterations = resume.get("iterations", iterations)
            if chosen := resume.get("time_budget") or (rd.summary() or {}).get("time_budget"):
                base["time_budget"] = chosen
        elif budget_s:
            def probe():
                pm = method_on(copy.deepcopy(student), iterations)
                pm.setup()
                return pm

            iterations, base["time_budget"] = fit_iterations(
                probe, test, iterations, suite.budget.eval_every, budget_s,
                lambda line: progress.log(f"  {method} seed {seed}: {line}"))
        m = method_on(student, iterations)
        ctx = m.ctx
        precision = str(ctx.precision or "fp32").replace("torch.", "")
        base.update(student_macs=macs, data_free=m.data_free, precision=precision, channels_last=ctx.channels_last,
                    eval_precision=precision if ctx.eval_autocast else "fp32",
                    frozen_teacher=ctx.fast, teacher_bn_folded=ctx.teacher_bn_folded)
        m.setup()
        # whether a generator of this method fuses upsample+conv (a method without one has nothing to fuse)
        base["fused_upsample"] = any(getattr(mod, "fused_upsample", False) for mod in m.modules.values())
        rows = list(resume["history"]) if resume else []
        if rows:  # the evaluations so far, also where metrics.csv was lost and no evaluation is left to run
            rd.write_metrics(rows)
        if resume:  # offline W&B cannot resume a run: a new W&B run continues it, and names the earlier ones
            earlier = rd.summary() or {}
            ids = [*earlier.get("wandb_resumed_from", []), *filter(None, [earlier.get("wandb_id")])]
            if ids:
                base["wandb_resumed_from"] = ids
        for cb in callbacks:
            base.update(cb.on_run_start(rd, cfg, base) or {})
        rd.write_summary({**base, "status": "running"})

        def on_eval(row):
            rows.append(row)
            rd.write_metrics(rows)
            progress.on_eval(row)
            for cb in callbacks:
                cb.on_eval(row, m)

        progress.start_run(f"{method} seed {seed}", iterations, resume["iteration"] if resume else 0)
        result = run_loop(m, test, iterations, suite.budget.eval_every, checkpoint=rd.checkpoint,
                          resume_state=resume, on_eval=on_eval, on_progress=progress.update_run, fingerprint=fp,
                          chance_evals=suite.budget.chance_evals,
                          checkpoint_every_s=suite.runtime.checkpoint_every_s, time_budget=base.get("time_budget"),
                          budget_started=budget_started)
        atomic_torch_save({k: v.detach().cpu() for k, v in result.student.state_dict().items()}, rd.student)
        best_row = max(result.history, key=lambda r: r["test_acc"])
        summary = {**base, "status": "done", "best_acc": result.best_acc, "final_acc": result.final_acc,
                   "best_iteration": best_row["iteration"], "iterations": result.iterations,
                   "wall_time_s": round(result.wall_time_s, 2), "train_time_s": round(result.train_time_s, 2),
                   # train_time_s adds up every session's training time (the checkpoint carries it), so this is
                   # the run's mean over all its iterations, resumed or not
                   "s_per_iter": round(result.train_time_s / max(1, result.iterations), 4),
                   "resumed_from": result.resumed_from,
                   # images through the teacher, so methods can be compared at equal cost
                   "teacher_forward_images": getattr(m, "teacher_images", None)}
        if result.cuda_graph:
            summary["cuda_graph"] = result.cuda_graph
        if result.time_budget:  # with where the run stopped, when the machine turned out slower than its probe
            summary["time_budget"] = result.time_budget
            if "stopped_at" in result.time_budget:
                progress.log(f"  {method} seed {seed}: stopped at iteration {result.iterations} of "
                             f"{result.time_budget['planned_iterations']}: {result.time_budget['stopped_because']}")
        rd.write_summary(summary)
        for cb in callbacks:
            cb.on_run_end(summary)
        progress.end_run("done", f"best {result.best_acc:.4f}, final {result.final_acc:.4f}, "
                                 f"{result.wall_time_s:.0f}s")
        return summary
    except KeyboardInterrupt:
        stopped = {**base, "status": "interrupted", "wall_time_s": round(time.perf_counter() - t0, 2)}
        rd.write_summary(stopped)
        for cb in callbacks:  # a W&B run is closed (as not done), not left open; the resumed run is a new one
            try:
                cb.on_run_end(stopped)
            except Exception:
                pass
        raise
    except Exception as e:
        reason = str(e).splitlines()[0] if isinstance(e, HarnessError) else f"{type(e).__name__}: {e}".splitlines()[0]
        if not isinstance(e, HarnessError):
            try:
                (rd.path / "error.log").write_text(traceback.format_exc())
            except OSError:  # e.g. the disk is full: the summary below matters more
                pass
        failed = {**base, "status": "failed", "reason": reason, "crashed": not isinstance(e, HarnessError),
                  "unavailable": isinstance(e, (MissingDataError, NotApplicableError)),
                  # a result, kept when the suite runs again (--force trains it again): a method that cannot apply
                  # to this config, and a diagnosed divergence (NaN/Inf, stuck at chance), which a rerun of the same
                  # config and seed would repeat; a crash, missing data or other bad input is tried again
                  "retry": not isinstance(e, (NotApplicableError, DivergenceError)),
                  "wall_time_s": round(time.perf_counter() - t0, 2)}
        try:
            rd.write_summary(failed)
        except OSError:  # the disk is full: the checkpoint before this one is intact, and the error below says so
            pass
        for cb in callbacks:
            try:
                cb.on_run_end(failed)
            except Exception:
                pass
        progress.end_run("n/a" if failed["unavailable"] else "FAILED", reason, label=f"{method} seed {seed}")
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            raise  # a full disk fails every run after this one too: stop the suite (cli: one line, exit 2)
        return None


def run_suite(suite: Suite, runs_dir: str | Path = "runs", force: bool = False,
              progress: SuiteProgress | None = None, callbacks: list[RunCallback] = ()) -> SuiteOutcome:
    device = env.runtime_device(suite.runtime)  # a setting this machine cannot honour fails before anything is made
    store = Store(runs_dir, suite.name)
    store.ensure_writable()
    check_models(suite)  # first: a finished run's config names the teacher checkpoint's bytes
    check_finished_runs(suite, store, force)
    env.apply_runtime(suite.runtime)
    runs = planned_runs(suite)
    progress = progress or SuiteProgress(len(runs))
    outcome = SuiteOutcome()
    with progress:
        progress.log(f"suite {suite.name} (profile {suite.profile}) on {env.device_name(device)}: "
                     f"{len(runs)} runs into {store.dir}")
        for line in other_seed_conflicts(suite, store):
            progress.log(f"warning: {line}")
        loaded = {}

        def teacher_and_test():
            if not loaded:
                teacher = ensure_teacher(suite, Path(runs_dir), device, progress.log)
                what = metric_word(get_dataset(suite.dataset).metric)
                progress.log(f"teacher {suite.teacher.model.name}: test {what} {teacher.acc:.4f} ({teacher.source})")
                loaded.update(teacher=teacher, test=get_dataset(suite.dataset).load("test"))
            return loaded["teacher"], loaded["test"]

        if not force and (store.dir / "teacher" / "summary.json").is_file() and all(
                _nothing_to_do(suite, store.run(m, s), m, s) for m, s in runs):
            progress.log("teacher: not needed, every run is finished (its record stays in "
                         f"{store.dir / 'teacher'}; --force redoes the runs)")
        else:
            teacher_and_test()  # first, so data or checkpoint problems show before any run
        pending = list(runs)
        wait = False
        while pending:
            busy = []
            for method, seed in pending:
                rd = store.run(method, seed)
                try:
                    with exclusive(rd.path / ".lock", wait=wait):
                        _run_one(suite, method, seed, rd, teacher_and_test, device, progress, callbacks, force,
                                 outcome)
                except Busy:
                    busy.append((method, seed))  # another process runs it now; look again at the end
            if busy:
                progress.log(f"  {len(busy)} run(s) held by another process; waiting for them")
            pending, wait = busy, True
    return outcome


def plan_run(suite: Suite, rd: RunDir, method: str, seed: int, force: bool = False) -> tuple[str, str]:
    """What a run needs, with the detail to say: ("n/a", reason) known not to apply to this config; ("diverged",
    reason) failed as a result (NaN/Inf, stuck at chance) with this config; ("elsewise",
    why) finished with another config; ("rebuild", what is missing) finished, a file to rebuild from its
    checkpoint; ("kept", what is missing) finished, nothing to rebuild it from;
    ("done", "best ...") finished and whole; ("run", "") to train (again)."""
    s = rd.summary() or {}
    if (not force and s.get("status") == "failed" and s.get("retry") is False
            and same_config(read_yaml_or_none(rd.config) or {}, suite.run_config(method, seed))):
        return ("n/a" if s.get("unavailable") else "diverged"), str(s.get("reason"))
    if s.get("status") == "done" and (not force or s.get("forced_by") == _invocation):
        if why := finished_elsewise(suite, rd, method, seed):
            return "elsewise", why
        if missing := rd.incomplete():  # not trained again for a lost file: the user may have deleted it on purpose
            return ("rebuild" if rd.checkpoint.is_file() else "kept"), missing
        return "done", f"best {s['best_acc']:.4f}"
    return "run", ""


def _nothing_to_do(suite: Suite, rd: RunDir, method: str, seed: int) -> bool:
    """The run would be skipped as it is (the teacher is not needed for it)."""
    return plan_run(suite, rd, method, seed)[0] in ("n/a", "diverged", "kept", "done")


def _run_one(suite, method, seed, rd, teacher_and_test, device, progress, callbacks, force, outcome):
    action, detail = plan_run(suite, rd, method, seed, force)
    if action == "n/a":
        outcome.not_applicable.append((method, seed, detail))
        progress.log(f"  {method} seed {seed}: cannot run here ({detail}), skipped")
    elif action == "diverged":  # a result (FAILED in the table), as a finished run is one: not trained again
        outcome.failed.append((method, seed, detail))
        progress.log(f"  {method} seed {seed}: failed before with this config ({detail}); kept as its result "
                     f"(--force trains it again)")
    elif action == "elsewise":  # finished meanwhile by another process
        entry = (method, seed, f"finished meanwhile by another process: {detail}")
        outcome.failed.append(entry), outcome.crashed.append(entry)
        progress.log(f"  {method} seed {seed}: {entry[2]}")
    elif action == "kept":
        outcome.skipped.append((method, seed))
        progress.log(f"  {method} seed {seed}: finished, but {detail} and there is no checkpoint to "
                     f"rebuild it from; kept as it is (--force redoes it)")
    elif action == "done":
        outcome.skipped.append((method, seed))
        progress.log(f"  {method} seed {seed}: already done ({detail}), skipped")
    if action in ("n/a", "diverged", "elsewise", "kept", "done"):
        progress.done += 1
        return
    if action == "rebuild":
        progress.log(f"  {method} seed {seed}: finished, but {detail}; rebuilding it from the run's checkpoint")
    if force and action == "run" and rd.checkpoint.exists():
        rd.checkpoint.unlink()
    summary = execute_run(suite, method, seed, rd, *teacher_and_test(), device, progress, callbacks)
    if summary is None:
        s = rd.summary() or {}
        entry = (method, seed, s.get("reason", ""))
        unavailable = s.get("unavailable")
        (outcome.not_applicable if unavailable and s.get("retry") is False else outcome.missing_data if unavailable
         else outcome.failed).append(entry)
        if s.get("crashed"):
            outcome.crashed.append(entry)
    else:
        if force:
            rd.write_summary({**summary, "forced_by": _invocation})
        outcome.done.append((method, seed))


# identifies this process's --force pass, so a run it already redid is not redone when it waits on others
_invocation = f"{os.getpid()}-{time.time_ns()}"
