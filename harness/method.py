"""What a method is to the shared loop: its hyperparameters, its setup, and one iteration.

A method file subclasses `Method` (or `GeneratorMethod`, for methods that distil on a generator's images),
declares `Params` and implements `setup` and `step`; the loop owns the budget, evaluation, checkpoints,
timing and progress.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Literal, Optional

import torch
import torch.nn as nn
from pydantic import ConfigDict, Field

from .config import NoBoolNumbers
from .data import ImageTensors
from .errors import HarnessError, first_line
from .models import build_model


class Params(NoBoolNumbers):
    """Hyperparameters every method has; a method's own Params extend it."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)
    batch_size: int = Field(256, gt=0)


@dataclass
class Context:
    teacher: nn.Module
    student: nn.Module
    input_shape: tuple[int, int, int]
    num_classes: int
    device: torch.device
    iterations: int
    seed: int = 0
    precision: torch.dtype | None = None  # bf16 autocast when set
    # the test evaluations: "fp32" (what the weights score wherever they are loaded) or "run" (in `precision`)
    eval_precision: str = "fp32"
    channels_last: bool = False
    fast: bool = True  # False: the official loop's wasted work (teacher graphs and weight grads), for `speed`
    fused_upsample: bool = False  # generators fuse upsample + conv (harness/upconv.py)
    fold_teacher_bn: bool = False  # make_method folds the frozen teacher's conv -> BN pairs (harness/fold.py)
    teacher_bn_folded: int = 0  # how many pairs it folded
    compile: bool = False  # torch.compile the student (build_context) and the teacher (make_method, after folding)
    cuda_graph: bool = False  # the loop replays graphable methods' steps as one CUDA graph (harness/graphs.py)
    dataset: Optional[str] = None  # the suite's dataset name, for methods that read data
    train_set: Any = None  # a user's Dataset or ImageTensors, for data-driven methods
    extra: dict = field(default_factory=dict)

    def autocast(self):
        if self.precision is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision)

    @property
    def eval_autocast(self):
        """The evaluations' autocast (a context factory), or None: they run in fp32."""
        return self.autocast if self.eval_precision == "run" and self.precision is not None else None

    def no_grad_if_fast(self):
        """No graph where none is needed; the plain path builds it anyway, as the official loop does."""
        return torch.no_grad() if self.fast else contextlib.nullcontext()

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x


