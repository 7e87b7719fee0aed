"""The fast path computes the same method as the plain loop; `speed` reports both."""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from harness.api import build_context, make_method
from harness.models import build_model


def _student_after(fast: bool, steps=3):
    torch.manual_seed(0)
    teacher, student = build_model("lenet5"), build_model("lenet5_half")
    ctx = build_context(teacher, student, (1, 32, 32), 10, seed=0, iterations=10, precision="fp32",
                        channels_last="off", fast=fast)
    m = make_method("dfad", ctx, {"batch_size": 8, "nz": 16, "ngf": 4})
    m.setup()
    for i in range(steps):
        m.step(i)
    return ctx, torch.cat([p.detach().flatten() for p in student.parameters()])


def test_fast_path_is_the_same_computation():
    plain_ctx, plain = _student_after(fast=False)
    fast_ctx, fast = _student_after(fast=True)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)
    assert all(p.requires_grad for p in plain_ctx.teacher.parameters())  # the official loop's waste
    assert not any(p.requires_grad for p in fast_ctx.teacher.parameters())
    assert all(p.grad is None for p in fast_ctx.teacher.parameters())


def test_speed_command_prints_one_json_object():
    r = subprocess.run([sys.executable, "-m", "harness.cli", "speed", "mnist", "--profile", "smoke", "--iters", "1",
                        "--repeats", "1", "--warmup", "0"], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for path in ("default", "plain"):
        assert out[path]["s_per_iter"] > 0 and out[path]["gflop_per_iter"] > 0
        assert 0 < out[path]["peak_rss_mb"] <= out["peak_rss_mb"] + 500  # alone vs both paths in one process
    assert out["plain"]["precision"] == "fp32" and out["plain"]["channels_last"] is False
    assert out["speedup"] == round(out["plain"]["s_per_iter"] / out["default"]["s_per_iter"], 2)
    assert out["matmul_peak_tflops"]["fp32"] > 0 and out["conv_peak_tflops"]["fp32"] > 0
    key = "bf16" if out["default"]["precision"] == "bfloat16" else "fp32"
    limit = max(out["matmul_peak_tflops"][key], out["conv_peak_tflops"][key])
    assert out["limit_over_achieved"] == pytest.approx(limit / out["default"]["achieved_tflops"], rel=0.02)
    # the default path fuses the generator's upsample+conv pairs: it executes fewer FLOPs than the models' own
    assert out["default"]["fused_upsample"] is True and out["plain"]["fused_upsample"] is False
    d = out["default"]
    assert d["gflop_per_iter"] < d["nominal_gflop_per_iter"] and d["achieved_tflops"] < d["nominal_tflops"]
    assert out["limit_over_nominal"] == pytest.approx(limit / d["nominal_tflops"], rel=0.02)
    # each path against the limit of its own precision: the plain loop's is fp32
    plain_limit = max(out["matmul_peak_tflops"]["fp32"], out["conv_peak_tflops"]["fp32"])
    assert out["plain"]["limit_tflops"] == plain_limit and out["default"]["limit_tflops"] == limit
    assert out["plain"]["limit_over_achieved"] == pytest.approx(plain_limit / out["plain"]["achieved_tflops"], rel=0.02)
    assert out["default"]["limit_over_achieved"] == out["limit_over_achieved"]
    # the suite's whole schedule at each path's speed
    from harness.config import load_suite

    n = load_suite("mnist", "smoke").budget.iterations
    assert out["schedule_iterations"] == n
    for path in ("default", "plain"):
        assert out[path]["projected_schedule_s"] == pytest.approx(n * out[path]["s_per_iter"], abs=0.1)
    # the process's allocator setting (both paths), where glibc lets it be set
    from harness import env

    assert out["keep_freed_memory"] is env.allocator_settable()


def test_keep_freed_memory_keeps_large_blocks_for_reuse():
    """Kept: a freed 256 MB tensor stays in the process for the next one (no fresh page faults); glibc's default
    unmaps it at once. In a fresh process: what earlier tests left in this one's heap would serve the block."""
    from harness import env

    if not env.allocator_settable() or not os.path.exists("/proc/self/statm"):
        pytest.skip("not glibc on Linux")
    code = """
import json, os, torch
from harness import env
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
dropped = {}
for keep in (False, True):
    assert env.set_allocator(keep)
    x = torch.ones(64 * 2**20)  # 256 MB, written, so resident
    before = rss_mb()
    del x
    dropped[str(keep)] = before - rss_mb()
print(json.dumps(dropped))
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    dropped = json.loads(r.stdout)
    assert dropped["False"] > 200 and dropped["True"] < 50, dropped


def test_conv_peak_counts_flops_of_the_conv():
    from harness import speed

    # a tiny conv: the figure is FLOPs / best time, so it must be positive and finite in both layouts
    for cl in (False, True):
        t = speed.conv_peak("cpu", torch.float32, cl, n=2, c=8, hw=8, reps=2)
        assert 0 < t < 1e3


@pytest.mark.parametrize("frozen", [True, False])
def test_runtime_path_switches_reach_the_run(tmp_path, frozen):
    """`runtime.frozen_teacher=false` (with fp32, channels-last off) runs the plain path through the runner,
    so accuracy can be compared path against path; the summary says which path ran."""
    from conftest import FixedTeacher, random_test_set
    from harness.config import load_suite
    from harness.progress import SuiteProgress
    from harness.runner import execute_run
    from harness.store import Store

    suite = load_suite("mnist", "smoke", ["budget.iterations=2", "budget.eval_every=2", "runtime.device=cpu",
                                          "runtime.precision=fp32", "runtime.channels_last='off'",
                                          f"runtime.frozen_teacher={str(frozen).lower()}",
                                          f"runtime.fused_upsample={str(frozen).lower()}"])
    teacher = build_model("lenet5").eval()
    rd = Store(tmp_path, suite.name).run("dfad", 0)
    execute_run(suite, "dfad", 0, rd, FixedTeacher(teacher), random_test_set((1, 32, 32)), torch.device("cpu"),
                SuiteProgress(1, live=False))
    summary = json.loads((rd.path / "summary.json").read_text())
    assert summary["status"] == "done" and summary["frozen_teacher"] is frozen
    assert summary["fused_upsample"] is frozen
    assert all(p.requires_grad is not frozen for p in teacher.parameters())


def test_git_commit_named_by_the_copier_outside_a_repository(tmp_path, monkeypatch):
    """A copied tree without .git (a lent GPU machine, a container) records the commit it was given."""
    from harness import env

    monkeypatch.setattr(env, "REPO", tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    monkeypatch.setenv("DFAD_GIT_COMMIT", "abc123")
    assert env.git_commit.__wrapped__() == "abc123"
    monkeypatch.delenv("DFAD_GIT_COMMIT")
    assert env.git_commit.__wrapped__() == "unknown"
    monkeypatch.setattr(env, "REPO", REPO)  # inside the repository the copier's name still wins: .git may be stale
    monkeypatch.setenv("DFAD_GIT_COMMIT", "abc123")
    assert env.git_commit.__wrapped__() == "abc123"
    monkeypatch.delenv("DFAD_GIT_COMMIT")
    if (REPO / ".git").exists():  # a git checkout: the commit git names
        assert len(env.git_commit.__wrapped__().split("-")[0]) == 40


def test_speed_of_a_method_without_a_generator_reports_no_fusion(mnist_data):
    """KD-ORI has no generator: nothing is fused on either path, and executed FLOPs equal the nominal ones."""
    from harness.config import load_suite
    from harness.speed import measure

    threads = torch.get_num_threads()
    try:  # measure() sets the process's threads and allocator: glibc's default allocator, threads put back
        out = measure(load_suite("mnist", "smoke", ["runtime.keep_freed_memory=false"]), "kd_ori", iters=1,
                      warmup=0, repeats=1, memory=False, limits=False)  # the timings alone: what this test reads
    finally:
        torch.set_num_threads(threads)
    for path in ("default", "plain"):
        assert out[path]["fused_upsample"] is False
        assert out[path]["gflop_per_iter"] == out[path]["nominal_gflop_per_iter"] > 0
        assert "peak_rss_mb" not in out[path] and "limit_tflops" not in out[path]
    assert "matmul_peak_tflops" not in out and out["speedup"] > 0


def test_each_path_peak_rss_is_its_own(mnist_data):
    """Each path's peak RSS is measured alone, in a fresh process: not this process's peak, and it grows with
    what the path holds."""
    from harness import speed
    from harness.config import load_suite

    if not os.path.exists("/proc/self/status"):
        pytest.skip("no /proc here")
    big = torch.ones(256 * 2**20)  # 1 GB written here: this process's peak, not the path's
    small = speed.path_memory(load_suite("mnist", "smoke"), "dfad", fast=False, steps=1)["peak_rss_mb"]
    assert small < speed.peak_rss_mb() - 800, (small, speed.peak_rss_mb())
    del big
    large = speed.path_memory(load_suite("mnist", "smoke", overrides=["methods.dfad.batch_size=2048"]), "dfad",
                              fast=False, steps=1)
    assert set(large) == {"peak_rss_mb"}  # no GPU figures on a CPU
    large = large["peak_rss_mb"]
    assert large > small + 100, (large, small)  # batch 2048 holds hundreds of MB of activations more


@pytest.fixture
def process_settings(monkeypatch):
    """apply_runtime changes process-wide settings: put them back afterwards (the allocator to glibc's default)."""
    from harness import env

    cudnn = torch.backends.cudnn
    kept = (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(), torch.get_num_threads())
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # recorded, so that teardown restores or removes it
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    yield
    cudnn.benchmark, cudnn.deterministic = kept[0], kept[1]
    torch.use_deterministic_algorithms(kept[2], warn_only=kept[3])
    torch.set_num_threads(kept[4])
    env.set_allocator(False)


def test_every_training_command_gets_the_suites_determinism(process_settings):
    """apply_runtime, which runs, teachers, tuning and the launcher's jobs all call, sets determinism: autotuned
    convolutions (cudnn.benchmark) unless the suite asks for determinism, which also covers cuBLAS."""
    import os

    from harness import env
    from harness.config import RuntimeCfg

    cudnn = torch.backends.cudnn.is_available()  # builds without cuDNN (CPU-only, macOS) have no such switch
    env.apply_runtime(RuntimeCfg(threads=torch.get_num_threads()))
    assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    assert torch.backends.cudnn.benchmark or not cudnn
    env.apply_runtime(RuntimeCfg(threads=torch.get_num_threads(), deterministic=True))
    assert torch.are_deterministic_algorithms_enabled() and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert (not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic) or not cudnn


def test_auto_precision_takes_bf16_only_where_a_gpu_computes_it(monkeypatch):
    """torch.cuda.is_bf16_supported() says True on a V100 or T4 too (bf16 emulated there, no cuDNN bf16
    convolutions); `auto` goes by compute capability 8.0 (Ampere) and later, of the run's device."""
    from harness import env

    caps = {0: (7, 0), 1: (8, 0), 2: (7, 5), 3: (9, 0)}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: caps[torch.device(d).index or 0])
    assert [env.resolve_precision("auto", torch.device("cuda", i)) for i in range(4)] == \
           [None, torch.bfloat16, None, torch.bfloat16]
    assert env.resolve_precision("bf16", torch.device("cuda", 0)) is torch.bfloat16  # asked for: given
    assert env.resolve_precision("fp32", torch.device("cuda", 3)) is None


def test_a_peak_that_cannot_be_measured_keeps_the_timings(monkeypatch, process_settings):
    """The machine's peaks come last; one that fails (out of memory, a kernel the device lacks) is named in
    `peak_errors` and the rest of the JSON, timings first, is still printed."""
    from harness import speed
    from harness.config import load_suite

    def no_conv(*a, **k):
        raise RuntimeError("no kernel for this\nsecond line")

    monkeypatch.setattr(speed, "conv_peak", no_conv)
    monkeypatch.setattr(speed, "path_memory", lambda *a, **k: {"peak_rss_mb": 1.0})  # not what this checks
    out = speed.measure(load_suite("mnist", "smoke"), "dfad", iters=1, warmup=0, repeats=1)
    assert out["default"]["s_per_iter"] > 0 and out["plain"]["s_per_iter"] > 0
    assert out["peak_errors"]["conv_peak_tflops.fp32"] == "RuntimeError: no kernel for this"
    assert out["conv_peak_tflops"] == {} and out["matmul_peak_tflops"]["fp32"] > 0
    # the limit is the peak that was measured
    assert out["plain"]["limit_tflops"] == out["matmul_peak_tflops"]["fp32"]
