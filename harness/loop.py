"""The shared loop: budget, evaluation cadence, best/final accuracy, checkpoints, timing and progress.

Methods only define `step`; everything that makes runs comparable lives here once.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn

from .data import ImageTensors
from .errors import DivergenceError
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


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageTensors, device, autocast=None, batch_size: int = 1000,
             channels_last: bool = False) -> float:
    was = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    for i in range(0, len(data), batch_size):
        x = data.normalize(data.x[i: i + batch_size].to(device, non_blocking=True))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast() if autocast else torch.autocast(torch.device(device).type, enabled=False):
            out = model(x)
        correct += (out.argmax(1) == data.y[i: i + batch_size].to(device)).sum()
    model.train(was)
    return correct.item() / max(1, len(data))


def rng_state(device: torch.device) -> dict:
    s = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        s["cuda"] = torch.cuda.get_rng_state(device)
    return s


def set_rng_state(s: dict, device: torch.device) -> None:
    torch.set_rng_state(s["cpu"])
    if device.type == "cuda" and "cuda" in s:
        torch.cuda.set_rng_state(s["cuda"], device)


def run_loop(method: Method, test: ImageTensors, iterations: int, eval_every: int,
             checkpoint: Path | None = None, resume_state: dict | None = None,
             on_eval: Callable[[dict], None] | None = None,
             on_progress: Callable[[int, int, float | None], None] | None = None,
             fingerprint: str = "") -> LoopResult:
    ctx = method.ctx
    device = ctx.device
    test = test.to(device)
    history: list[dict] = []
    start_it, prior_time, prior_train = 0, 0.0, 0.0
    if resume_state is not None:
        method.load_state_dict(resume_state["method"])
        set_rng_state(resume_state["rng"], device)
        history = list(resume_state["history"])
        start_it = resume_state["iteration"]
        prior_time, prior_train = resume_state["elapsed_s"], resume_state["train_time_s"]

    t0 = time.perf_counter()
    train_time = prior_train
    sums: dict[str, torch.Tensor] = {}
    count = 0
    last_acc = history[-1]["test_acc"] if history else None
    it = start_it
    tick = time.perf_counter()
    while it < iterations:
        losses = method.step(it)
        for k, v in losses.items():
            sums[k] = sums[k] + v.float() if k in sums else v.float().clone()
        count += 1
        for sched in method.schedulers.values():
            sched.step()
        it += 1
        if it % eval_every == 0 or it == iterations:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            train_time += time.perf_counter() - tick
            means = {k: (v / count).item() for k, v in sums.items()}
            bad = [k for k, v in means.items() if not math.isfinite(v)]
            if bad:
                raise DivergenceError(f"{', '.join(bad)} is not finite at iteration {it}")
            acc = evaluate(ctx.student, test, device, ctx.autocast, channels_last=ctx.channels_last)
            row = {"iteration": it, "test_acc": acc, "elapsed_s": round(prior_time + time.perf_counter() - t0, 3),
                   "train_time_s": round(train_time, 3), **means}
            for name, opt in method.optimizers.items():
                row[f"lr_{name}"] = opt.param_groups[0]["lr"]
            history.append(row)
            last_acc = acc
            sums, count = {}, 0
            if checkpoint is not None:
                atomic_torch_save({
                    "version": CHECKPOINT_VERSION, "fingerprint": fingerprint, "iteration": it,
                    "method": method.state_dict(), "rng": rng_state(device), "history": history,
                    "elapsed_s": row["elapsed_s"], "train_time_s": train_time,
                }, checkpoint)
            if on_eval:
                on_eval(row)
            tick = time.perf_counter()
        if on_progress:
            on_progress(it, iterations, last_acc)

    accs = [r["test_acc"] for r in history]
    return LoopResult(
        best_acc=max(accs) if accs else float("nan"), final_acc=accs[-1] if accs else float("nan"),
        history=history, student=ctx.student, iterations=it,
        wall_time_s=prior_time + time.perf_counter() - t0, train_time_s=train_time,
        resumed_from=start_it, method=method,
    )
