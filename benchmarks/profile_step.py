"""Where a method's iteration spends its time, for #8's distance-from-the-limit question.

  python benchmarks/profile_step.py step mnist --profile paper [--method dfad] [key.path=value ...]
      one default-path iteration under torch.profiler: the ops with the most self CPU time
  python benchmarks/profile_step.py generator mnist --profile paper
      the method's generator alone, eager against torch.compile, in the default path's precision and layout
  python benchmarks/profile_step.py fusion cifar10 --profile cpu2h [--repeats 5]
      default-path iterations with the generator's fused upsample+conv on and off, alternating in one process
      (median s/iteration of each, and of the generator's forward and forward+backward alone)
  python benchmarks/profile_step.py inplace mnist --profile paper [--repeats 5]
      the same with the generator's LeakyReLUs in place (as built) and out of place
  python benchmarks/profile_step.py allocator mnist --profile paper [--repeats 3]
      default-path iterations with runtime.keep_freed_memory on and off: a process per timing (the setting is
      the process's), alternating on/off
  python benchmarks/profile_step.py fold cifar10 --profile cpu2h [--repeats 5]
      default-path iterations with the frozen teacher's BatchNorm folded into its convs and not (swapped into
      the same method), and the teacher's forward and forward+backward-to-input alone
  python benchmarks/profile_step.py state cifar10 --profile cpu2h --run RUNS/cifar10/dfad/seed-0 \
          --teacher RUNS/teachers/*/teacher.pt [--repeats 3]
      whether a run's iterations got slower as it trained: default-path iterations from the run's last checkpoint
      against the same method's fresh weights (the run's teacher in both), then the checkpoint's state with
      subnormal floats flushed to zero and not (torch.set_flush_denormal), alternating in one process
  python benchmarks/profile_step.py upsample
      nearest 2x upsampling of 512x128x16x16, NCHW against channels-last, fp32 and bf16 (why the generator
      keeps channels-last from its first layer)

The teacher is untrained, as in `dfad-bench speed`, unless --teacher names weights: weights are assumed not to change
the cost, and `state` checks that against a run's checkpoint. Run it alone on the machine.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from harness.cli import _load
from harness.data import get_dataset
from harness.speed import build, time_steps
from harness.teacher import build_teacher_model, load_weights


def default_method(suite, method, teacher_weights=None):
    """The default path's method, and its teacher as built (the method runs a folded copy of it); untrained
    unless `teacher_weights` names a checkpoint."""
    spec = get_dataset(suite.dataset)
    teacher = build_teacher_model(suite.teacher, spec.input_shape, spec.num_classes)
    if teacher_weights:
        load_weights(teacher, teacher_weights)
    return build(suite, method, True, torch.device("cpu"), teacher, 5), teacher


def step(m, rows: int) -> None:
    m.step(0)
    t0 = time.perf_counter()
    m.step(1)
    print(f"one iteration: {time.perf_counter() - t0:.3f} s")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        m.step(2)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def generator(m, reps: int = 3) -> None:
    import copy

    c, nz, bs = m.ctx, m.p.nz, m.p.batch_size
    eager = m.generator
    compiled = copy.deepcopy(eager)
    compiled.compile()
    z = torch.randn(bs, nz, device=c.device)

    def fwd(g):  # an imitation step's generator call
        with torch.no_grad(), c.autocast():
            return g(z)

    def fwd_bwd(g):  # a generation step's
        with c.autocast():
            y = g(z)
        y.float().abs().mean().backward()

    for name, g in (("eager", eager), ("compiled", compiled)):
        t0 = time.perf_counter()
        fwd(g)
        fwd_bwd(g)
        print(f"{name}: first calls {time.perf_counter() - t0:.1f} s", flush=True)
        for f in (fwd, fwd_bwd):
            f(g)
            t0 = time.perf_counter()
            for _ in range(reps):
                f(g)
            print(f"{name} {f.__name__}: {(time.perf_counter() - t0) / reps * 1000:.0f} ms", flush=True)


def alternate(m, toggle, fns, labels=("on", "off"), repeats: int = 5, iters: int = 2) -> None:
    """Median time of each fn (and of `iters` default-path iterations) with toggle(True) and toggle(False),
    alternating in one process so the machine's drift hits both alike."""
    import statistics

    def iteration():
        for i in range(iters):
            m.step(i)

    fns = [iteration, *fns]
    times: dict[tuple[str, bool], list[float]] = {}
    for f in fns:  # warm-up, both settings
        for on in (True, False):
            toggle(on)
            f()
    for _ in range(repeats):
        for f in fns:
            for on in (True, False):
                toggle(on)
                t0 = time.perf_counter()
                f()
                times.setdefault((f.__name__, on), []).append((time.perf_counter() - t0) / (iters if f is iteration else 1))
    toggle(True)
    a, b = labels
    for f in fns:
        on, off = (statistics.median(times[(f.__name__, v)]) for v in (True, False))
        print(f"{f.__name__}: {a} {on * 1000:.0f} ms, {b} {off * 1000:.0f} ms, ratio {off / on:.2f}x "
              f"(median of {repeats}; {a} {[round(t * 1000) for t in times[(f.__name__, True)]]}, "
              f"{b} {[round(t * 1000) for t in times[(f.__name__, False)]]})", flush=True)


def generator_calls(m):
    """The generator's two kinds of call in an iteration: an imitation step's (no grad) and a generation step's."""
    c, g = m.ctx, m.generator
    z = torch.randn(m.p.batch_size, m.p.nz, device=c.device)

    def fwd():
        with torch.no_grad(), c.autocast():
            g(z)

    def fwd_bwd():
        with c.autocast():
            y = g(z)
        y.float().abs().mean().backward()

    return [fwd, fwd_bwd]