class Method:
    name: str = ""
    data_free: bool = True
    needs_teacher_bn: bool = False  # True: the method reads the teacher's BatchNorm layers (never folded)
    # True: `step` may be captured once and replayed as a CUDA graph (runtime.cuda_graph): static shapes, noise
    # drawn on the device, no host sync, no use of `it`, and no host-side state changed outside `count`
    graphable: bool = False
    # bump when what the method computes changes outside its Params: runs of another version are then another
    # config (never reused or resumed as this one); recorded in run configs from 2 on
    version: int = 1
    Params = Params

    def __init__(self, ctx: Context, params: Params):
        self.ctx, self.p = ctx, params
        self.modules: dict[str, nn.Module] = {"student": ctx.student}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        self.samplers: dict[str, Any] = {}

    @classmethod
    def training_data(cls, params: Params, dataset: str | None) -> str | None:
        """The dataset whose train split a run reads (None: data-free), for checks before any run."""
        return None

    def setup(self) -> None:
        raise NotImplementedError

    def step(self, it: int) -> dict[str, torch.Tensor]:
        """One iteration; returns detached loss tensors (the loop syncs them only at evaluations)."""
        raise NotImplementedError

    def count(self) -> None:
        """Host-side bookkeeping of one iteration (e.g. images through the teacher); the loop calls it after
        every step, run or replayed. Kept out of `step`, which a CUDA graph replays without running Python."""

    def sample(self, n: int) -> Optional[torch.Tensor]:
        """Images the method trains on (for sample grids); None if it has none to show."""
        return None

    def state_dict(self) -> dict:
        return {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "samplers": {k: s.state_dict() for k, s in self.samplers.items()},
            # images through the teacher so far (a method that counts them in `count`): a resumed run goes on counting
            **({"teacher_images": self.teacher_images} if getattr(self, "teacher_images", None) is not None else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        for group in ("modules", "optimizers", "schedulers", "samplers"):
            own = getattr(self, group)
            if set(state[group]) != set(own):
                raise ValueError(f"checkpoint {group} {sorted(state[group])} != {sorted(own)}")
            for k, v in state[group].items():
                if group == "optimizers":
                    load_optimizer_state(own[k], v)
                else:
                    own[k].load_state_dict(v)
        if getattr(self, "teacher_images", None) is not None:
            self.teacher_images = state.get("teacher_images", 0)


def schedule_factor(kind: str, iterations: int, milestones=(), gamma: float = 0.1) -> Callable[[int], float]:
    """LR factor at iteration i. Milestones are fractions of the budget (paper: epochs 100, 200 of 500 -> 0.2, 0.4)."""
    if kind == "none":
        return lambda i: 1.0
    if kind == "multistep":
        steps = sorted(round(m * iterations) for m in milestones)
        return lambda i: gamma ** sum(i >= s for s in steps)
    if kind == "cosine":
        return lambda i: 0.5 * (1 + math.cos(math.pi * min(i, iterations) / iterations))
    raise ValueError(f"unknown schedule {kind!r}")


# how an optimiser computes, not what: a run resumed on another device keeps its own (a CPU checkpoint's
# foreach Adam resumed on a GPU stays fused there)
IMPLEMENTATION_FLAGS = ("foreach", "fused", "capturable", "differentiable")


def steps_on_device(opt: torch.optim.Optimizer) -> None:
    """Step counters on their parameters' device (float32) in groups that are fused or capturable, as
    PyTorch's load_state_dict puts them for such groups; elsewhere they stay where they are."""
    for g in opt.param_groups:
        if g.get("fused") or g.get("capturable"):
            for p in g["params"]:
                st = opt.state.get(p)
                if st and torch.is_tensor(st.get("step")) and st["step"].device != p.device:
                    st["step"] = st["step"].to(p.device, torch.float32)


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict) -> None:
    """A checkpoint's hyperparameters and state, with this run's implementation (fused Adam on a GPU), not the
    checkpoint's, and the step counters where that implementation needs them."""
    flags = [{f: g[f] for f in IMPLEMENTATION_FLAGS if f in g} for g in opt.param_groups]
    opt.load_state_dict(state)
    for g, kept in zip(opt.param_groups, flags):
        g.update(kept)
    steps_on_device(opt)


def make_scheduler(opt, kind: str, iterations: int, milestones=(), gamma=0.1):
    return torch.optim.lr_scheduler.LambdaLR(opt, schedule_factor(kind, iterations, milestones, gamma))


def sgd(params, lr, momentum=0.9, weight_decay=0.0, device=None):
    kw = {"foreach": True}
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **kw)


def adam(params, lr, betas=(0.9, 0.999), weight_decay=0.0, device=None):
    fused = device is not None and torch.device(device).type == "cuda"
    return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay,
                            **({"fused": True} if fused else {"foreach": True}))


ScheduleKind = Literal["none", "multistep", "cosine"]
# a method's multistep milestones: fractions of budget.iterations (paper: epochs 100, 200 of 500 -> 0.2, 0.4)
Milestones = list[Annotated[float, Field(gt=0, lt=1)]]  # 1.0 would be the end of the run: never reached


class GeneratorMethod(Method):
    """What every generator-based method shares: its generator (Params: generator, nz, ngf), registered for
    checkpoints and laid out like the run, fresh noise on the device, and samples for the report."""

    def build_generator(self):
        """The method's generator on the device, registered for checkpoints."""
        c, p = self.ctx, self.p
        self.generator = build_model(p.generator, nz=p.nz, ngf=p.ngf, input_shape=c.input_shape).to(c.device)
        if c.channels_last:
            self.generator = self.generator.to(memory_format=torch.channels_last)
        if hasattr(self.generator, "fused_upsample"):
            self.generator.fused_upsample = c.fused_upsample
        self.modules["generator"] = self.generator
        with torch.no_grad():  # zeros in eval mode: no random numbers drawn, no BatchNorm statistics changed
            try:
                out = self.generator.eval()(torch.zeros(2, p.nz, device=c.device))
            except Exception as e:
                out = e
            finally:
                self.generator.train()
        if not isinstance(out, torch.Tensor) or tuple(out.shape[1:]) != tuple(c.input_shape):
            got = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else f"{type(out).__name__}: {first_line(out)}"
            raise HarnessError(f"{self.name}: generator {p.generator!r} does not make images of the input shape "
                               f"{tuple(c.input_shape)} from noise of size nz={p.nz} (got {got})")

    def noise(self) -> torch.Tensor:
        return torch.randn(self.p.batch_size, self.p.nz, device=self.ctx.device)

    @torch.no_grad()
    def sample(self, n):
        self.generator.eval()
        x = self.generator(torch.randn(n, self.p.nz, device=self.ctx.device))
        self.generator.train()
        return x
