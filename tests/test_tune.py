"""Optuna tuning (two workers sharing a journal file), its overlay for `run --params`, and the
submitit launcher's local executor."""
import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from harness.cli import app
from harness.config import load_suite
from harness.errors import HarnessError

# as in test_tracking: a small fp32 teacher (cached once per session), a tiny budget
from conftest import SMOKE_TEACHER as TEACHER  # noqa: E402
TINY = TEACHER + ["runtime.precision=fp32", "budget.iterations=4", "budget.eval_every=2", "methods.dfad.batch_size=8",
                  "methods.dfad.k=1"]
# a small space, so four trials take seconds
SPACE = ["search.dfad.batch_size.choices=[8,16]", "search.dfad.nz.choices=[16,32]", "search.dfad.k.high=2"]


def test_two_workers_share_a_journal_and_lose_no_trial(runs):
    import optuna

    from harness.tracking import find_run, read_run
    from harness.tune import open_storage, tune

    suite = load_suite("mnist", "smoke", TINY + SPACE + ["budget.iterations=6"])
    rec = tune(suite, "dfad", trials=4, jobs=2, runs_dir=runs, log=lambda *_: None)
    study = optuna.load_study(study_name="mnist-dfad-smoke", storage=open_storage(None, runs, "mnist-dfad-smoke"))
    trials = study.trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # none lost, none duplicated
    states = {t.state.name for t in trials}
    assert states <= {"COMPLETE", "PRUNED"} and "COMPLETE" in states
    assert sum(rec["trials"].values()) == 4
    ids = [t.user_attrs["wandb_id"] for t in trials]
    assert len(set(ids)) == 4
    for t in trials:
        run = read_run(find_run(runs, t.user_attrs["wandb_id"]))
        assert run["run"]["group"] == "mnist-dfad-smoke" and run["run"]["job_type"] == "trial"
        assert run["run"]["name"] == f"trial-{t.number}" and run["config"]["trial"] == t.number
        assert "val_acc" in run["history"][0] and "test_acc" not in run["history"][0]
        assert [r["iteration"] for r in run["history"]] == sorted(t.intermediate_values)
    # the study maximises the accuracy: best.yaml recommends the most accurate trial, not the least
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert study.best_value == max(t.value for t in trials if t.state.name == "COMPLETE")
    # two studies' workers drew their own points: the four trials are not one point repeated
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) > 1

    out = runs / "tune" / "mnist-dfad-smoke"
    assert (out / "optimization_history.png").stat().st_size > 0
    best = yaml.safe_load((out / "best.yaml").read_text())
    # its hint reruns at the size it was tuned at
    assert f"# apply with: dfad-bench run mnist --profile smoke --methods dfad --params {out / 'best.yaml'}" in \
        (out / "best.yaml").read_text()
    assert best == {"methods": {"dfad": study.best_params}}
    # (command-line overrides apply after --params, so none here)
    tuned = load_suite("mnist", "smoke", params_file=str(out / "best.yaml")).method_params("dfad")
    assert {k: getattr(tuned, k) for k in study.best_params} == study.best_params
    assert json.loads((out / "study.json").read_text())["best_value"] == study.best_value


