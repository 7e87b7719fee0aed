"""The Python entry point: `distill(teacher, student, method=..., test_set=...)`, used by the CLI too."""
from __future__ import annotations

import copy
import time
import warnings
from typing import Any, Literal, Optional

import numpy as np
import torch
import torch.nn as nn
from pydantic import ConfigDict, Field, ValidationError
from torch.utils.data import DataLoader, Dataset

from . import env
from .config import NoBoolNumbers, one_line
from .data import ImageTensors, LoaderBatches, TensorBatches, collate_pairs, get_dataset, materialize
from .errors import HarnessError, first_line
from .fold import fold_batchnorm
from .loop import LoopResult, fit_iterations, run_loop
from .models import check_fits, check_same_output
from .method import Context, Method
from .registry import METHODS

BUDGET_KEYS = ("iterations", "eval_every")


def make_method(name: str, ctx: Context, hyperparameters: dict) -> Method:
    import methods  # noqa: F401  (register every method)

    cls = METHODS.get(name)
    try:
        params = cls.Params(**hyperparameters)
    except ValidationError as e:
        raise HarnessError(f"{name}: {one_line(e)}") from None
    if ctx.fold_teacher_bn and not cls.needs_teacher_bn and not ctx.teacher_bn_folded:
        teacher, ctx.teacher_bn_folded = fold_batchnorm(ctx.teacher)
        mf = torch.channels_last if ctx.channels_last else torch.contiguous_format
        ctx.teacher = teacher.to(memory_format=mf)
    if ctx.compile and getattr(ctx.teacher, "_compiled_call_impl", None) is None:
        ctx.teacher.compile()  # after folding: the teacher the method runs is the one compiled
    return cls(ctx, params)


def training_batches(ctx: Context, source: Optional[str], batch_size: int):
    """Batches of real images for data-driven methods: the user's train_set, the suite's dataset,
    or another dataset (`source`) reshaped to the teacher's input and normalised like its data."""
    if source is None and ctx.train_set is not None:
        if isinstance(ctx.train_set, ImageTensors):
            return TensorBatches(ctx.train_set, batch_size, ctx.device, ctx.seed)
        return LoaderBatches(ctx.train_set, batch_size, ctx.device, ctx.seed)
    name = source or ctx.dataset
    if name is None:
        raise HarnessError("this method needs training data: pass train_set= (a Dataset of (image, label) pairs "
                           "prepared as your teacher takes them)")
    if ctx.dataset is None:  # distill(): images are normalised as the suite's data are, and there is no suite
        raise HarnessError(f"data={name!r}: distill() does not know how your teacher's inputs are normalised; "
                           f"pass train_set= (a Dataset of {name} images prepared as your teacher takes them)")
    spec = get_dataset(name)
    data = spec.load("train")
    target = get_dataset(ctx.dataset) if ctx.dataset else spec
    data = data.adapt(ctx.input_shape).with_stats(target.mean, target.std)
    return TensorBatches(data, batch_size, ctx.device, ctx.seed, augment=target.augment)


def runtime_switches(runtime, plain: bool = False) -> dict:
    """build_context's speed switches from a suite's `runtime:`; plain=True: every one off (`speed`'s baseline)."""
    if plain:
        return dict(precision="fp32", channels_last="off", fast=False, compile=False, fused_upsample=False,
                    fold_teacher_bn=False, cuda_graph=False, eval_precision="fp32")
    r = runtime
    return dict(precision=r.precision, channels_last=r.channels_last, fast=r.frozen_teacher, compile=r.compile,
                fused_upsample=r.fused_upsample, fold_teacher_bn=r.fold_teacher_bn, cuda_graph=r.cuda_graph,
                eval_precision=r.eval_precision)


def method_seed(seed: int) -> int:
    """The seed of a run's own randomness (its generator's weights and noise; data order and augmentation have
    generators of their own, seeded with `seed`): a stream apart from `seed`'s, whose first draws initialised the
    student when it was built just after `manual_seed(seed)` (the runner does so, and so may a user of `distill`):
    reseeding with `seed` would replay those draws, and the generator's first layer would start as a scaled copy
    of the student's first weights."""
    return int(np.random.SeedSequence([seed, 1]).generate_state(1, dtype=np.uint64)[0] >> 1)


