"""Teachers: trained by the harness with a recorded recipe and cached by (dataset, model, recipe),
or loaded from a user's checkpoint (weights only: pickled code is never run)."""
from __future__ import annotations

import copy
import math
import pickle
import re
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import env
from .config import Suite, TeacherCfg, config_hash, file_digest
from .data import DatasetSpec, ImageTensors, TensorBatches, get_dataset
from .errors import HarnessError, first_line
from .locks import exclusive
from .loop import evaluate, seconds_per_call
from .method import schedule_factor
from .models import build_model, count_macs
from .store import atomic_torch_save, is_number, read_json, write_json


@dataclass
class Teacher:
    model: nn.Module
    acc: float
    source: str  # "trained" | "cached" | "checkpoint"
    path: Path
    info: dict


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def build_teacher_model(cfg: TeacherCfg, spec_shape, num_classes) -> nn.Module:
    return build_model(cfg.model.name, num_classes=num_classes, in_channels=spec_shape[0], **cfg.model.kwargs)


def load_weights(model: nn.Module, path: str | Path, what: str = "teacher checkpoint", load: bool = True) -> nn.Module:
    """Load a state_dict (or {'state_dict'|'model': ...}) with weights_only=True; one-line errors. load=False
    only checks that the file fits the model (which may be on the meta device)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise HarnessError(f"{what} {path} is a directory, not a checkpoint file")
    if not path.is_file():
        raise HarnessError(f"{what} {path} does not exist")
    if is_torchscript(path):
        raise HarnessError(f"{what} {path} is a TorchScript archive; save the weights instead: "
                           f"torch.save(model.state_dict(), path)")
    try:
        with warnings.catch_warnings():  # torch's own warnings about the file; the error below says what is wrong
            warnings.simplefilter("ignore")
            obj = _read(path, mmap=not load)
    except Exception as e:  # torch raises many kinds for a file that is not its own format
        # torch's weights-only reader prefixes every failure with "Weights only load failed": an object it will not
        # build (a function, a class) is a global it does not allow; anything else is a damaged or foreign file
        if isinstance(e, pickle.UnpicklingError) and re.search(
                r"unsupported global|allowed global|allowlisted|must be imported to load", str(e), re.IGNORECASE):
            raise HarnessError(f"{what} {path} carries pickled code or objects, refused "
                               f"(only plain weights are loaded, never executed)") from None
        with open(path, "rb") as f:
            head = f.read(2)
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(e))
        first = detail.group(1) if detail else (str(e).splitlines() or [type(e).__name__])[0].split(". ")[0]
        why = ("a truncated or corrupt zip archive" if head == b"PK" else "neither a zip archive nor a pickle"
               if head[:1] != b"\x80" else "a truncated pickle" if isinstance(e, EOFError)
               else f"{type(e).__name__}: {first[:100]}")
        raise HarnessError(f"{what} {path} is not a torch file ({why})") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise HarnessError(f"{what} {path} holds no state_dict of tensors")
    # wrappers' prefixes: DataParallel / DistributedDataParallel, torch.compile
    obj = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in obj.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(obj))
    extra = sorted(set(obj) - set(expected))
    wrong = [k for k in expected if k in obj and obj[k].shape != expected[k].shape]
    if missing or extra or wrong:
        detail = "; ".join(f"{len(keys)} {kind} keys (e.g. {keys[0]})"
                           for kind, keys in (("missing", missing), ("unexpected", extra)) if keys) or (
            f"{wrong[0]} has shape {tuple(obj[wrong[0]].shape)}, expected {tuple(expected[wrong[0]].shape)}")
        raise HarnessError(f"{what} {path} does not fit {type(model).__name__}: {detail}")
    if load:
        model.load_state_dict(obj)
    return model


def _read(path: Path, mmap: bool):
    """torch.load, weights only; mmap=True (a check that loads nothing) maps a zip-format file instead of reading
    it whole, and reads a legacy-format one, which cannot be mapped, as usual."""
    if mmap and zipfile.is_zipfile(path):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return torch.load(path, map_location="cpu", weights_only=True)


def is_torchscript(path: Path) -> bool:
    """torch.jit.save writes a zip archive with the module's code and constants beside its data."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith(("/constants.pkl", "/code/")) or "/code/__torch__" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def teacher_key(suite: Suite) -> dict:
    t = suite.teacher
    recipe = t.recipe.model_dump(mode="json")
    if recipe.get("time_budget_s") is None:  # added later: unset, it leaves the keys of existing teachers alone
        recipe.pop("time_budget_s", None)
    key = {"dataset": suite.dataset, "model": t.model.model_dump(mode="json"), "recipe": recipe}
    if recipe.get("train_subset"):  # was the first N images: a teacher cached then is another teacher
        key["train_subset_draw"] = "random, recipe seed"
    if own := suite.own_dataset():  # a suite's own data: its definition and files are part of what made the teacher
        key["dataset_def"] = own
    return key


