"""`dfad-bench speed`: seconds per iteration of a method on the suite's models, default (fast) path
against the plain eager fp32 NCHW loop with every switch off, measured alternately in one process.

Speed claims are ratios from one run: the machines here change from day to day.
"""
from __future__ import annotations

import copy
import json
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import torch
from torch.utils.flop_counter import FlopCounterMode

from . import env
from .api import build_context, make_method, runtime_switches
from .config import Suite
from .data import get_dataset
from .errors import first_line
from .graphs import stepper
from .runner import build_student
from .teacher import build_teacher_model


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(suite: Suite, method: str, fast: bool, device, teacher, iters: int):
    spec = get_dataset(suite.dataset)
    torch.manual_seed(0)
    ctx = build_context(teacher, build_student(suite), spec.input_shape, spec.num_classes, 0, iters + 10, device,
                        dataset=suite.dataset, **runtime_switches(suite.runtime, plain=not fast))
    m = make_method(suite.run_config(method, 0).get("method_class", method), ctx, suite.run_config(method, 0)["params"])
    m.setup()
    return m


def time_steps(m, step, n: int) -> float:
    """Seconds per iteration of n calls of `step` (the method's, or its CUDA-graph replay)."""
    if n == 0:
        return 0.0
    device = m.ctx.device
    _sync(device)
    t0 = time.perf_counter()
    for i in range(n):
        step(i)
    _sync(device)
    return (time.perf_counter() - t0) / n


def fused_generators(m) -> list:
    return [g for g in m.modules.values() if getattr(g, "fused_upsample", False)]


def flops_per_iter(m, nominal: bool = False) -> float:
    """FLOPs one iteration executes; nominal=True: those of the models as written (no fused upsample+conv)."""
    fused = fused_generators(m) if nominal else []
    for g in fused:
        g.fused_upsample = False
    try:
        with FlopCounterMode(display=False) as fc:
            m.step(0)
    finally:
        for g in fused:
            g.fused_upsample = True
    return float(fc.get_total_flops())


def _best_time(fn, device, reps: int) -> float:
    """Seconds of the fastest of `reps` calls of fn, after one warm-up call."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak(device, dtype, n: int | None = None, reps: int = 10) -> float:
    """TFLOP/s of a large square matmul: the machine's practical limit for this dtype."""
    n = n or (8192 if torch.device(device).type == "cuda" else 2048)  # a GPU needs a larger product to fill it
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / _best_time(lambda: a @ b, device, reps) / 1e12


def conv_peak(device, dtype, channels_last: bool, n: int | None = None, c: int = 256, hw: int = 32,
              reps: int = 5) -> float:
    """TFLOP/s of a large 3x3 convolution (n x c x hw x hw, c -> c channels): the limit for conv-bound loops."""
    device = torch.device(device)
    n = n or (512 if device.type == "cuda" else 64)
    x = torch.randn(n, c, hw, hw, device=device, dtype=dtype)
    conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False).to(device=device, dtype=dtype)
    if channels_last:
        x, conv = x.contiguous(memory_format=torch.channels_last), conv.to(memory_format=torch.channels_last)
    with torch.no_grad():
        best = _best_time(lambda: conv(x), device, reps)
    return 2 * n * c * c * 9 * hw * hw / best / 1e12