def test_objective_never_sees_the_test_set():
    from harness.data import get_dataset
    from harness.tune import split_train

    spec = get_dataset("mnist")
    train = spec.load("train")
    fit, val = split_train(spec)
    assert len(fit) + len(val) == len(train) and abs(len(val) - len(train) // 10) <= 10  # (rounded per class)
    # every held-out image is a training image (random projections of the pixels as fingerprints), and none
    # is also fitted on
    w = torch.randint(1, 2 ** 20, (train.x[0].numel(),), generator=torch.Generator().manual_seed(1))
    sums = lambda d: (d.x.flatten(1).long() * w).sum(1) * 10 + d.y  # noqa: E731
    assert set(sums(val).tolist()) <= set(sums(train).tolist())
    assert len(set(sums(val).tolist()) & set(sums(fit).tolist())) < len(val) // 100  # (a few identical digits)
    counts, held = train.y.bincount(), val.y.bincount()
    assert ((held - counts * 0.1).abs() <= 1).all()  # 10% of each class
    again = split_train(spec)[1]
    assert torch.equal(again.x, val.x)  # every worker holds out the same images


def test_class_sorted_data_is_held_out_from_every_class():
    """An ImageFolder's training set comes sorted by class: its last 10% would be one class."""
    from harness.data import ImageTensors
    from harness.tune import split_train

    y = torch.arange(5).repeat_interleave(20)  # 5 classes x 20, sorted
    x = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 1, 2, 2).contiguous()

    class Sorted:  # what split_train uses of a dataset spec
        name = "sorted"

        def load(self, split):
            return ImageTensors(x, y, (0.5,), (0.5,))

    fit, val = split_train(Sorted())
    assert val.y.bincount().tolist() == [2] * 5 and fit.y.bincount().tolist() == [18] * 5
    assert sorted(fit.x[:, 0, 0, 0].tolist() + val.x[:, 0, 0, 0].tolist()) == list(range(100))


def test_storage_and_search_errors_are_one_line(tmp_path):
    from harness.tune import open_storage, tune

    with pytest.raises(HarnessError) as e:
        open_storage("postgresql://bob:hunter2@127.0.0.1:9/optuna", tmp_path, "s")
    assert "\n" not in str(e.value) and "hunter2" not in str(e.value) and "127.0.0.1:9" in str(e.value)
    res = CliRunner().invoke(app, ["tune", "mnist", "--method", "dfad", "--profile", "smoke", "--runs-dir",
                                   str(tmp_path), "--storage", "postgresql://bob:hunter2@127.0.0.1:9/optuna"])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "hunter2" not in res.output, res.output
    suite = load_suite("mnist", "smoke", TINY)
    with pytest.raises(HarnessError, match="no search space for kd_ori"):
        tune(suite.model_copy(update={"search": {}}), "kd_ori", 2, runs_dir=tmp_path)
    with pytest.raises(HarnessError, match="--pruner"):
        tune(suite, "dfad", 2, pruner="never", runs_dir=tmp_path)
    with pytest.raises(HarnessError, match="search.dfad.nz: not a hyperparameter|search.dfad.lr_X"):
        load_suite("mnist", "smoke", ["search.dfad.lr_X.low=1", "search.dfad.lr_X.high=2"])
    with pytest.raises(HarnessError, match="search.dfad.lr_S.*low 0.1 must be below high"):
        load_suite("mnist", "smoke", ["search.dfad.lr_S.low=0.1", "search.dfad.lr_S.high=0.01"])
    # a real range over a whole-number hyperparameter failed every trial; now it is refused up front
    with pytest.raises(HarnessError, match="search.dfad.k: low 1 and high 10.0 make a range of real numbers"):
        load_suite("mnist", "smoke", ["search.dfad.k.high=10.0"])
    for name in ("../escape", "a b/x", ".hidden"):  # a study's name becomes folders under the runs dir
        with pytest.raises(HarnessError, match="--study names a folder under <runs-dir>/tune"):
            tune(suite, "dfad", 1, study=name, runs_dir=tmp_path)
    assert not (tmp_path / "escape.journal").exists() and not (tmp_path / "escape").exists()
    res = CliRunner().invoke(app, ["tune", "mnist", "--method", "dfad", "--profile", "smoke", "--runs-dir",
                                   "/proc/nope", *TINY])
    assert res.exit_code == 2 and res.output.startswith("error: runs dir /proc/nope is not writable"), res.output


def test_a_file_that_is_not_a_journal_is_refused_and_left_alone(tmp_path):
    from harness.tune import open_storage

    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    with pytest.raises(HarnessError, match="not an Optuna journal file"):
        open_storage(str(notes), tmp_path, "s")
    assert notes.read_text() == "my notes\n"  # optuna once appended its records to it
    open_storage(str(tmp_path / "new.journal"), tmp_path, "s")  # a new file, or a journal, still opens