def teacher_cache(suite: Suite, runs_dir: Path) -> Path:
    """The folder a trained teacher of this suite is cached in (shared by suites with the same teacher)."""
    key = config_hash(teacher_key(suite), ignore=())
    return Path(runs_dir) / "teachers" / f"{suite.dataset}-{suite.teacher.model.name}-{key}"


def is_cached(suite: Suite, runs_dir: Path) -> bool:
    """A trained teacher of this suite is in runs_dir's cache (weights and a record with its accuracy)."""
    cache = teacher_cache(suite, runs_dir)
    return (cache / "teacher.pt").is_file() and is_number((read_json(cache / "summary.json") or {}).get("test_acc"))


def fit_epochs(model, opt, batches, step, steps_per_epoch: int, evaluate_once, budget_s: float, max_epochs: int,
               log=print, probe_steps: int = 20) -> int:
    """How many epochs fit in budget_s: times probe_steps training steps (after warm-up, which also lets
    cudnn pick its kernels) and one evaluation on copies of the model and optimiser, so the real run
    starts untouched."""
    t0 = time.perf_counter()
    probe = copy.deepcopy(model)
    probe_opt = type(opt)(probe.parameters(), **opt.defaults)
    data, n = batches.data, batches.batch_size  # one fixed batch: the real run's batch order stays as it was
    x, y = data.normalize(data.x[:n]), data.y[:n]
    step_s = seconds_per_call(lambda: step(probe, probe_opt, x, y), probe_steps, 3, x.device)
    eval_s = seconds_per_call(lambda: evaluate_once(probe), 1, 0, x.device)
    del probe, probe_opt
    epoch_s = 1.05 * (steps_per_epoch * step_s + eval_s)  # 5% margin for drift
    left = budget_s - (time.perf_counter() - t0)
    epochs = max(1, min(max_epochs, int(left // epoch_s)))
    log(f"teacher: time budget {budget_s:.0f}s: {step_s * 1e3:.1f} ms per step, {eval_s:.1f}s per evaluation, "
        f"~{epoch_s:.1f}s per epoch -> {epochs} epochs (recipe: at most {max_epochs})")
    return epochs


def draw_subset(data: ImageTensors, n: int, seed: int) -> ImageTensors:
    """n images drawn with the seed (in their stored order), not the first n: sets made from folders (CIFAR's
    JPEGs here, Caltech101, a suite's own data) are sorted by class."""
    keep = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return ImageTensors(data.x[keep], data.y[keep], data.mean, data.std, data.metric)


def _read_resume(path: Path | None, model: nn.Module, n_train: int, log) -> dict | None:
    """The state an interrupted training left after its last finished epoch, or None (read on the CPU; the
    loads below move it to the model's device). A file that cannot be resumed is set aside as <name>.bad."""
    if path is None or not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        need = {"model", "opt", "sched", "batches", "rng", "epoch", "epochs", "acc", "elapsed_s", "n_train"}
        if not isinstance(state, dict) or not need <= set(state):
            raise ValueError("not a teacher training checkpoint")
        ours = model.state_dict()
        if {k: tuple(v.shape) for k, v in state["model"].items()} != {k: tuple(v.shape) for k, v in ours.items()}:
            raise ValueError("its weights do not fit this teacher")
        if not 0 < state["epoch"] < state["epochs"]:
            raise ValueError(f"epoch {state['epoch']} of {state['epochs']}")
        if state["n_train"] != n_train:  # the dataset's files changed under the same name
            raise ValueError(f"made on {state['n_train']} training images, not {n_train}")
        if sum(len(g["params"]) for g in state["opt"]["param_groups"]) != len(list(model.parameters())):
            raise ValueError("its optimiser state does not fit this teacher")
        return state
    except Exception as e:  # a truncated or foreign file: start afresh rather than fail the suite
        log(f"warning: cannot resume the teacher from {path} ({type(e).__name__}: {str(e)[:80]}); set aside as "
            f"{_set_aside(path).name}, training it from the start")
        return None


def _set_aside(path: Path) -> Path:
    bad = path.with_name(path.name + ".bad")
    try:
        path.replace(bad)
    except OSError:
        pass
    return bad


def train_teacher(model: nn.Module, spec: DatasetSpec, recipe, device, log=print,
                  channels_last: bool = False, checkpoint: Path | None = None) -> tuple[nn.Module, float, float, int]:
    """Supervised training with the recipe; returns (model, test accuracy, seconds, epochs run).
    channels_last changes the memory layout only (tensor-core kernels on CUDA), not the function.
    With a checkpoint path, the training state is saved there after every epoch and an interrupted training
    resumes from its last finished epoch (bit for bit on the same machine); the file is removed at the end."""
    torch.manual_seed(recipe.seed)
    precision = env.resolve_precision(recipe.precision, device)
    train, test = spec.load("train"), spec.load("test")
    if recipe.train_subset:
        train = draw_subset(train, recipe.train_subset, recipe.seed)
    augment = spec.augment if recipe.augment in (None, True) else "none"
    if recipe.augment is True and augment == "none":
        augment = "crop_flip"
    batches = TensorBatches(train, recipe.batch_size, device, seed=recipe.seed, augment=augment)
    steps_per_epoch = math.ceil(len(train) / recipe.batch_size)
    mf = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=mf).train()
    params = model.parameters()
    if recipe.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                              nesterov=recipe.momentum > 0)
    else:
        opt = torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    autocast = (lambda: torch.autocast(device.type, dtype=precision)) if precision else None
    test = test.to(device)

    def step(net, optimizer, x, y):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast() if autocast else torch.autocast(device.type, enabled=False):
            loss = F.cross_entropy(net(x).float(), y, label_smoothing=recipe.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    def evaluate_once(net):
        return evaluate(net, test, device, autocast, channels_last=channels_last)

    t0 = time.perf_counter()
    epochs, start, before_s = recipe.epochs, 0, 0.0
    resume = _read_resume(checkpoint, model, len(train), log)
    if resume:  # the epochs planned then (a time budget's choice included), not a new probe's
        epochs, start, before_s = resume["epochs"], resume["epoch"], resume["elapsed_s"]
    elif recipe.time_budget_s:
        epochs = fit_epochs(model, opt, batches, step, steps_per_epoch, evaluate_once, recipe.time_budget_s,
                            recipe.epochs, log)
    total = steps_per_epoch * epochs
    if recipe.schedule == "onecycle":
        # OneCycleLR divides by its warm-up's length less one step: 0.25 of 4 steps would be 0
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=total,
                                                    pct_start=0.25 if total * 0.25 != 1 else 0.3)
    else:  # milestones at their place in the planned epochs, also when a time budget runs fewer
        fracs = [m / recipe.epochs for m in recipe.milestones]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule_factor(recipe.schedule, total, fracs, recipe.gamma))
    if resume:
        try:
            model.load_state_dict(resume["model"])
            opt.load_state_dict(resume["opt"])
            sched.load_state_dict(resume["sched"])
            batches.load_state_dict(resume["batches"])
            torch.set_rng_state(resume["rng"].cpu())
            if device.type == "cuda" and resume.get("cuda_rng") is not None:  # dropout's draws on the GPU
                torch.cuda.set_rng_state(resume["cuda_rng"].cpu(), device)
        except Exception as e:  # the model is half loaded now: stop; the next run starts afresh
            raise HarnessError(f"cannot resume the teacher from {checkpoint} ({type(e).__name__}: "
                               f"{first_line(e)[:80]}); set aside as {_set_aside(checkpoint).name}: run "
                               f"again to train it from the start") from None
        acc = resume["acc"]
        log(f"teacher: resuming after epoch {start}/{epochs} ({checkpoint})")
    epoch_t0 = time.perf_counter()
    for epoch in range(start, epochs):
        loss_sum = torch.zeros((), device=device)
        for _ in range(steps_per_epoch):
            x, y = next(batches)
            loss = step(model, opt, x, y)
            sched.step()
            loss_sum += loss.detach()
        acc = evaluate_once(model)
        now = time.perf_counter()
        if (recipe.time_budget_s and epoch + 1 < epochs
                and before_s + now - t0 + (now - epoch_t0) > recipe.time_budget_s):  # slower than the probe found
            log(f"teacher: time budget {recipe.time_budget_s:g}s: stopping after epoch {epoch + 1} of {epochs} "
                f"(the next one would end past it)")
            epochs = epoch + 1
        epoch_t0 = now  # the next epoch's time counts this one's checkpoint and report
        if checkpoint is not None and epoch + 1 < epochs:  # saved before the epoch is reported: what is seen is kept
            atomic_torch_save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                               "batches": batches.state_dict(), "rng": torch.get_rng_state(), "epoch": epoch + 1,
                               "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                               "epochs": epochs, "acc": acc, "elapsed_s": before_s + time.perf_counter() - t0,
                               "n_train": len(train)},
                              checkpoint)
        log(f"teacher epoch {epoch + 1}/{epochs}: loss {loss_sum.item() / steps_per_epoch:.4f}, "
            f"test {getattr(spec, 'metric', 'acc')} {acc:.4f}, {before_s + time.perf_counter() - t0:.0f}s")
        if epoch + 1 == epochs:  # the planned last one, or the last the time budget left room for
            break
    if precision is not None:  # the recorded accuracy in fp32, as a checkpoint teacher's and the students' are
        acc = evaluate(model, test, device, channels_last=channels_last)
    return model, acc, before_s + time.perf_counter() - t0, epochs