def peak_rss_mb() -> float | None:
    """This process's peak resident memory (MB) since it started."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    try:
        import resource  # not on Windows
    except ImportError:
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return round(rss / (2**20 if sys.platform == "darwin" else 1024), 1)


def cudnn_benchmark(suite: Suite, fast: bool) -> bool:
    """Autotuned convolutions: on the default path unless the suite asks for determinism; never on the plain one."""
    return fast and not suite.runtime.deterministic


def _path_memory(suite_dump: dict, method: str, fast: bool, steps: int) -> dict:
    """In a fresh process: the peak memory of one path alone (its teacher, models, data and `steps` iterations,
    past a CUDA graph's capture): RSS, and on a GPU PyTorch's peak allocated and reserved memory."""
    import methods  # noqa: F401  (register the methods in this fresh process)

    suite = Suite.model_validate(suite_dump)  # validated again: registers the suite's own dataset here too
    env.apply_runtime(suite.runtime)
    device = env.runtime_device(suite.runtime)
    if device.type == "cuda":  # as in the timing process
        torch.backends.cudnn.benchmark = cudnn_benchmark(suite, fast)
    spec = get_dataset(suite.dataset)
    m = build(suite, method, fast, device, build_teacher_model(suite.teacher, spec.input_shape, spec.num_classes),
              steps)
    step = stepper(m, m.ctx.cuda_graph)
    time_steps(m, step, max(steps, getattr(step, "warmup", -1) + 2))  # a graphed path: captured and replayed
    out = {"peak_rss_mb": peak_rss_mb()}
    if device.type == "cuda":  # a graph's private pool counts as reserved: both figures
        out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        out["cuda_max_reserved_mb"] = round(torch.cuda.max_memory_reserved(device) / 2**20, 1)
    return out


def path_memory(suite: Suite, method: str, fast: bool, steps: int = 2) -> dict:
    """Peak memory of one path measured in its own process: in the timing process both paths' models live
    side by side and the allocators may keep one path's freed memory for the other, so its peaks are of both."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_path_memory, suite.model_dump(mode="json"), method, fast, steps).result()


def measure(suite: Suite, method: str, iters: int = 5, warmup: int = 2, repeats: int = 3, memory: bool = True,
            limits: bool = True) -> dict:
    """The speed JSON of `dfad-bench speed`. memory=False leaves out each path's peak RSS (a fresh process per
    path), limits=False the machine's matmul and conv peaks and the ratios to them: the timings alone."""
    # each path's memory first, in a process of its own, before this one holds anything (and adds to the machine's)
    rss: dict = {}
    for name in (("default", "plain") if memory else ()):
        try:
            rss[name] = path_memory(suite, method, name == "default", max(warmup, 1))
        except Exception as e:  # the timing still counts: say why this figure is missing
            rss[name] = {"peak_rss_mb": None, "peak_rss_error": f"{type(e).__name__}: {first_line(e)}"}
    env.apply_runtime(suite.runtime)
    device = env.runtime_device(suite.runtime)
    spec = get_dataset(suite.dataset)
    # weights do not change the cost: random teachers spare the training
    teacher = build_teacher_model(suite.teacher, spec.input_shape, spec.num_classes)
    paths = {"default": build(suite, method, True, device, copy.deepcopy(teacher), iters),
             "plain": build(suite, method, False, device, copy.deepcopy(teacher), iters)}
    out: dict = {"suite": suite.name, "profile": suite.profile, "method": method, "device": env.device_name(device),
                 "threads": torch.get_num_threads(), "iters": iters, "repeats": repeats,
                 "batch_size": getattr(paths["default"].p, "batch_size", None), "git_commit": env.git_commit()}
    for name, r in rss.items():
        out[name] = dict(r)
    steps = {name: stepper(m, m.ctx.cuda_graph) for name, m in paths.items()}
    times: dict[str, list[float]] = {k: [] for k in paths}
    # cudnn.benchmark is process-wide: on for the default path (unless the suite asks for determinism), off
    # for the plain one, switched before each of its steps. The CPU allocator setting (apply_runtime above)
    # is the process's environment, like its threads: both paths run with it, and the JSON records it.
    benchmark = {name: cudnn_benchmark(suite, name == "default") for name in paths}
    cudnn = torch.backends.cudnn
    for name, m in paths.items():
        cudnn.benchmark = benchmark[name]
        # a graphed path warms up past its capture, so no timed repeat pays for it
        time_steps(m, steps[name], max(warmup, getattr(steps[name], "warmup", -1) + 1))
    for _ in range(repeats):  # alternate, so drifts of the machine hit both paths alike
        for name, m in paths.items():
            cudnn.benchmark = benchmark[name]
            times[name].append(time_steps(m, steps[name], iters))
    for name, m in paths.items():
        cudnn.benchmark = benchmark[name]
        s = statistics.median(times[name])
        flops = flops_per_iter(m)
        nominal = flops_per_iter(m, nominal=True) if fused_generators(m) else flops  # one more step only if it differs
        per_iter_imgs = None
        if getattr(m, "teacher_images", None) is not None:
            before = m.teacher_images
            m.count()
            per_iter_imgs = m.teacher_images - before
        out.setdefault(name, {}).update({
            "s_per_iter": round(s, 5), "s_per_iter_all": [round(t, 5) for t in times[name]],
            "images_per_s": round(per_iter_imgs / s, 1) if per_iter_imgs else None,
            "gflop_per_iter": round(flops / 1e9, 2), "achieved_tflops": round(flops / s / 1e12, 4),
            # the models' own work per second: above achieved where the fused upsample+conv skips multiply-adds
            "nominal_gflop_per_iter": round(nominal / 1e9, 2), "nominal_tflops": round(nominal / s / 1e12, 4),
            "precision": str(m.ctx.precision or "fp32").replace("torch.", ""),
            # fused_upsample: whether a generator of this method computes it (methods without one have none to fuse)
            "channels_last": m.ctx.channels_last, "frozen_teacher": m.ctx.fast, "fused_upsample": bool(fused_generators(m)),
            "teacher_bn_folded": m.ctx.teacher_bn_folded,
            "cuda_graph": getattr(steps[name], "status", None),
            # the suite's whole schedule at this speed, evaluations not counted
            "projected_schedule_s": round(s * suite.budget.iterations, 1),
        })
        if device.type == "cuda":
            out[name]["cudnn_benchmark"] = benchmark[name]
    out["schedule_iterations"] = suite.budget.iterations
    if suite.budget.time_budget_s:  # a run sizes its schedule to this (at most schedule_iterations)
        out["time_budget_s"] = suite.budget.time_budget_s
    out["keep_freed_memory"] = suite.runtime.keep_freed_memory and env.allocator_settable()
    if device.type == "cuda":  # PyTorch's defaults, unchanged by the harness: fp32 convolutions may use TF32
        out["cuda_tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": cudnn.allow_tf32}
    out["speedup"] = round(out["plain"]["s_per_iter"] / out["default"]["s_per_iter"], 2)
    out["peak_rss_mb"] = peak_rss_mb()  # the timing process: both paths at once
    if device.type == "cuda":
        out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    if not limits:
        return out
    cl = bool(paths["default"].ctx.channels_last)
    out["matmul_peak_tflops"], out["conv_peak_tflops"] = {}, {}
    for dtype in [torch.float32] + ([torch.bfloat16] if env.native_bf16(device) else []):
        key = "bf16" if dtype == torch.bfloat16 else "fp32"
        for name, peak in (("matmul_peak_tflops", lambda: matmul_peak(device, dtype)),
                           ("conv_peak_tflops", lambda: conv_peak(device, dtype, cl))):
            try:  # a peak this machine cannot measure (memory, a kernel it lacks) costs its figure, not the timings
                out[name][key] = round(peak(), 4)
            except Exception as e:
                out.setdefault("peak_errors", {})[f"{name}.{key}"] = f"{type(e).__name__}: {first_line(e)}"
    # how far each path is from this machine's limit in its own precision (best of matmul and conv); the top-level
    # figures are the default path's
    for name in paths:
        key = "bf16" if out[name].get("precision") == "bfloat16" else "fp32"
        limit = max(out["matmul_peak_tflops"].get(key, 0), out["conv_peak_tflops"].get(key, 0))
        if out[name].get("achieved_tflops") and limit:
            out[name]["limit_tflops"] = limit
            out[name]["limit_over_achieved"] = round(limit / out[name]["achieved_tflops"], 2)
            # seconds per iteration over those the models' nominal work would take at the limit
            out[name]["limit_over_nominal"] = round(limit / out[name]["nominal_tflops"], 2)
    for k in ("limit_over_achieved", "limit_over_nominal"):
        if k in out["default"]:
            out[k] = out["default"][k]
    return out


def speed_command(suite: str, method: str = "dfad", iters: int = 5, warmup: int = 2, repeats: int = 3,
                  profile: str | None = None, overrides: list[str] | None = None, memory: bool = True,
                  limits: bool = True) -> None:
    from .cli import _load

    s = _load(suite, profile, overrides or [], announce=False)
    if method not in s.methods:
        from .errors import HarnessError
        from .registry import unknown

        raise HarnessError(unknown("method", method, s.method_names()) + f" (suite {s.name})")
    from .runner import check_models

    check_models(s)
    print(json.dumps(measure(s, method, iters, warmup, repeats, memory=memory, limits=limits)))