def test_tune_threads_follow_omp_num_threads(runs, monkeypatch):
    """tune gave every worker all cores whatever OMP_NUM_THREADS said (3x slower on a shared machine)."""
    import os

    import harness.tune
    from harness.env import thread_count

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert thread_count() == 1 and thread_count(3) == 3  # the suite's runtime.threads first
    got = []
    monkeypatch.setattr(harness.tune, "worker", lambda *a: got.append(a[-1]))  # the threads a worker is given
    suite = load_suite("mnist", "smoke", TINY)
    with pytest.raises(HarnessError, match="no trial completed"):
        harness.tune.tune(suite, "dfad", 1, runs_dir=runs, log=lambda *_: None)
    assert got == [1]
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert thread_count() == os.cpu_count()


def test_default_study_names_from_any_suite_name_are_folders(runs, tmp_path):
    """A suite file named signs.v2.yaml made a default study name the old check refused."""
    import shutil

    from harness.config import suite_path
    from harness.tune import tune

    path = tmp_path / "signs.v2.yaml"
    shutil.copy(suite_path("mnist"), path)
    res = CliRunner().invoke(app, ["tune", str(path), "--method", "dfad", "--profile", "smoke", "--trials", "1",
                                   "--runs-dir", str(runs), *TINY, *SPACE, "tracking.wandb.mode=disabled"])
    assert res.exit_code == 0, res.output
    best = runs / "tune" / "signs.v2-dfad-smoke" / "best.yaml"
    # the hint reruns what was tuned: the suite as given, its profile and the overrides (not the search's)
    hint = best.read_text().splitlines()[1]
    assert hint.startswith(f"# apply with: dfad-bench run {path} --profile smoke --methods dfad --params {best} ")
    assert "budget.iterations=4" in hint and "search." not in hint


def _sleep_long(started):
    import time

    from harness.tune import interruptible

    interruptible()  # as a tune worker does first
    started.set()
    time.sleep(120)


def test_stopped_tune_stops_its_workers():
    """SIGTERM reaches only the parent: its workers are interrupted too, not left running their trials. Also when
    the command was started with SIGINT ignored (in the background by a shell script), which workers inherit."""
    import multiprocessing as mp
    import signal
    import time

    from harness.tune import stop_workers

    ctx = mp.get_context("spawn")
    started = [ctx.Event() for _ in range(2)]
    procs = [ctx.Process(target=_sleep_long, args=(e,)) for e in started]
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for p in procs:
            p.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert all(e.wait(120) for e in started)  # sleeping, not still starting
    t0 = time.monotonic()
    stop_workers(procs, grace_s=30, own_s=2)
    assert not any(p.is_alive() for p in procs) and time.monotonic() - t0 < 30  # SIGINT did it, not the grace


def test_a_study_scored_on_another_split_is_not_extended(tmp_path):
    import optuna

    from harness.tune import open_storage, tune

    suite = load_suite("mnist", "smoke", TINY)
    name = f"{suite.name}-dfad-{suite.profile}"
    old = optuna.create_study(study_name=name, storage=open_storage(None, tmp_path, name), direction="maximize")
    old.set_user_attr("objective", "best student accuracy on the last 10% of mnist's training set")
    with pytest.raises(HarnessError, match="another validation split .* give --study a new name"):
        tune(suite, "dfad", 1, runs_dir=tmp_path)