def ensure_teacher(suite: Suite, runs_dir: Path, device: torch.device, log=print) -> Teacher:
    spec = get_dataset(suite.dataset)
    # the initial weights come from the recipe's seed too: PyTorch seeds every new process at random
    torch.manual_seed(suite.teacher.recipe.seed)
    model = build_teacher_model(suite.teacher, spec.input_shape, spec.num_classes)
    suite_record = Path(runs_dir) / suite.name / "teacher" / "summary.json"
    if suite.teacher.checkpoint:
        # recorded for reports, which may read the runs where the dataset (so its classes and input) is gone
        macs = count_macs(model, spec.input_shape)
        path = Path(suite.teacher.checkpoint).expanduser()
        load_weights(model, path)
        model = freeze(model.to(device))
        acc = evaluate(model, spec.load("test"), device)
        info = {"source": "checkpoint", "path": str(path.resolve()), "sha256": file_digest(str(path)), "test_acc": acc,
                "model": suite.teacher.model.model_dump(mode="json"), "dataset": suite.dataset, "macs": macs}
        write_json(suite_record, info)
        return Teacher(model, acc, "checkpoint", path, info)

    key, cache = teacher_key(suite), teacher_cache(suite, runs_dir)
    with exclusive(cache.parent / f".{cache.name}.lock", wait=True):  # one process trains it, others reuse it
        return _cached_or_trained(suite, model, spec, key, cache, suite_record, device, log)


