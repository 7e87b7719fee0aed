"""End to end through the console script on real MNIST from DFAD_DATA: smoke profile, then a rerun
that trains nothing; bad input exits non-zero with one line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cliproc
from conftest import REPO

CLI = [sys.executable, "-m", "harness.cli"]


def cli(*args, env=None, cwd=None, fresh=False):
    """The command in its own process: forked from a server that imported harness.cli once (cliproc), or, fresh,
    `python -m harness.cli` as a user starts it."""
    e = {**os.environ, **(env or {})}  # OMP_NUM_THREADS: this test process's share of the cores (conftest)
    if fresh:
        return subprocess.run([*CLI, *args], capture_output=True, text=True, env=e, cwd=cwd or REPO, timeout=600)
    return cliproc.run(args, env=e, cwd=cwd or REPO)


def test_smoke_run_then_rerun_does_no_training(tmp_path, mnist_data):
    runs = tmp_path / "runs"
    r = cli("run", "mnist", "--profile", "smoke", "--runs-dir", str(runs), env={"DFAD_DATA": str(mnist_data)},
            fresh=True)
    assert r.returncode == 0, r.stderr[-2000:]
    for method in ("kd_ori", "dfad"):
        rd = runs / "mnist" / method / "seed-0"
        s = json.loads((rd / "summary.json").read_text())
        assert s["status"] == "done"
        for key in ("best_acc", "final_acc", "iterations", "wall_time_s", "device", "student_macs", "teacher_acc",
                    "eval_precision", "git_commit", "versions"):
            assert key in s, key
        assert s["iterations"] == 20 and 0 <= s["final_acc"] <= s["best_acc"] <= 1
        assert (rd / "config.yaml").is_file() and (rd / "checkpoint.pt").is_file() and (rd / "student.pt").is_file()
        header, *rows = (rd / "metrics.csv").read_text().splitlines()
        assert header.startswith("iteration,test_acc,elapsed_s") and len(rows) == 2
    report = runs / "mnist" / "report"
    assert {p.name for p in report.glob("table.*")} >= {"table.md", "table.tex", "table.csv"}
    assert "DFAD" in (report / "table.md").read_text()

    stamps = {p: p.stat().st_mtime_ns for p in runs.rglob("*.pt")}
    again = cli("run", "mnist", "--profile", "smoke", "--runs-dir", str(runs), "--no-report",
                env={"DFAD_DATA": str(mnist_data)})
    assert again.returncode == 0, again.stderr[-2000:]
    done = [p.parent.parent.name for p in (runs / "mnist").glob("*/seed-0/summary.json")
            if json.loads(p.read_text())["status"] == "done"]
    assert {"kd_ori", "dfad"} <= set(done)
    assert "teacher: training" not in again.stdout and " it 10:" not in again.stdout
    assert again.stdout.count("already done") == len(done)
    assert stamps == {p: p.stat().st_mtime_ns for p in runs.rglob("*.pt")}

    # a finished run is never silently reused under another config
    changed = cli("run", "mnist", "--profile", "smoke", "--runs-dir", str(runs), "budget.iterations=30",
                  env={"DFAD_DATA": str(mnist_data)})
    assert changed.returncode != 0 and "different config" in changed.stderr
    # precision changes the numbers (what the default-vs-plain parity compares); layout and threads do not
    other = cli("run", "mnist", "--profile", "smoke", "--runs-dir", str(runs), "runtime.precision=fp32",
                env={"DFAD_DATA": str(mnist_data)})
    assert other.returncode != 0 and "runtime.precision=auto, not fp32" in other.stderr
    same = cli("run", "mnist", "--profile", "smoke", "--runs-dir", str(runs), "--methods", "dfad", "--no-report",
               "runtime.channels_last=off", "runtime.threads=1", env={"DFAD_DATA": str(mnist_data)})
    assert same.returncode == 0 and "already done" in same.stdout


@pytest.mark.parametrize("args,fragment", [
    (["run", "mnsit"], "did you mean 'mnist'"),
    (["run", "mnist", "--profile", "smoke", "budget.iterations=-3"], "budget.iterations"),
    (["run", "mnist", "--profile", "smoke", "--seeds", "a,b"], "--seeds"),
    (["run", "mnist", "--profile", "smoke", "--methods", "dfda"], "did you mean 'dfad'"),
    (["validate", "mnist", "methods.dfad.lr_S=-1"], "methods.dfad.lr_S"),
    # `teacher` takes the suite's device as `run` does, and refuses what this machine cannot honour before training
    (["teacher", "mnist", "--profile", "smoke", "runtime.cuda_graph=true"], "runtime.cuda_graph=true needs a CUDA"),
    # without --profile: the note naming the profile it chose goes to stdout, after the suite loaded
    (["run", "mnist", "--methods", "dfda"], "did you mean 'dfad'"),
    (["teacher", "mnist", "teacher.checkpoint=/nonexistent/lenet.pt"], "/nonexistent/lenet.pt"),
])
def test_bad_input_is_one_line_nonzero(tmp_path, args, fragment):
    r = cli(*args, "--runs-dir", str(tmp_path)) if args[0] == "run" else cli(*args)
    assert r.returncode != 0
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], r.stderr


def test_missing_data_names_where_it_looked(tmp_path):
    r = cli("run", "mnist", "--profile", "smoke", "--runs-dir", str(tmp_path / "r"),
            env={"DFAD_DATA": str(tmp_path / "nodata"), "DFAD_DOWNLOAD": "0"})
    assert r.returncode != 0
    assert "error: dataset 'mnist' not found under" in r.stderr and str(tmp_path / "nodata") in r.stderr


def test_cli_import_leaves_torchvision_for_the_models_that_need_it():
    """torchvision costs ~1.5 s to import (it imports torch._dynamo): every command paid it before any work.
    It loads when a torchvision-based model is built, and that model is the registered one."""
    code = ("import sys, harness.cli; from harness.models import build_model; "
            "print('torchvision' in sys.modules); m = build_model('resnet18_tv', num_classes=5, width=8); "
            "print('torchvision' in sys.modules, type(m).__name__, m.fc.out_features)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "True", "TVResNet", "5"]


def test_commands_that_train_nothing_import_neither_torchvision_nor_dynamo(tmp_path):
    """torch._dynamo (~1.2 s, and torchvision's ops import it) loaded in every process: a meta-device forward,
    torch.use_deterministic_algorithms(False) and the recorded torchvision version each imported it. A command
    that trains nothing (validate, a bad input) no longer pays it; the version recorded is torchvision's own."""
    code = ("import sys; from harness.cli import main; from harness import env; sys.argv = ['dfad-bench', "
            "'validate', 'mnist', '--no-data']; print('exit', main())\n"
            "print(env.versions()['torchvision']); env.set_determinism(False)\n"
            "print(*(m in sys.modules for m in ('torch._dynamo', 'torchvision')))\n"
            "import torchvision; print(torchvision.__version__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    *_, code_line, recorded, loaded, actual = r.stdout.splitlines()
    assert code_line == "exit 0" and loaded == "False False" and recorded == actual


def test_ls_and_validate():
    r = cli("ls")
    assert r.returncode == 0 and "dfad" in r.stdout and "mnist" in r.stdout and "lenet5_half" in r.stdout
    v = cli("validate", "mnist")
    assert v.returncode == 0 and v.stdout.count("ok:") == 3


def test_validate_checks_the_data_the_runs_read(tmp_path):
    """Data that cannot be fetched (NYUv2) is an error naming where it was looked for; downloadable data
    (MNIST) is a note, and validate itself never downloads; --no-data checks the config only."""
    empty = {"DFAD_DATA": str(tmp_path / "nodata")}
    r = cli("validate", "nyuv2", "--profile", "smoke", env=empty)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "error: data missing for 2 dataset split(s): nyuv2 test" in r.stderr and str(tmp_path / "nodata") in r.stderr
    assert "data: nyuv2 train MISSING (read by teacher training, kd_ori" in r.stdout
    r = cli("validate", "mnist", "--profile", "smoke", env=empty)
    assert r.returncode == 0, r.stderr
    assert "data: usps train not under" in r.stdout and "the run downloads it (read by kd_rel)" in r.stdout
    assert not (tmp_path / "nodata").exists()  # nothing fetched
    r = cli("validate", "mnist", "--profile", "smoke", env={**empty, "DFAD_DOWNLOAD": "0"})
    assert r.returncode == 2 and "data missing for 4 dataset split(s): mnist test" in r.stderr, r.stderr
    r = cli("validate", "nyuv2", "--profile", "smoke", "--no-data", env=empty)
    assert r.returncode == 0 and "data:" not in r.stdout, r.stderr


def test_validate_needs_no_training_data_for_a_teacher_cached_in_runs_dir(runs, mnist_data):
    from conftest import SMOKE_TEACHER

    env = {"DFAD_DATA": str(mnist_data)}
    cached = cli("validate", "mnist", "--profile", "smoke", "--runs-dir", str(runs), *SMOKE_TEACHER, env=env)
    assert cached.returncode == 0, cached.stderr
    assert "teacher training" not in cached.stdout and "data: mnist test found" in cached.stdout
    assert "data: mnist train found" in cached.stdout and "(read by kd_ori)" in cached.stdout
    elsewhere = cli("validate", "mnist", "--profile", "smoke", "--runs-dir", str(runs / "other"), *SMOKE_TEACHER,
                    env=env)
    assert "data: mnist train found" in elsewhere.stdout and "(read by teacher training" in elsewhere.stdout


def test_run_exit_codes_say_whether_a_run_crashed(runs, monkeypatch):
    """A diverged run is a result (FAILED in the table, exit 0, its reason printed); a crashed one is not (exit 1)."""
    from typer.testing import CliRunner

    from conftest import SMOKE_TEACHER
    from harness.cli import app
    from harness.registry import METHODS

    base = ["run", "mnist", "--profile", "smoke", "--runs-dir", str(runs), "--no-report", *SMOKE_TEACHER,
            "tracking.wandb.mode=disabled", "budget.iterations=10", "budget.eval_every=5"]
    diverged = CliRunner().invoke(app, [*base, "--methods", "dfad", "methods.dfad.lr_S=1e30"])
    assert diverged.exit_code == 0, diverged.output[-1500:]
    assert "1 run(s) failed (dfad seed 0: " in diverged.output and "not finite" in diverged.output
    # the divergence is kept as the run's result, as a finished run is: not trained again unless --force
    summary = runs / "mnist" / "dfad" / "seed-0" / "summary.json"
    stamp = summary.stat().st_mtime_ns
    again = CliRunner().invoke(app, [*base, "--methods", "dfad", "methods.dfad.lr_S=1e30"])
    assert again.exit_code == 0 and "kept as its result" in again.output, again.output[-1500:]
    assert "1 run(s) failed (dfad seed 0: " in again.output and summary.stat().st_mtime_ns == stamp
    forced = CliRunner().invoke(app, [*base, "--methods", "dfad", "methods.dfad.lr_S=1e30", "--force"])
    assert forced.exit_code == 0 and "kept as its result" not in forced.output, forced.output[-1500:]
    assert summary.stat().st_mtime_ns != stamp and "not finite" in json.loads(summary.read_text())["reason"]

    def boom(self, it):
        raise RuntimeError("boom")

    monkeypatch.setattr(METHODS.get("random"), "step", boom)
    crashed = CliRunner().invoke(app, [*base, "--methods", "random"])
    assert crashed.exit_code == 1, crashed.output[-1500:]
    assert "1 run(s) failed (random seed 0: RuntimeError: boom)" in crashed.output
    log = runs / "mnist" / "random" / "seed-0" / "error.log"
    assert "RuntimeError: boom" in log.read_text()
    # a crash measured nothing: the next run of the suite tries it again
    stamp = log.stat().st_mtime_ns
    retried = CliRunner().invoke(app, [*base, "--methods", "random"])
    assert retried.exit_code == 1 and log.stat().st_mtime_ns != stamp, retried.output[-1500:]


def test_method_names_and_seeds_that_would_misname_folders_are_refused(tmp_path):
    suite = tmp_path / "escape.yaml"
    suite.write_text((REPO / "benchmarks" / "mnist.yaml").read_text().replace(
        "methods:\n", "methods:\n  ../escape: {method: dfad}\n", 1))
    r = cli("run", str(suite), "--profile", "smoke", "--runs-dir", str(tmp_path))
    assert r.returncode == 2 and "method name '../escape'" in r.stderr, r.stderr
    suite.write_text((REPO / "benchmarks" / "mnist.yaml").read_text().replace(
        "methods:\n", "methods:\n  report: {method: dfad}\n", 1))
    r = cli("validate", str(suite))
    assert r.returncode == 2 and "method name 'report' is reserved" in r.stderr, r.stderr
    for args, fragment in [(["--seeds", "0,0"], "each seed once"), (["--seeds=-1"], "none negative"),
                           (["methods.dfad.lr_S=inf"], "methods.dfad.lr_S: Input should be a finite number"),
                           (["--methods", "dfad", "methods.nosuch.lr=1"], "unknown method 'nosuch'")]:
        r = cli("run", "mnist", "--profile", "smoke", "--runs-dir", str(tmp_path), *args)
        assert r.returncode == 2 and fragment in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)


def test_a_new_seed_with_another_config_is_warned_about(runs):
    """Seeds of one method are averaged only when they share a config: running a new seed with other overrides
    into the same runs dir says, before training, that the table will show n/a for that method."""
    from typer.testing import CliRunner

    from conftest import SMOKE_TEACHER
    from harness.cli import app

    base = ["run", "mnist", "--profile", "smoke", "--methods", "dfad", "--runs-dir", str(runs), *SMOKE_TEACHER,
            "tracking.wandb.mode=disabled", "budget.eval_every=5", "methods.dfad.batch_size=8"]
    first = CliRunner().invoke(app, [*base, "--seeds", "0", "budget.iterations=5"])
    assert first.exit_code == 0 and "warning" not in first.output, first.output[-1500:]
    second = CliRunner().invoke(app, [*base, "--seeds", "1", "budget.iterations=10"])
    assert second.exit_code == 0, second.output[-1500:]
    assert "warning: dfad seed 0 in" in second.output and "(budget.iterations differs)" in second.output
    assert "| DFAD | 134K | n/a" in second.output and "not averaged: seed 0 and seed 1" in second.output


def test_a_stop_signal_swallowed_on_the_way_still_stops_the_command():
    """Ctrl-C landing in a finaliser during the end-of-run report was only printed by Python ("Exception
    ignored in ...") and the command went on to exit 0; the signal is remembered and the command exits 130."""
    import os
    import signal

    import click
    import typer

    from harness.cli import guarded

    @guarded
    def command():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
        except KeyboardInterrupt:
            pass  # what a finaliser does with it
        return "went on"

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises((typer.Exit, click.exceptions.Exit)) as e:
        command()
    assert e.value.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


@pytest.mark.parametrize("args,said", [
    (["speed", "mnist", "--iters", "0"], "error: Invalid value for '--iters': Input should be greater than or equal "
                                         "to 1 (see dfad-bench speed --help)"),
    (["tune", "mnist", "--method", "dfad", "--trials", "abc"], "error: Invalid value for '--trials'"),
    (["run", "mnist", "--nosuch"], "error: No such option: --nosuch (see dfad-bench run --help)"),
    (["bogus"], "error: No such command 'bogus'."),
])
def test_a_usage_error_is_one_line_like_any_bad_input(args, said):
    """click's framed box (six lines) was the one kind of bad input that was not a one-line error."""
    r = cli(*args)
    assert r.returncode == 2 and r.stderr.startswith(said) and r.stderr.count("\n") == 1, r.stderr
    assert not r.stdout


def test_help_and_no_arguments_still_show_the_commands():
    for args in ([], ["--help"]):
        r = cli(*args)
        assert r.returncode == 0 and "Usage: " in r.stdout and "tune" in r.stdout, (args, r.stderr)


def test_a_method_outside_the_suite_runs_with_methods_and_its_overrides_then_the_report(runs):
    """`--methods random methods.random.k=1` on the ablation suite (DFAD variants only): the run uses the override,
    and the whole-suite report after it takes the same override (not refused as a method outside the suite)."""
    from typer.testing import CliRunner

    from conftest import SMOKE_TEACHER
    from harness.cli import app

    r = CliRunner().invoke(app, ["run", "ablation-loss", "--profile", "smoke", "--methods", "random", "--seeds", "0",
                                 "--runs-dir", str(runs), *SMOKE_TEACHER, "methods.random.batch_size=8",
                                 "methods.random.k=1", "budget.iterations=2", "budget.eval_every=2",
                                 "tracking.wandb.mode=disabled"])
    assert r.exit_code == 0, r.output
    assert "| RANDOM |" in r.output  # the report after the run
    config = (runs / "ablation-loss" / "random" / "seed-0" / "config.yaml").read_text()
    assert "k: 1" in config and "batch_size: 8" in config


def test_once_interrupted_the_command_winds_down_without_ending_by_the_signal(monkeypatch):
    """After a Ctrl-C stopped the command (exit 130), another one during the process's exit (W&B's exit hooks)
    is ignored: it once ended the process by SIGINT (status -2), with a traceback."""
    import signal

    from harness import cli as harness_cli

    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(harness_cli, "app", lambda standalone_mode: 0)
    assert harness_cli.main() == 0 and signal.getsignal(signal.SIGINT) is before  # a finished command: untouched
    monkeypatch.setattr(harness_cli, "app", lambda standalone_mode: 130)
    try:
        assert harness_cli.main() == 130 and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