def test_a_resumed_study_explores_new_points_and_keeps_its_config(runs, capfd):
    """Extending a study draws new points (a sampler seeded as before would repeat its first trials exactly), and
    extending it with another budget is refused: those trials would not rank against these."""
    import optuna

    from harness.tune import open_storage, tune

    suite = load_suite("mnist", "smoke", TINY + SPACE + ["tracking.wandb.mode=disabled"])
    for _ in range(2):
        tune(suite, "dfad", 2, runs_dir=runs, log=lambda *_: None)
    name = "mnist-dfad-smoke"
    trials = sorted(optuna.load_study(study_name=name, storage=open_storage(None, runs, name)).trials,
                    key=lambda t: t.number)
    lrs = [t.params["lr_S"] for t in trials]
    assert len(lrs) == 4 and len(set(lrs)) == 4, lrs
    longer = load_suite("mnist", "smoke", TINY + SPACE + ["tracking.wandb.mode=disabled", "budget.iterations=6"])
    capfd.readouterr()
    with pytest.raises(HarnessError, match=r"another config \(budget.iterations differs\).*--study a new name"):
        tune(longer, "dfad", 1, runs_dir=runs)
    assert "study" not in capfd.readouterr().err  # optuna's "Using an existing study" no longer comes first
    with pytest.raises(HarnessError, match="runtime.precision=fp32, not bf16"):
        tune(load_suite("mnist", "smoke", TINY + SPACE + ["runtime.precision=bf16"]), "dfad", 1, runs_dir=runs)
    # a study.json from before storage paths were resolved (as typed, relative) does not block its study
    record = runs / "tune" / name / "study.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "storage": "rel/typed.journal"}))
    tune(suite, "dfad", 1, runs_dir=runs, log=lambda *_: None)
    # a study of the same name in another storage would overwrite this one's best.yaml and study.json
    with pytest.raises(HarnessError, match="holds study mnist-dfad-smoke from storage journal, not sqlite"):
        tune(suite, "dfad", 1, storage=f"sqlite:///{runs}/other.db", runs_dir=runs)
    # the default journal named by its path is the same storage
    tune(suite, "dfad", 1, storage=str(runs / "tune" / f"{name}.journal"), runs_dir=runs, log=lambda *_: None)
    # the searched parameters are not part of a study's config: another batch size choice still extends it
    tune(load_suite("mnist", "smoke", TINY + SPACE + ["tracking.wandb.mode=disabled", "methods.dfad.batch_size=16"]),
         "dfad", 1, runs_dir=runs, log=lambda *_: None)


def test_workers_sharing_a_study_and_a_seed_draw_different_points_and_a_replay_the_same():
    """Each `tune` command (and each --jobs worker) loads the study with its own sampler. Seeded TPE samplers draw
    from their own streams: two started together with the same --seed gave the same first points. A trial's
    draws now come from (seed, its trial number), which the storage hands out once."""
    import math

    import optuna

    from harness.tune import trial_seeded_sampler, tune

    def study_of(seed, turns=12):  # two samplers on one storage asking in turn; 12 trials: TPE's 10 random, 2 fitted
        storage = optuna.storages.InMemoryStorage()
        optuna.create_study(study_name="s", storage=storage, direction="maximize")
        workers = [optuna.load_study(study_name="s", storage=storage, sampler=trial_seeded_sampler(seed))
                   for _ in range(2)]
        drawn = {}
        for i in range(turns):
            t = workers[i % 2].ask()
            drawn[t.number] = t.suggest_float("lr", 1e-5, 1.0, log=True)
            workers[i % 2].tell(t, -abs(math.log10(drawn[t.number]) + 3))
        return drawn

    first = study_of(7)
    assert sorted(first) == list(range(12)) and len(set(first.values())) == 12, first
    assert study_of(7) == first  # the same seed and history: the same points
    assert set(study_of(8).values()).isdisjoint(first.values())
    with pytest.raises(HarnessError, match="--seed must be between 0 and 2"):
        tune(load_suite("mnist", "smoke", TINY + SPACE), "dfad", 1, seed=-1)


