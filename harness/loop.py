"""The shared loop: budget, evaluation cadence, best/final accuracy, checkpoints, timing and progress.

Methods only define `step`; everything that makes runs comparable lives here once.
"""
from __future__ import annotations

import gc
import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn

from .data import ImageTensors
from .errors import DivergenceError
from .graphs import stepper
from .method import Method
from .store import atomic_torch_save

CHECKPOINT_VERSION = 1


@dataclass
class LoopResult:
    best_acc: float
    final_acc: float
    history: list[dict]
    student: nn.Module
    iterations: int
    wall_time_s: float
    train_time_s: float
    resumed_from: int = 0
    method: Optional[Method] = field(default=None, repr=False)
    cuda_graph: Optional[dict] = None  # runtime.cuda_graph: how the steps ran (GraphedStep.status)
    time_budget: Optional[dict] = None  # distill(time_budget_s=...): what the iteration count was chosen from


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageTensors, device, autocast=None, batch_size: int = 1000,
             channels_last: bool = False) -> float:
    if getattr(data, "metric", "acc") == "miou":  # segmentation: mIoU, void labels ignored
        from .seg import evaluate_miou

        return evaluate_miou(model, data, device, autocast, batch_size, channels_last)
    correct = torch.zeros((), dtype=torch.long, device=device)
    for out, y in predictions(model, data, device, autocast, batch_size, channels_last):
        correct += (out.argmax(1) == y).sum()
    return correct.item() / max(1, len(data))


@torch.no_grad()
def predictions(model: nn.Module, data: ImageTensors, device, autocast=None, batch_size: int = 1000,
                channels_last: bool = False):
    """(logits, labels) per batch of the cached test tensors, the model in eval mode meanwhile."""
    was = model.training
    model.eval()
    try:
        for i in range(0, len(data), batch_size):
            x = data.normalize(data.x[i: i + batch_size].to(device, non_blocking=True))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast() if autocast else torch.autocast(torch.device(device).type, enabled=False):
                out = model(x)
            yield out, data.y[i: i + batch_size].to(device)
    finally:
        model.train(was)


def rng_state(device: torch.device) -> dict:
    s = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        s["cuda"] = torch.cuda.get_rng_state(device)
    return s


def set_rng_state(s: dict, device: torch.device) -> None:
    torch.set_rng_state(s["cpu"])
    if device.type == "cuda" and "cuda" in s:
        torch.cuda.set_rng_state(s["cuda"], device)


def stop_handler(first_stop):
    """A handler for SIGINT and SIGTERM: the first of them calls first_stop() (a graceful stop begins); the
    other kind after it changes nothing (a launched job gets Ctrl-C from the terminal and SIGTERM from its
    launcher; a scheduler may follow a Ctrl-C); the same signal again stops now."""
    seen: set[int] = set()

    def handler(signum, frame):
        if signum in seen:
            raise KeyboardInterrupt
        seen.add(signum)
        if len(seen) == 1:
            first_stop()

    return handler


class _StopFlag:
    """SIGINT (Ctrl-C) and SIGTERM (kill, schedulers) set a flag the loop reads between iterations,
    so the checkpoint is written between steps, never mid-step."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.raised = False

    @contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.getsignal(s) for s in self.SIGNALS}
        handler = stop_handler(lambda: setattr(self, "raised", True))  # the same signal again: stop now
        for s in self.SIGNALS:
            signal.signal(s, handler)
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def run_loop(method: Method, test: ImageTensors, iterations: int, eval_every: int,
             checkpoint: Path | None = None, resume_state: dict | None = None,
             on_eval: Callable[[dict], None] | None = None,
             on_progress: Callable[[int, int, float | None], None] | None = None,
             fingerprint: str = "", chance_evals: int | None = None,
             checkpoint_every_s: float = 0.0, time_budget: dict | None = None,
             budget_started: float | None = None) -> LoopResult:
    """Run `method` for `iterations`, evaluating on `test` every `eval_every` iterations.

    `chance_evals`: fail the run when that many evaluations in a row sit at chance accuracy.
    `checkpoint_every_s`: write the checkpoint at an evaluation only when this long has passed since the
    last one (0: at every evaluation); the first evaluation, the last iteration and a stop always write it.
    `time_budget`: what fit_iterations chose `iterations` from, kept in the checkpoint beside them; the run also
    keeps to it, stopping early (scored) where the machine turns out slower than the probe found.
    `budget_started`: when the budget's clock started (time.perf_counter() before the probe), so the time between
    the probe and the first step (building the run, W&B) counts too; without it, the probe's wall time stands for it.
    """
    loop = _Loop(method, test.to(method.ctx.device), iterations, eval_every, checkpoint, fingerprint,
                 on_eval, on_progress, chance_evals, checkpoint_every_s, time_budget)
    if resume_state is not None:
        loop.resume(resume_state)
    elif budget_started is not None and loop.deadline is not None:
        loop.deadline = time_budget["budget_s"] - (time.perf_counter() - budget_started)
    return loop.run()


def seconds_per_call(fn: Callable[[], object], calls: int, warmup: int, device: torch.device) -> float:
    """fn's mean wall time over `calls` calls after `warmup` untimed ones (which let cudnn pick its kernels and a
    CUDA graph be captured); on a GPU the work queued is waited for at both ends."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - t) / calls