def _cached_or_trained(suite, model, spec, key, cache, suite_record, device, log) -> Teacher:
    weights, meta_path = cache / "teacher.pt", cache / "summary.json"
    meta = read_json(meta_path)
    if meta and not is_number(meta.get("test_acc")):
        log(f"warning: {meta_path} has no test_acc; training the teacher again")
        meta = None
    # a cached teacher's count comes with it (the cache is keyed by model and dataset); older caches lack it
    macs = meta["macs"] if meta and is_number(meta.get("macs")) else count_macs(model, spec.input_shape)
    if meta and weights.is_file():
        try:
            load_weights(model, weights, "cached teacher")
            log(f"teacher: reusing {cache} (test acc {meta['test_acc']:.4f})")
            model = freeze(model.to(device))
            write_json(suite_record, {**meta, "source": "cached", "path": str(weights.resolve()), "macs": macs})
            return Teacher(model, meta["test_acc"], "cached", weights, meta)
        except HarnessError as e:
            log(f"warning: {e}; training the teacher again")
    r = suite.teacher.recipe
    log(f"teacher: training {suite.teacher.model.name} on {suite.dataset} ({r.epochs} epochs"
        + (f" at most, as many as fit in {r.time_budget_s:g}s)" if r.time_budget_s else ")"))
    # channels-last for teacher training on CUDA (tensor-core layouts) unless the runtime says off; on CPUs
    # only when asked (`on`): measured for the generator there, not for every teacher
    cl = suite.runtime.channels_last == "on" or (suite.runtime.channels_last == "auto" and device.type == "cuda")
    if cl and (hazard := env.channels_last_hazard(device, model)):
        log(f"warning: runtime.channels_last: {hazard}; training the teacher channels-first")
        cl = False
    resume = cache / "training.pt"  # the state after the last finished epoch, while the teacher trains
    model, acc, seconds, epochs = train_teacher(model, spec, suite.teacher.recipe, device, log, channels_last=cl,
                                                checkpoint=resume)
    atomic_torch_save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, weights)
    resume.unlink(missing_ok=True)
    meta = {**key, "test_acc": acc, "wall_time_s": round(seconds, 1), "epochs_run": epochs,
            "channels_last": cl, "precision": str(env.resolve_precision(suite.teacher.recipe.precision, device)
                                                  or "fp32").replace("torch.", ""),
            "device": env.device_name(device),
            "git_commit": env.git_commit(), "versions": env.versions(), "source": "trained", "macs": macs}
    write_json(meta_path, meta)
    write_json(suite_record, {**meta, "path": str(weights.resolve())})
    return Teacher(freeze(model), acc, "trained", weights, meta)
