"""Nothing lost: a SIGKILLed run resumes from its checkpoint, Ctrl-C checkpoints and exits 130,
two processes on one suite run each run once."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import cliproc
from conftest import REPO

BASE = ["--profile", "smoke", "--methods", "dfad", "budget.iterations=160", "budget.eval_every=10",
        "runtime.deterministic=true", "--no-report"]


def start(runs, *extra, env=None):
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "mnist", *BASE, "--runs-dir", str(runs),
                             *extra], cwd=REPO, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_rows(metrics: Path, n: int, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if metrics.exists() and len(metrics.read_text().splitlines()) > n:
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    raise AssertionError("run made no progress")


def student_of(runs):
    return torch.load(runs / "mnist" / "dfad" / "seed-0" / "student.pt", weights_only=True)


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, mnist_data):
    env = {"DFAD_DATA": str(mnist_data)}
    # killed a third in, 20 iterations before the end; W&B off: what is tested is the checkpoint (W&B's part of a
    # resume, two linked runs, is test_tracking's)
    short = ("budget.iterations=30", "budget.eval_every=5", "tracking.wandb.mode=disabled")
    a = tmp_path / "a"
    p = start(a, *short, env=env)
    rd = a / "mnist" / "dfad" / "seed-0"
    wait_for_rows(rd / "metrics.csv", 2, p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_at = torch.load(rd / "checkpoint.pt", weights_only=True)["iteration"]
    assert 0 < killed_at < 30

    again = start(a, *short, env=env)
    out = again.communicate(timeout=300)[0]
    assert again.returncode == 0, out
    assert f"resuming at {killed_at}" in out
    s = json.loads((rd / "summary.json").read_text())
    assert s["status"] == "done" and s["iterations"] == 30 and s["resumed_from"] == killed_at
    iters = [int(line.split(",")[0]) for line in (rd / "metrics.csv").read_text().splitlines()[1:]]
    assert iters == list(range(5, 31, 5))  # the history continues from the checkpoint, no gap, no repeat
    # the time per iteration covers both sessions: the checkpoint carried the first one's training time
    rows = list(csv.DictReader((rd / "metrics.csv").open()))
    before = float(next(r for r in rows if int(r["iteration"]) == killed_at)["train_time_s"])
    assert s["train_time_s"] > before > 0
    # both rounded in the summary: train_time_s to 0.01 s (so +-0.005 / 30 here), s_per_iter to 1e-4 s
    assert s["s_per_iter"] == pytest.approx(s["train_time_s"] / 30, abs=0.005 / 30 + 5e-5)

    # an uninterrupted run with the same teacher ends with the same student, bit for bit
    teacher = next((a / "teachers").glob("*/teacher.pt"))
    b = tmp_path / "b"
    ref = start(b, *short, f"teacher.checkpoint={teacher}", env=env)
    assert ref.wait(timeout=300) == 0
    for k, v in student_of(b).items():
        assert torch.equal(v, student_of(a)[k]), k


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_checkpoints_and_exits_130(tmp_path, mnist_data, sig):
    runs = tmp_path / "r"
    p = start(runs, "budget.iterations=100000", "budget.eval_every=1000", env={"DFAD_DATA": str(mnist_data)})
    rd = runs / "mnist" / "dfad" / "seed-0"
    t0 = time.time()
    while not (rd / "summary.json").exists() and time.time() - t0 < 120:
        time.sleep(0.1)
    time.sleep(3.0)  # some iterations (a few ms each) after the run starts, with room for a busy machine's first one
    p.send_signal(sig)
    out = p.communicate(timeout=60)[0]
    assert p.returncode == 130, out
    state = torch.load(rd / "checkpoint.pt", weights_only=True)
    assert 0 < state["iteration"] < 1000  # saved between evaluations, at the moment of the interrupt
    assert json.loads((rd / "summary.json").read_text())["status"] == "interrupted"


def test_two_processes_run_each_run_once(tmp_path, mnist_data):
    runs = tmp_path / "r"
    env = {"DFAD_DATA": str(mnist_data)}
    extra = ["--seeds", "0,1,2", "budget.iterations=40", "tracking.wandb.mode=disabled"]  # the claims are the store's
    procs = [start(runs, *extra, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    ran = [line for out in outs for line in out.splitlines() if line.strip().startswith("dfad seed") and ": done" in line]
    assert sorted(ran) == sorted({*ran}) and len(ran) == 3, outs  # each seed trained by exactly one process
    for seed in range(3):
        assert json.loads((runs / "mnist" / "dfad" / f"seed-{seed}" / "summary.json").read_text())["status"] == "done"


def test_chance_accuracy_for_too_long_fails_the_run(tmp_path, mnist_data):
    # lr_S = 1e-9 leaves the student where it started: at chance
    r = cliproc.run(["run", "mnist", *BASE, "--runs-dir", tmp_path, "budget.iterations=40", "budget.chance_evals=3",
                     "methods.dfad.lr_S=1e-9"], env={**os.environ, "DFAD_DATA": str(mnist_data), "OMP_NUM_THREADS": "1"},
                    cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr  # the suite goes on
    s = json.loads((tmp_path / "mnist" / "dfad" / "seed-0" / "summary.json").read_text())
    assert s["status"] == "failed" and "chance" in s["reason"]


def test_checkpoint_made_at_another_precision_is_not_resumed(tmp_path):
    """A paused plain-path (fp32) run is not continued in bf16 or vice versa: the run restarts, and says why."""
    from harness.loop import CHECKPOINT_VERSION
    from harness.runner import load_resume_state
    from harness.store import Store

    rd = Store(tmp_path, "mnist").run("dfad", 0)
    rd.path.mkdir(parents=True)
    torch.save({"version": CHECKPOINT_VERSION, "fingerprint": "abc", "iteration": 7}, rd.checkpoint)
    fp32, auto = {"runtime": {"precision": "fp32"}}, {"runtime": {"precision": "auto"}}
    said = []
    assert load_resume_state(rd, "abc", said.append, fp32, fp32)["iteration"] == 7
    assert load_resume_state(rd, "abc", said.append, {"runtime": {"precision": "fp32", "threads": 1}}, fp32)
    assert not said
    assert load_resume_state(rd, "abc", said.append, auto, fp32) is None
    assert len(said) == 1 and "runtime.precision=fp32, not auto" in said[0]
    # another config's checkpoint (an lr_S override since) is not continued either
    assert load_resume_state(rd, "other", said.append, fp32, fp32) is None
    assert len(said) == 2 and "another config" in said[1]


@pytest.mark.parametrize("every_s", [0.0, 1e9])
def test_checkpoints_at_evaluations_at_most_as_often_as_asked(tmp_path, every_s):
    """0: a checkpoint at every evaluation. Otherwise the first evaluation and the last iteration write one,
    and the evaluations between do not when less than checkpoint_every_s has passed."""
    from harness.api import build_context, make_method
    from harness.loop import run_loop
    from harness.models import build_model
    from conftest import random_test_set

    torch.manual_seed(0)
    ctx = build_context(build_model("lenet5"), build_model("lenet5_half"), (1, 32, 32), 10, 0, 40, "cpu", "fp32",
                        "off")
    m = make_method("dfad", ctx, {"batch_size": 4, "nz": 8, "ngf": 4, "k": 1})
    m.setup()
    path = tmp_path / "checkpoint.pt"
    seen = []
    run_loop(m, random_test_set((1, 32, 32)), 40, 10, checkpoint=path, checkpoint_every_s=every_s,
             on_eval=lambda row: seen.append((row["iteration"], torch.load(path, weights_only=True)["iteration"])))
    expect = [(10, 10), (20, 20), (30, 30), (40, 40)] if every_s == 0 else [(10, 10), (20, 10), (30, 10), (40, 40)]
    assert seen == expect


def test_allocator_setting_changes_no_result(tmp_path, mnist_data):
    """runtime.keep_freed_memory only changes where memory comes from: the same run ends with the same student, bit
    for bit, with it on and off. Batch 256 and ngf 64 give the generator activations over glibc's 32 MB mmap
    threshold, so the setting matters here (fresh zeroed pages off, reused heap memory on)."""
    env = {"DFAD_DATA": str(mnist_data)}
    extra = ["--profile", "smoke", "budget.iterations=2", "budget.eval_every=1", "methods.dfad.batch_size=256",
             "methods.dfad.ngf=64", "tracking.wandb.mode=disabled"]  # the second iteration runs in memory the first freed
    for keep in ("true", "false"):
        p = start(tmp_path / keep, *extra, f"runtime.keep_freed_memory={keep}", env=env)
        out = p.communicate(timeout=300)[0]
        assert p.returncode == 0, out
        if keep == "true":  # the teacher, trained once
            extra.append(f"teacher.checkpoint={next((tmp_path / 'true' / 'teachers').glob('*/teacher.pt'))}")
    on, off = student_of(tmp_path / "true"), student_of(tmp_path / "false")
    for k, v in on.items():
        assert torch.equal(v, off[k]), k


def test_store_files_follow_the_umask_and_odd_summaries_read_as_none(tmp_path):
    """Atomic writes go through mkstemp, whose files are 0600: a shared runs dir would hide them from the group."""
    import os

    from harness.store import atomic_write, read_json

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.json", "[1, 2]")
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
    assert read_json(tmp_path / "a.json") is None  # valid JSON, but not the object a summary is
    (tmp_path / "b.json").write_bytes(b"\xff\xfe")
    assert read_json(tmp_path / "b.json") is None


def test_a_damaged_store_is_repaired_or_named(runs):
    """Files a finished run lost are rebuilt from its checkpoint (nothing trained again); a summary without its
    numbers likewise; a lost config.yaml is named, not called a different config; a teacher record without its
    accuracy is retrained, not a KeyError; a report of all that prints tables."""
    from typer.testing import CliRunner

    from conftest import SMOKE_TEACHER
    from harness.cli import app

    args = ["run", "mnist", "--profile", "smoke", "--methods", "dfad", "--runs-dir", str(runs), "--no-report",
            *SMOKE_TEACHER, "tracking.wandb.mode=disabled", "budget.iterations=10", "budget.eval_every=5"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    rd = runs / "mnist" / "dfad" / "seed-0"
    summary, metrics, student = (json.loads((rd / "summary.json").read_text()), (rd / "metrics.csv").read_text(),
                                 (rd / "student.pt").read_bytes())
    (rd / "student.pt").unlink(), (rd / "metrics.csv").unlink()
    (rd / "summary.json").write_text(json.dumps({**summary, "best_acc": "lots"}))
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert ("finished, but its summary.json has no best_acc/final_acc; rebuilding it from the run's checkpoint"
            in again.output)
    repaired = json.loads((rd / "summary.json").read_text())
    assert repaired["best_acc"] == summary["best_acc"] and (rd / "metrics.csv").read_text() == metrics
    (rd / "s.pt").write_bytes(student)
    a, b = (torch.load(p, weights_only=True) for p in (rd / "student.pt", rd / "s.pt"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    (rd / "s.pt").unlink()
    assert "already done" in CliRunner().invoke(app, args).output  # and now it is whole
    (rd / "config.yaml").unlink()
    lost = CliRunner().invoke(app, args)
    assert lost.exit_code == 2 and "its config.yaml is missing" in lost.output, lost.output
    for teacher in (runs / "teachers").glob("*/summary.json"):
        teacher.write_text(json.dumps({k: v for k, v in json.loads(teacher.read_text()).items() if k != "test_acc"}))
    (runs / "mnist" / "teacher" / "summary.json").write_text(json.dumps({"test_acc": None}))
    report = CliRunner().invoke(app, ["report", "mnist", "--runs-dir", str(runs), "--no-plots"])
    assert report.exit_code == 0 and "the teacher's summary.json has no test_acc" in report.output, report.output


def test_a_run_finished_meanwhile_with_another_config_is_not_taken_as_done(runs, monkeypatch):
    """Between the startup check and its turn, another process (other overrides, same runs dir) finished a run:
    it is not skipped as "already done" under this config, and the command says so and exits 1."""
    from typer.testing import CliRunner

    import harness.runner
    from conftest import SMOKE_TEACHER
    from harness.cli import app

    args = ["run", "mnist", "--profile", "smoke", "--methods", "dfad", "--runs-dir", str(runs), "--no-report",
            *SMOKE_TEACHER, "tracking.wandb.mode=disabled", "budget.iterations=10", "budget.eval_every=5"]
    assert CliRunner().invoke(app, args).exit_code == 0
    monkeypatch.setattr(harness.runner, "check_finished_runs", lambda *a: None)  # as if it ran before the other
    other = CliRunner().invoke(app, [*args, "methods.dfad.lr_S=0.2"])
    assert other.exit_code == 1, other.output
    assert "dfad seed 0: finished meanwhile by another process:" in other.output
    assert "params.lr_S differs" in other.output and "already done" not in other.output


def test_sigterm_while_the_teacher_trains_stops_like_ctrl_c_and_the_teacher_resumes(tmp_path, mnist_data):
    """SIGTERM (a batch scheduler's stop) while the teacher trains: exit 130 with the resume hint, the finished
    epochs kept; the rerun goes on from them. Once every run is finished, a lost teacher cache is not retrained."""
    e = {**os.environ, "OMP_NUM_THREADS": "1", "DFAD_DATA": str(mnist_data), "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", "harness.cli", "run", "mnist", "--profile", "smoke", "--methods", "dfad",
           "--runs-dir", str(tmp_path), "--no-report", "teacher.recipe.epochs=3"]
    p = subprocess.Popen(cmd, cwd=REPO, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = ""
    while "teacher epoch 1/3" not in seen:
        line = p.stdout.readline()
        assert line or p.poll() is None, seen
        seen += line
    p.send_signal(signal.SIGTERM)
    out = seen + p.communicate(timeout=120)[0]
    assert p.returncode == 130, out
    assert "interrupted: finished runs and checkpoints are kept; rerun to resume" in out
    assert len(list((tmp_path / "teachers").glob("*/training.pt"))) == 1
    again = subprocess.run(cmd, cwd=REPO, env=e, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "teacher: resuming after epoch" in again.stdout and "teacher epoch 1/3" not in again.stdout
    assert not list((tmp_path / "teachers").glob("*/training.pt")) and list((tmp_path / "teachers").glob("*/teacher.pt"))
    import shutil
    shutil.rmtree(tmp_path / "teachers")
    rd = tmp_path / "mnist" / "dfad" / "seed-0"
    (rd / "student.pt").unlink(), (rd / "checkpoint.pt").unlink()  # nothing to rebuild it from: kept as it is
    third = subprocess.run(cmd, cwd=REPO, env=e, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and "teacher: not needed, every run is finished" in third.stdout, third.stdout
    assert "kept as it is" in third.stdout and not (tmp_path / "teachers").exists()