def fit_iterations(make_probe: Callable[[], Method], test: ImageTensors, max_iterations: int, eval_every: int,
                   budget_s: float, log=print, probe_steps: int = 10, warmup: int = 4) -> tuple[int, dict]:
    """How many iterations (at most max_iterations, a multiple of eval_every where one fits) fit in budget_s with
    their evaluations: times probe_steps iterations after warm-up (which also captures a CUDA graph and lets cudnn
    pick its kernels) and one evaluation of a probe, make_probe()'s method set up on its own copy of the student.
    The random number generators are left as they were, so the real run starts untouched. Returns (iterations,
    what the choice was made from)."""
    t0 = time.perf_counter()
    devices = range(torch.cuda.device_count()) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        method = make_probe()
        device = method.ctx.device
        probe = _Loop(method, test.to(device), 1 << 62, 1 << 62, None, "", None, None, None)
        step_s = seconds_per_call(probe.step, probe_steps, warmup, device)
        c = method.ctx
        eval_s = seconds_per_call(lambda: evaluate(c.student, probe.test, device, c.eval_autocast,
                                                   channels_last=c.channels_last), 1, 0, device)
        del probe, method
    gc.collect()  # the probe's modules (a compiled one, a captured graph's pool) before the real run builds its own
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    per_iter = 1.05 * (step_s + eval_s / eval_every)  # 5% margin for drift
    left = budget_s - (time.perf_counter() - t0)
    n = int(left // per_iter)
    # whole evaluation periods where fewer than the cap fit (the last evaluation at the end), the cap as it is
    n = max_iterations if n >= max_iterations else max(1, n - n % eval_every if n >= eval_every else n)
    info = {"budget_s": budget_s, "probe_s_per_iter": round(step_s, 4), "probe_eval_s": round(eval_s, 2),
            "probe_wall_s": round(time.perf_counter() - t0, 1), "max_iterations": max_iterations, "iterations": n}
    log(f"time budget {budget_s:.0f}s: {step_s:.3f}s per iteration, {eval_s:.1f}s per evaluation (every "
        f"{eval_every}) -> {n} iterations (at most {max_iterations})")
    return n, info


class _Loop:
    def __init__(self, method, test, iterations, eval_every, checkpoint, fingerprint, on_eval, on_progress,
                 chance_evals, checkpoint_every_s=0.0, time_budget=None):
        self.method, self.ctx, self.test = method, method.ctx, test
        self.iterations, self.eval_every = iterations, eval_every
        self.checkpoint, self.fingerprint = checkpoint, fingerprint
        self.checkpoint_every_s, self.saved_at = checkpoint_every_s, None
        self.on_eval, self.on_progress, self.chance_evals = on_eval, on_progress, chance_evals
        self.history: list[dict] = []
        self.it = self.start_it = 0
        self.prior_time = self.train_time = 0.0
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.stepper = stepper(method, self.ctx.cuda_graph)
        self.time_budget: dict | None = time_budget
        # the run's own share of the budget (the probe spent the rest): a deadline on elapsed(), which counts every
        # session of a resumed run
        self.deadline = (time_budget["budget_s"] - time_budget.get("probe_wall_s", 0.0)) if time_budget else None

    def resume(self, state: dict) -> None:
        self.method.load_state_dict(state["method"])
        set_rng_state(state["rng"], self.ctx.device)
        self.history = list(state["history"])
        self.it = self.start_it = state["iteration"]
        self.prior_time, self.train_time = state["elapsed_s"], state["train_time_s"]
        # the loss sums since the last evaluation (a stop between evaluations); older checkpoints have none
        self.sums = {k: v.to(self.ctx.device) for k, v in state.get("loss_sums", {}).items()}
        self.count = state.get("loss_count", 0)

    def elapsed(self) -> float:
        return self.prior_time + time.perf_counter() - self.t0

    def save(self) -> None:
        self.saved_at = time.perf_counter()
        if self.checkpoint is not None:
            atomic_torch_save({
                "version": CHECKPOINT_VERSION, "fingerprint": self.fingerprint, "iteration": self.it,
                "method": self.method.state_dict(), "rng": rng_state(self.ctx.device), "history": self.history,
                "elapsed_s": self.elapsed(), "train_time_s": self.train_time,
                "loss_sums": self.sums, "loss_count": self.count,
                # the planned count and what a time budget chose it from: a resumed run keeps both
                "iterations": self.iterations, "time_budget": self.time_budget,
            }, self.checkpoint)

    def run(self) -> LoopResult:
        self.t0 = self.tick = time.perf_counter()
        self.period = (self.elapsed(), self.it)  # where the evaluation period under way began
        with _StopFlag().installed() as stop:
            while self.it < self.iterations:
                if stop.raised:  # Ctrl-C: checkpoint between steps, then stop
                    self.train_time += time.perf_counter() - self.tick
                    self.save()
                    raise KeyboardInterrupt
                self.step()
        accs = [r["test_acc"] for r in self.history]
        return LoopResult(
            best_acc=max(accs) if accs else float("nan"), final_acc=accs[-1] if accs else float("nan"),
            history=self.history, student=self.ctx.student, iterations=self.it, wall_time_s=self.elapsed(),
            train_time_s=self.train_time, resumed_from=self.start_it, method=self.method,
            cuda_graph=getattr(self.stepper, "status", None), time_budget=self.time_budget,
        )

    def step(self) -> None:
        losses = self.stepper(self.it)
        self.method.count()
        for k, v in losses.items():  # summed on the device: no host sync until the evaluation
            self.sums[k] = self.sums[k] + v.float() if k in self.sums else v.float().clone()
        self.count += 1
        for sched in self.method.schedulers.values():
            sched.step()
        self.it += 1
        if self.deadline is not None and self.it < self.iterations and self.past_deadline():
            self.cut("the time budget ran out between evaluations")  # a slowed machine: stop, scored, now
        if self.it % self.eval_every == 0 or self.it == self.iterations:
            self.evaluate()
        if self.on_progress:
            self.on_progress(self.it, self.iterations, self.history[-1]["test_acc"] if self.history else None)

    def evaluate(self) -> None:
        device = self.ctx.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.train_time += time.perf_counter() - self.tick
        means = {k: (v / self.count).item() for k, v in self.sums.items()}
        bad = [k for k, v in means.items() if not math.isfinite(v)]
        if bad:
            raise DivergenceError(f"{', '.join(bad)} is not finite at iteration {self.it}")
        acc = evaluate(self.ctx.student, self.test, device, self.ctx.eval_autocast, channels_last=self.ctx.channels_last)
        row = {"iteration": self.it, "test_acc": acc, "elapsed_s": round(self.elapsed(), 3),
               "train_time_s": round(self.train_time, 3), **means}
        for name, opt in self.method.optimizers.items():
            row[f"lr_{name}"] = opt.param_groups[0]["lr"]
        if getattr(self.test, "metric", "acc") != "acc":  # `test_acc` then holds that metric (reports label it)
            row["metric"] = self.test.metric
        self.history.append(row)
        self.sums, self.count = {}, 0
        if self.deadline is not None and self.it < self.iterations:
            (since, from_it), now = self.period, self.elapsed()
            per_iter = (now - since) / max(1, self.it - from_it)  # this period's pace, its evaluation included
            if from_it == self.start_it:  # a session's first period also paid one-time costs (a compile, a capture)
                tb = self.time_budget
                per_iter = min(per_iter, tb.get("probe_s_per_iter", per_iter)
                               + tb.get("probe_eval_s", 0.0) / self.eval_every)
            if now + per_iter * (min(self.it + self.eval_every, self.iterations) - self.it) > self.deadline:
                self.cut("the next evaluation period would end past the time budget")
        self.period = (self.elapsed(), self.it)
        if (self.saved_at is None or self.it == self.iterations
                or time.perf_counter() - self.saved_at >= self.checkpoint_every_s):
            self.save()
        if self.on_eval:
            self.on_eval(row)
        self.check_chance()
        self.tick = time.perf_counter()

    def past_deadline(self) -> bool:
        """Whether the evaluation that ends the run must start now to end by the deadline. On a GPU the steps are
        queued ahead of it: every 16th step waits for them (a graphed run never syncs otherwise) and is the one
        that looks."""
        if self.ctx.device.type == "cuda":
            if self.it % 16:
                return False
            torch.cuda.synchronize(self.ctx.device)
        return self.elapsed() + self.time_budget.get("probe_eval_s", 0.0) >= self.deadline

    def cut(self, why: str) -> None:
        """End the run at this iteration (the machine turned out slower than the probe found): the schedules stay
        those of the planned count, and the time budget's record says where and why it stopped."""
        self.time_budget = {**self.time_budget, "stopped_at": self.it, "planned_iterations": self.iterations,
                            "stopped_because": why}
        self.iterations = self.it

    def check_chance(self) -> None:
        n = self.chance_evals
        if not n or len(self.history) < n:
            return
        chance = 1.0 / max(1, self.ctx.num_classes)
        # "at chance": within 1.5x of 1/K, which a student that learned anything leaves quickly
        if all(r["test_acc"] <= 1.5 * chance for r in self.history[-n:]):
            raise DivergenceError(f"test accuracy stayed at chance ({chance:.3f}) for {n} evaluations "
                                  f"(up to iteration {self.it})")
