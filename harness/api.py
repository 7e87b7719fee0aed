"""The Python entry point: `distill(teacher, student, method=..., test_set=...)`, used by the CLI too."""
from __future__ import annotations

import copy
from typing import Any, Optional

import torch
import torch.nn as nn
from pydantic import ValidationError
from torch.utils.data import Dataset

from . import env
from .config import one_line
from .data import ImageTensors, LoaderBatches, TensorBatches, get_dataset, materialize
from .errors import HarnessError
from .fold import fold_batchnorm
from .loop import LoopResult, run_loop
from .models import check_fits
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
        raise HarnessError("this method needs training data: pass train_set= (or a dataset name as `data`)")
    spec = get_dataset(name)
    data = spec.load("train")
    target = get_dataset(ctx.dataset) if ctx.dataset else spec
    data = data.adapt(ctx.input_shape).with_stats(target.mean, target.std)
    return TensorBatches(data, batch_size, ctx.device, ctx.seed, augment=target.augment)


def runtime_switches(runtime, plain: bool = False) -> dict:
    """build_context's speed switches from a suite's `runtime:`; plain=True: every one off (`speed`'s baseline)."""
    if plain:
        return dict(precision="fp32", channels_last="off", fast=False, compile=False, fused_upsample=False,
                    fold_teacher_bn=False, cuda_graph=False)
    r = runtime
    return dict(precision=r.precision, channels_last=r.channels_last, fast=r.frozen_teacher, compile=r.compile,
                fused_upsample=r.fused_upsample, fold_teacher_bn=r.fold_teacher_bn, cuda_graph=r.cuda_graph)


def build_context(teacher: nn.Module, student: nn.Module, input_shape, num_classes: int, seed: int,
                  iterations: int, device="auto", precision="auto", channels_last="auto",
                  dataset: str | None = None, train_set=None, fast: bool = True, compile: bool = False,
                  fused_upsample: bool = True, fold_teacher_bn: bool = True, cuda_graph: bool = False) -> Context:
    """The run's models on the device, with the speed switches applied.

    fast=False is the plain path `speed` compares against: the teacher keeps its parameter gradients
    and the imitation steps build its graph, as the official loop does.
    """
    dev = env.resolve_device(device) if isinstance(device, str) else torch.device(device)
    env.check_cuda_graph(cuda_graph, dev)
    torch.manual_seed(seed)
    teacher = teacher.to(dev).eval()
    for p in teacher.parameters():
        p.requires_grad_(not fast)
    # channels-last: measured 2x faster for GeneratorA convolutions on this project's AVX-512 CPU and
    # the usual choice for tensor cores; "off" where a CPU is slower with it (`dfad-bench speed` tells)
    cl = channels_last in ("on", "auto")
    student = student.to(dev)
    mf = torch.channels_last if cl else torch.contiguous_format
    student, teacher = student.to(memory_format=mf), teacher.to(memory_format=mf)
    if compile:  # in place, so state_dict keys (checkpoints, student.pt) stay those of the plain module
        student.compile()  # the teacher is compiled by make_method, once it is folded
    return Context(teacher=teacher, student=student, input_shape=tuple(input_shape), num_classes=num_classes,
                   device=dev, iterations=iterations, seed=seed,
                   precision=env.resolve_precision(precision, dev), channels_last=cl, fast=fast,
                   fused_upsample=fused_upsample, fold_teacher_bn=fast and fold_teacher_bn, compile=compile,
                   cuda_graph=cuda_graph,
                   dataset=dataset, train_set=train_set)


def distill(teacher: nn.Module, student: nn.Module, method: str = "dfad", test_set: Dataset | ImageTensors = None,
            input_shape=None, num_classes: int | None = None, seed: int = 0, train_set: Dataset | None = None,
            device: str = "auto", precision: str = "auto", channels_last: str = "auto",
            iterations: int = 2000, eval_every: int = 50, on_eval=None, **hyperparameters: Any) -> LoopResult:
    """Distil `teacher` into `student` with a registered method; returns best/final accuracy,
    the per-evaluation history and the trained student.

    Hyperparameters go by the suite files' names (`batch_size=`, `lr_S=`, `nz=`, ...); the teacher is
    frozen and the student is trained in place.
    """
    if test_set is None:
        raise HarnessError("distill needs test_set= (a Dataset of (image, label) pairs)")
    test = test_set if isinstance(test_set, ImageTensors) else materialize(test_set)
    if input_shape is None:
        input_shape = tuple(test.x.shape[1:])
    if len(input_shape) != 3:
        raise HarnessError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
    num_classes = check_fits(teacher, "teacher", input_shape, num_classes, "input_shape")  # None: its output says
    check_fits(student, "student", input_shape, num_classes, "input_shape")
    ctx = build_context(teacher, student, input_shape, num_classes, seed, iterations, device, precision,
                        channels_last, train_set=train_set)
    m = make_method(method, ctx, hyperparameters)
    m.setup()
    return run_loop(m, test, iterations, eval_every, on_eval=on_eval)
