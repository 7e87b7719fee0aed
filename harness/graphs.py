"""`runtime.cuda_graph`: run a method's iteration as one replayed CUDA graph.

On a GPU the paper configuration's DFAD loop is host-bound: an H200 ran ~50 ms of kernels per iteration, but
issuing its ~4,100 launches took longer (benchmarks/results/gpu-cifar10-h200.md). A CUDA graph issues them all
in one launch. The iteration is captured once and replayed; the loop around it (evaluation, checkpoints,
schedulers) stays eager.

A method opts in with `Method.graphable`: its `step` has static shapes, draws its noise on the device, never
syncs with the host, and changes no host-side state (its counters go in `Method.count`). A float learning
rate is baked into the captured optimiser kernels, so the capture is keyed by the optimisers' learning rates:
a schedule's milestone costs one recapture; a schedule that changes them every iteration (cosine) is not
graphable. Anything else that stops a capture falls back to eager steps, with the reason in `status`.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Optional

import torch

from .method import Method, steps_on_device

WARMUP_STEPS = 3  # eager iterations before the first capture: cuDNN autotuning, optimiser state, lazy inits


class CudaGraph:
    """torch.cuda.CUDAGraph behind the calls GraphedStep makes (tests put a CPU stand-in here)."""

    # Adam & co. step inside a capture only with `capturable` (their step count on the device); PyTorch
    # refuses that flag for CPU tensors, so a CPU stand-in sets this False
    capturable_optimizers = True

    def __init__(self, method: Method):
        self.device = method.ctx.device
        self.graph = torch.cuda.CUDAGraph()

    @staticmethod
    def warm(method: Method, fn: Callable[[], dict]) -> dict:
        """One eager step on a side stream, as PyTorch's whole-network capture recipe warms up."""
        device = method.ctx.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            out = fn()
        torch.cuda.current_stream(device).wait_stream(side)
        return out

    def capture(self, fn: Callable[[], dict]) -> dict:
        """Record fn (nothing runs); returns its outputs, whose memory every replay rewrites."""
        # thread_local: CUDA calls of other threads (W&B's monitor, a progress bar) do not void the capture.
        # A capture stream of the run's device: torch.cuda.graph's own is made on whichever device is current,
        # and kernels of cuda:1 issued while cuda:0's stream captures are not recorded (an empty graph)
        with torch.cuda.device(self.device), torch.cuda.graph(
                self.graph, stream=torch.cuda.Stream(self.device), capture_error_mode="thread_local"):
            return fn()

    def replay(self) -> None:
        with torch.cuda.device(self.device):
            self.graph.replay()


def lr_key(method: Method) -> tuple:
    """The optimisers' learning rates (floats: the harness never makes tensor ones)."""
    return tuple(g["lr"] for o in method.optimizers.values() for g in o.param_groups)


class GraphedStep:
    """Callable like `method.step(it)`: `warmup` eager steps, then replays of a captured step."""

    def __init__(self, method: Method, warmup: int = WARMUP_STEPS,
                 graph_factory: Optional[Callable[[Method], object]] = None):
        self.method, self.warmup = method, warmup
        self.graph_factory = graph_factory or CudaGraph
        self.graph = None
        self.outputs: dict = {}
        self.key: Optional[tuple] = None
        self.steps = self.captures = self.replays = 0
        self.eager_reason = self._unsupported()

    def _unsupported(self) -> Optional[str]:
        m = self.method
        if not m.graphable:
            return f"method {m.name} is not graphable"
        if self.graph_factory is CudaGraph and m.ctx.device.type != "cuda":
            return f"device {m.ctx.device} is not CUDA"
        return None

    @property
    def status(self) -> dict:
        """What ran: recorded in the run's summary and in `speed`'s JSON."""
        if self.eager_reason:
            return {"mode": "eager", "reason": self.eager_reason, "replays": self.replays}
        return {"mode": "graph", "captures": self.captures, "replays": self.replays, "warmup": self.warmup}

    def __call__(self, it: int) -> dict:
        self.steps += 1
        if self.eager_reason:
            return self.method.step(it)
        if self.steps <= self.warmup:
            return self.graph_factory.warm(self.method, lambda: self.method.step(it))
        key = lr_key(self.method)
        if key != self.key:
            try:
                self._capture(it, key)
            except Exception as e:  # the capture recorded nothing that ran: this step goes eager, so do the rest
                self.graph, self.outputs, self.key = None, {}, None
                self.eager_reason = f"capture failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                warnings.warn(f"runtime.cuda_graph: {self.eager_reason}; running eager steps", stacklevel=2)
                return self.method.step(it)
        self.graph.replay()
        self.replays += 1
        return self.outputs

    def _capture(self, it: int, key: tuple) -> None:
        self.graph, self.outputs = None, {}  # the previous capture's memory goes once nothing holds it
        groups = [g for o in self.method.optimizers.values() for g in o.param_groups]
        before = [g.get("capturable") for g in groups]
        steps = [(st, st["step"]) for o in self.method.optimizers.values() for st in o.state.values()
                 if torch.is_tensor(st.get("step"))]  # where the counters were (steps_on_device may move them)
        try:
            if self.graph_factory.capturable_optimizers:
                for g in groups:
                    if "capturable" in g:  # SGD has no such flag: its foreach step captures as it is
                        g["capturable"] = True
                for opt in self.method.optimizers.values():
                    steps_on_device(opt)
            graph = self.graph_factory(self.method)
            with _quiet_capturable():
                self.outputs = graph.capture(lambda: self.method.step(it))
        except BaseException:  # the eager steps that follow run with the optimisers as they were
            for g, flag in zip(groups, before):
                if flag is not None:
                    g["capturable"] = flag
            for st, step in steps:  # nothing ran in the capture: the counters as they were, where they were
                st["step"] = step
            raise
        self.graph, self.key = graph, key
        self.captures += 1


@contextlib.contextmanager
def _quiet_capturable():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*capturable=True.*")
        yield


def stepper(method: Method, cuda_graph: bool, **kw) -> Callable[[int], dict]:
    """The loop's (and `speed`'s) way to run one iteration of `method`."""
    return GraphedStep(method, **kw) if cuda_graph else method.step