def fusion(m, repeats: int = 5) -> None:
    alternate(m, lambda on: setattr(m.generator, "fused_upsample", on), generator_calls(m), ("fused", "unfused"),
              repeats)


def inplace(m, repeats: int = 5) -> None:
    """The generator's LeakyReLUs in place (as built) and out of place."""
    acts = [a for a in m.generator.modules() if isinstance(a, torch.nn.LeakyReLU)]

    def toggle(on: bool) -> None:
        for a in acts:
            a.inplace = on

    alternate(m, toggle, generator_calls(m), ("in place", "out of place"), repeats)


def allocator(argv: list[str], repeats: int = 3, iters: int = 3) -> None:
    """runtime.keep_freed_memory on and off. The setting belongs to a process, set once at its start, so each
    timing is its own process (`_iterations` below), alternating on/off: median s/iteration of `iters` default-path
    iterations after one warm-up, `repeats` processes per setting."""
    import statistics
    import subprocess
    import sys

    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeats):
        for keep in (True, False):
            r = subprocess.run([sys.executable, __file__, "_iterations", *argv[:1], f"runtime.keep_freed_memory={keep}",
                                *argv[1:], "--repeats", str(iters)], capture_output=True, text=True, check=True)
            times[keep].append(float(r.stdout.split()[-1]))
    on, off = (statistics.median(times[k]) for k in (True, False))
    print(f"iteration: kept {on * 1000:.0f} ms, glibc default {off * 1000:.0f} ms, ratio {off / on:.2f}x (median of "
          f"{repeats} processes each; kept {[round(t * 1000) for t in times[True]]}, "
          f"default {[round(t * 1000) for t in times[False]]})", flush=True)


def iterations(m, n: int) -> None:
    """One process's timing for `allocator` (the suite's runtime applied before the models were built):
    1 warm-up iteration, then n."""
    m.step(0)
    print(f"s_per_iter {time_steps(m, lambda i: m.step(i + 1), n)}")


def fold(m, unfolded, repeats: int = 5) -> None:
    """The teacher with its BatchNorm folded into its convs (the default path) against the same teacher
    unfolded, swapped into the same method; also the teacher's forward alone, and its forward+backward to
    the input (the generator step's)."""
    c, folded = m.ctx, m.ctx.teacher
    print(f"{c.teacher_bn_folded} conv -> BN pairs folded", flush=True)
    x = c.prepare(m.sample(m.p.batch_size))

    def teacher_fwd():
        with torch.no_grad(), c.autocast():
            c.teacher(x)

    def teacher_fwd_bwd():
        xi = x.detach().requires_grad_()
        with c.autocast():
            y = c.teacher(xi)
        y.float().abs().mean().backward()

    alternate(m, lambda on: setattr(c, "teacher", folded if on else unfolded), [teacher_fwd, teacher_fwd_bwd],
              ("folded", "unfolded"), repeats)


def state(m, run_dir: str, repeats: int) -> None:
    """Trained state (the run's checkpoint) against fresh weights, then subnormals flushed or not."""
    import copy
    from pathlib import Path

    ckpt = torch.load(Path(run_dir) / "checkpoint.pt", map_location="cpu", weights_only=False)
    print(f"checkpoint at iteration {ckpt['iteration']}", flush=True)
    fresh = copy.deepcopy(m.state_dict())

    def trained_or_fresh(trained: bool) -> None:
        m.load_state_dict(ckpt["method"] if trained else fresh)

    alternate(m, trained_or_fresh, [], ("trained", "fresh"), repeats, iters=3)

    def flushed(on: bool) -> None:
        torch.set_flush_denormal(on)
        m.load_state_dict(ckpt["method"])

    alternate(m, flushed, [], ("subnormals flushed", "kept"), repeats, iters=3)
    torch.set_flush_denormal(False)


def upsample(reps: int = 5) -> None:
    import torch.nn.functional as F

    for dtype in (torch.bfloat16, torch.float32):
        for layout in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(512, 128, 16, 16, dtype=dtype).contiguous(memory_format=layout)
            F.interpolate(x, scale_factor=2)
            t0 = time.perf_counter()
            for _ in range(reps):
                F.interpolate(x, scale_factor=2)
            name = "channels-last" if layout is torch.channels_last else "NCHW"
            print(f"{str(dtype).replace('torch.', '')} {name}: {(time.perf_counter() - t0) / reps * 1000:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["step", "generator", "fusion", "allocator", "_iterations", "fold",
                                     "state", "upsample", "inplace"])
    ap.add_argument("suite", nargs="?", default="mnist")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--method", default="dfad")
    ap.add_argument("--rows", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--run", help="state: a run's directory (its checkpoint.pt)")
    ap.add_argument("--teacher", help="the teacher's weights (e.g. the run's RUNS/teachers/*/teacher.pt); "
                                      "default: untrained")
    a = ap.parse_args()
    if a.what == "upsample":
        return upsample()
    if a.what == "allocator":
        return allocator([a.suite, *a.overrides, "--profile", a.profile, "--method", a.method], a.repeats)
    suite = _load(a.suite, a.profile, a.overrides, announce=False)
    from harness import env

    env.apply_runtime(suite.runtime)  # threads and allocator as runs have them, before anything is allocated
    m, teacher = default_method(suite, a.method, a.teacher)
    if a.what == "fusion":
        return fusion(m, a.repeats)
    if a.what == "inplace":
        return inplace(m, a.repeats)
    if a.what == "_iterations":
        return iterations(m, a.repeats)
    if a.what == "fold":
        return fold(m, teacher, a.repeats)
    if a.what == "state":
        return state(m, a.run, a.repeats)
    step(m, a.rows) if a.what == "step" else generator(m)


if __name__ == "__main__":
    main()