def test_the_local_launcher_runs_a_window_of_jobs_with_a_share_of_the_threads(runs, monkeypatch):
    """All jobs at once would share the cores among every run: DFAD_LOCAL_PARALLEL=2 runs two at once, each with
    half the threads, and the third job starts when one of them has finished."""
    monkeypatch.setenv("DFAD_LOCAL_PARALLEL", "2")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    res = CliRunner().invoke(app, ["run", "mnist", "--profile", "smoke", "--methods", "dfad", "--seeds", "0,1,2",
                                   "--runs-dir", str(runs), "--no-report", "--launcher", "local", *TINY])
    assert res.exit_code == 0, res.output
    assert "3 runs, 2 at once (1 thread(s) each" in res.output
    folder = runs / "submitit" / "mnist"
    submitted = sorted(folder.glob("*_submitted.pkl"), key=lambda p: p.stat().st_mtime)
    finished = sorted(p.stat().st_mtime for p in folder.glob("*_result.pkl"))
    assert len(submitted) == len(finished) == 4 and list(folder.glob("*_log.out"))  # the teacher's job, 3 runs
    assert submitted[3].stat().st_mtime >= finished[1]  # the third run waited for the teacher's and a run's end
    for seed in (0, 1, 2):
        summary = json.loads((runs / "mnist" / "dfad" / f"seed-{seed}" / "summary.json").read_text())
        assert summary["status"] == "done" and summary["wandb_mode"] == "offline"
        assert "(1 threads)" in summary["device"], summary["device"]


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_local_parallel_setting_is_one_line_before_any_job(runs, monkeypatch, value):
    monkeypatch.setenv("DFAD_LOCAL_PARALLEL", value)
    res = CliRunner().invoke(app, ["run", "mnist", "--profile", "smoke", "--methods", "dfad", "--seeds", "0",
                                   "--runs-dir", str(runs), "--no-report", "--launcher", "local", *TINY])
    assert res.exit_code == 2 and f"DFAD_LOCAL_PARALLEL={value!r}" in res.output, res.output
    assert not (runs / "submitit").exists()


def test_a_launcher_job_that_died_is_a_crash_not_bad_input():
    """`run` exits 1 when a launcher job died, the teacher's job as a run's (2 is bad input's code)."""
    from types import SimpleNamespace

    from harness.launch import _gather, _teacher_acc
    from harness.runner import SuiteOutcome

    def died():
        raise RuntimeError("Job 7 has not produced any output\n(state: OUT_OF_MEMORY)")

    job = SimpleNamespace(job_id="7", result=died)
    with pytest.raises(HarnessError) as e:
        _teacher_acc(job, SimpleNamespace(folder="logs"), print)
    assert e.value.exit_code == 1 and "teacher job 7 failed ((state: OUT_OF_MEMORY))" in str(e.value)
    outcome = SuiteOutcome()
    _gather(outcome, "dfad", 0, job, "logs")
    assert outcome.crashed == outcome.failed and outcome.failed[0][2].startswith("job 7 died: (state: OUT_OF_MEMORY)")


def test_a_stop_signal_of_the_other_kind_does_not_cut_a_graceful_stop_short():
    """A launched job gets Ctrl-C from the terminal and SIGTERM from its launcher: the second kind is not the
    impatient second Ctrl-C that stops at once; the same signal again is."""
    import signal

    from harness.loop import stop_handler

    stops = []
    h = stop_handler(lambda: stops.append(1))
    h(signal.SIGINT, None)
    h(signal.SIGTERM, None)
    assert stops == [1]
    with pytest.raises(KeyboardInterrupt):
        h(signal.SIGTERM, None)
    with pytest.raises(KeyboardInterrupt):
        h(signal.SIGINT, None)