def build_context(teacher: nn.Module, student: nn.Module, input_shape, num_classes: int, seed: int,
                  iterations: int, device="auto", precision="auto", channels_last="auto",
                  dataset: str | None = None, train_set=None, fast: bool = True, compile: bool = False,
                  fused_upsample: bool = True, fold_teacher_bn: bool = True, cuda_graph: bool = False,
                  eval_precision: str = "fp32") -> Context:
    """The run's models on the device, with the speed switches applied.

    fast=False is the plain path `speed` compares against: the teacher keeps its parameter gradients
    and the imitation steps build its graph, as the official loop does.
    """
    dev = env.resolve_device(device) if isinstance(device, str) else torch.device(device)
    env.check_cuda_graph(cuda_graph, dev)
    torch.manual_seed(method_seed(seed))
    teacher = teacher.to(dev).eval()
    for p in teacher.parameters():
        p.requires_grad_(not fast)
    # channels-last: measured 2x faster for GeneratorA convolutions on this project's AVX-512 CPU and
    # the usual choice for tensor cores; "off" where a CPU is slower with it (`dfad-bench speed` tells)
    cl = channels_last in ("on", "auto")
    student = student.to(dev)
    if cl and (hazard := env.channels_last_hazard(dev, student, *([] if fast else [teacher]))):
        warnings.warn(f"runtime.channels_last: {hazard}; running channels-first", stacklevel=2)
        cl = False
    mf = torch.channels_last if cl else torch.contiguous_format
    student, teacher = student.to(memory_format=mf), teacher.to(memory_format=mf)
    if compile:  # in place, so state_dict keys (checkpoints, student.pt) stay those of the plain module
        student.compile()  # the teacher is compiled by make_method, once it is folded
    return Context(teacher=teacher, student=student, input_shape=tuple(input_shape), num_classes=num_classes,
                   device=dev, iterations=iterations, seed=seed,
                   precision=env.resolve_precision(precision, dev), channels_last=cl, fast=fast,
                   fused_upsample=fused_upsample, fold_teacher_bn=fast and fold_teacher_bn, compile=compile,
                   cuda_graph=cuda_graph, eval_precision=eval_precision,
                   dataset=dataset, train_set=train_set)


class DistillArgs(NoBoolNumbers):
    """distill()'s own arguments, checked as a suite file's budget and runtime are."""

    model_config = ConfigDict(extra="forbid")
    seed: int
    iterations: int = Field(gt=0)
    eval_every: int = Field(gt=0)
    precision: Literal["auto", "fp32", "bf16"]
    channels_last: Literal["auto", "on", "off"]
    eval_precision: Literal["fp32", "run"]
    time_budget_s: Optional[float] = Field(gt=0)


def distill(teacher: nn.Module, student: nn.Module, method: str = "dfad", test_set: Dataset | ImageTensors = None,
            input_shape=None, num_classes: int | None = None, seed: int = 0, train_set: Dataset | None = None,
            device: str = "auto", precision: str = "auto", channels_last: str = "auto",
            iterations: int = 2000, eval_every: int = 50, on_eval=None, eval_precision: str = "fp32",
            time_budget_s: float | None = None, **hyperparameters: Any) -> LoopResult:
    """Distil `teacher` into `student` with a registered method; returns best/final accuracy,
    the per-evaluation history and the trained student.

    Hyperparameters go by the suite files' names (`batch_size=`, `lr_S=`, `nz=`, ...). Both models move to
    the device. The teacher is frozen for the run and given back as it came (mode, requires_grad, layout);
    the student is trained in place and returned in eval mode. The caller's random number generators are
    left as they were. The test accuracy is measured in fp32 whatever `precision` trains in;
    eval_precision="run" measures it in the run's precision (faster on a CPU). time_budget_s: as many
    iterations (at most `iterations`) as a timing of the method on this machine says fit in that many seconds
    (result.iterations, and result.time_budget for what the choice was made from). The probe draws its own
    batches from train_set: a DataLoader whose sampler has a generator of its own then starts the run elsewhere in
    its stream than it would without a budget.
    """
    try:
        DistillArgs(seed=seed, iterations=iterations, eval_every=eval_every, precision=precision,
                    channels_last=channels_last, eval_precision=eval_precision, time_budget_s=time_budget_s)
    except ValidationError as e:
        raise HarnessError(f"distill: {one_line(e)}") from None
    dev = env.resolve_device(device) if isinstance(device, str) else torch.device(device)
    # every CUDA generator too: build_context's manual_seed seeds them all (reading data draws numbers as well)
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
        test, input_shape, num_classes = check_inputs(teacher, student, test_set, train_set, input_shape, num_classes)
        kept = [ModuleState(teacher), ModuleState(student)]
        def method_on(model, n):
            ctx = build_context(teacher, model, input_shape, num_classes, seed, n, dev, precision, channels_last,
                                train_set=train_set, eval_precision=eval_precision)
            m = make_method(method, ctx, hyperparameters)
            m.setup()
            return m

        try:
            budget, budget_started = None, time.perf_counter()
            if time_budget_s:
                iterations, budget = fit_iterations(lambda: method_on(copy.deepcopy(student), iterations), test,
                                                    iterations, eval_every, time_budget_s, log=lambda line: None)
            result = run_loop(method_on(student, iterations), test, iterations, eval_every, on_eval=on_eval,
                              time_budget=budget, budget_started=budget_started)
        finally:
            for k in kept:
                k.restore()
    result.student.eval()
    return result