def _sigmask(pid: int, field: str) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1], 16)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc (Linux)")
def test_local_jobs_see_their_gpu_and_stop_through_their_controller(tmp_path, monkeypatch):
    """submitit hands its local jobs CUDA_VISIBLE_DEVICES="" (no GPU): each job gets one of this process's GPUs
    by the name CUDA_VISIBLE_DEVICES gives it (an index or a UUID). Its controller never takes a Ctrl-C (SIGINT
    blocked), and stop_local's SIGTERM reaches the job through it."""
    import os
    import signal
    import time

    import submitit

    from harness.launch import local_gpus, stop_local, submit_local

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f2a, 3")
    assert local_gpus("auto") == ["GPU-8f2a", "3"] and local_gpus("cuda:1") == ["3"] and local_gpus("cpu") == []
    with pytest.raises(HarnessError, match="runtime.device='cuda:2': this machine shows 2 GPU"):
        local_gpus("cuda:2")
    ex = submitit.AutoExecutor(folder=str(tmp_path), cluster="local")
    ex.update_parameters(timeout_min=5)
    ready = tmp_path / "ready"

    def job(gpu, wait):  # nested: pickled by value (the job cannot import this file)
        import os
        import time
        from pathlib import Path

        from harness.launch import _job_start

        _job_start(gpu)
        if wait:
            Path(wait).write_text(str(os.getpid()))
            time.sleep(600)
        return os.environ["CUDA_VISIBLE_DEVICES"]

    started = []
    assert [submit_local(ex, started, job, gpu, None).result() for gpu in ("GPU-8f2a", "3", None)] == \
        ["GPU-8f2a", "3", ""]
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == set()  # this process takes Ctrl-C again

    j = submit_local(ex, started, job, None, str(ready))
    for _ in range(300):
        if ready.exists():
            break
        time.sleep(0.1)
    task, ctl = int(ready.read_text()), int(j.job_id)
    assert _sigmask(ctl, "SigBlk") & (1 << (signal.SIGINT - 1))  # the controller never takes a Ctrl-C
    assert not _sigmask(task, "SigBlk") & (1 << (signal.SIGINT - 1))  # the job does
    os.kill(ctl, signal.SIGINT)
    time.sleep(0.5)
    assert not j.done()
    t0 = time.monotonic()
    stop_local([j], grace_s=30, log=lambda *_: None)
    assert j.done() and time.monotonic() - t0 < 30
    assert not Path(f"/proc/{task}").exists() and not Path(f"/proc/{ctl}").exists()


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_stopped_local_launch_checkpoints_its_runs_and_leaves_no_job(runs, how):
    """Ctrl-C in a terminal (SIGINT to every process of the group: the command, the controllers, the jobs) or
    SIGTERM to the command alone: exit 130, the run interrupted with a checkpoint written at the stop (not at
    the last evaluation), no traceback on the terminal, no process left running."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    p = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "mnist", "--profile", "smoke", "--methods",
                          "dfad", "--seeds", "0", "--runs-dir", str(runs), "--no-report", "--launcher", "local",
                          *TINY, "budget.iterations=100000", "budget.eval_every=300", "tracking.wandb.mode=disabled"],
                         cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    rd = runs / "mnist" / "dfad" / "seed-0"
    t0 = time.monotonic()
    while not (rd / "checkpoint.pt").exists() and time.monotonic() - t0 < 120:  # written at the first evaluation
        assert p.poll() is None, p.stdout.read()
        time.sleep(0.1)
    time.sleep(1.0)
    if how == "ctrl-c":
        os.killpg(p.pid, signal.SIGINT)
    else:
        p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 130 and "Traceback" not in out, out
    assert json.loads((rd / "summary.json").read_text())["status"] == "interrupted"
    assert torch.load(rd / "checkpoint.pt", weights_only=True)["iteration"] > 300
    left = subprocess.run(["pgrep", "-s", str(p.pid)], capture_output=True, text=True).stdout.split()
    assert not left, left


def test_ctrl_c_during_a_trial_is_marked_interrupted_without_a_traceback(runs, monkeypatch, capfd):
    """Optuna records the trial Ctrl-C stopped as failed and logs the KeyboardInterrupt's traceback: the harness
    marks it interrupted (the study's summary counts it so, not as a crash) and keeps the traceback off stderr."""
    import harness.loop
    from harness.tune import tune

    real, calls = harness.loop.run_loop, []

    def stopped_in_the_second_trial(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(harness.loop, "run_loop", stopped_in_the_second_trial)
    suite = load_suite("mnist", "smoke", TINY + SPACE)
    with pytest.raises(KeyboardInterrupt):
        tune(suite, "dfad", trials=3, runs_dir=runs, log=lambda *_: None)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    rec = tune(suite, "dfad", trials=1, runs_dir=runs, log=lambda *_: None)  # a rerun adds trials and sums them up
    assert rec["trials"].get("interrupted") == 1 and "fail" not in rec["trials"], rec["trials"]
    assert sum(rec["trials"].values()) == 3