def check_inputs(teacher, student, test_set, train_set, input_shape, num_classes):
    """distill()'s data and models against each other, before anything is built: one-line errors for what would
    otherwise fail late or broadcast silently. Returns the test set as tensors, the input shape and class count."""
    if test_set is None:
        raise HarnessError("distill needs test_set= (a Dataset of (image, label) pairs)")
    for role, model in (("teacher", teacher), ("student", student)):
        if not isinstance(model, nn.Module):
            raise HarnessError(f"distill: the {role} must be a torch.nn.Module, got {type(model).__name__}")
    if teacher is student:
        raise HarnessError("distill: teacher and student are the same module; pass a separate student")
    test = test_set if isinstance(test_set, ImageTensors) else materialize(test_set)
    data_shape = tuple(test.x.shape[1:])
    input_shape = data_shape if input_shape is None else tuple(input_shape)
    if len(input_shape) != 3:
        raise HarnessError(f"input_shape must be (C, H, W), got {input_shape}")
    if input_shape != data_shape:
        raise HarnessError(f"input_shape {input_shape} but test_set's images are {data_shape}")
    if train_set is not None:
        check_train_set(train_set, input_shape)
    t_out = check_fits(teacher, "teacher", input_shape, num_classes, "input_shape")  # no num_classes: it says
    num_classes = t_out[0]
    check_same_output(t_out, check_fits(student, "student", input_shape, num_classes, "input_shape"), "input_shape")
    if test.metric == "acc" and len(test) and not 0 <= int(test.y.min()) <= int(test.y.max()) < num_classes:
        raise HarnessError(f"test_set's labels run {int(test.y.min())}..{int(test.y.max())}, "
                           f"but the teacher has {num_classes} classes")
    return test, input_shape, num_classes


def check_train_set(train_set, input_shape: tuple) -> None:
    """The first (image, label) pair of a user's train_set, read as training will read it: one-line errors
    for what it cannot be, and for images of another shape than the test set's."""
    if isinstance(train_set, ImageTensors):
        shape = tuple(train_set.x.shape[1:])
    else:
        try:
            loader = train_set if isinstance(train_set, DataLoader) else DataLoader(
                train_set, batch_size=1, collate_fn=collate_pairs)
            x, _ = next(iter(loader))
            shape = tuple(torch.as_tensor(x).shape[1:])
        except StopIteration:
            raise HarnessError("train_set is empty") from None
        except (TypeError, ValueError, RuntimeError, IndexError, KeyError) as e:
            raise HarnessError(f"train_set: expected (image, label) pairs of tensors or PIL images "
                               f"({type(e).__name__}: {first_line(e)[:160]})") from None
    if shape != tuple(input_shape):
        raise HarnessError(f"train_set's images are {shape} but the test set's (input_shape) are {tuple(input_shape)}")


class ModuleState:
    """What a run changes on a caller's module besides its weights: train/eval mode, requires_grad flags and
    the weights' memory format (channels-last); `restore` puts them back."""

    def __init__(self, module: nn.Module):
        self.module, self.training = module, module.training
        self.requires_grad = [p.requires_grad for p in module.parameters()]
        cl = torch.channels_last  # weights whose two layouts differ (not 1x1 ones) say which the module had
        convs = [p for p in module.parameters()
                 if p.dim() == 4 and not (p.is_contiguous() and p.is_contiguous(memory_format=cl))]
        self.channels_last = bool(convs) and all(p.is_contiguous(memory_format=cl) for p in convs)

    def restore(self) -> None:
        m = self.module
        m.train(self.training)
        for p, flag in zip(m.parameters(), self.requires_grad):
            p.requires_grad_(flag)
        m.to(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
