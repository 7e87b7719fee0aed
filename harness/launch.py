"""`dfad-bench run --launcher slurm|local`: a suite's (method, seed) runs as one submitit job array.

The teacher is trained (or found in the cache) by a first job, so the array's jobs never race to train
it. Slurm settings come from the environment: DFAD_SLURM_PARTITION, DFAD_SLURM_GPUS (default 1),
DFAD_SLURM_CPUS (default 4), DFAD_SLURM_PARALLEL (array tasks at once), DFAD_LAUNCH_TIMEOUT_MIN.
`--launcher local` runs DFAD_LOCAL_PARALLEL jobs at once (default: one per visible GPU, else one), each with its
share of the CPU threads and its own GPU.
"""
from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

from .config import Suite
from .errors import HarnessError
from .runner import SuiteOutcome, check_finished_runs, check_models, planned_runs
from .store import Store


def _job_signals() -> None:
    """A local job's controller ignores SIGINT (see submit_local), and the job inherits that: Ctrl-C and SIGTERM
    stop a job as they stop `dfad-bench run` (a run's loop checkpoints first)."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)


def _teacher_job(suite_dump: dict, runs_dir: str) -> float:
    import methods  # noqa: F401

    _job_signals()

    from . import env
    from .teacher import ensure_teacher

    suite = Suite.model_validate(suite_dump)
    env.apply_runtime(suite.runtime)
    return ensure_teacher(suite, Path(runs_dir), env.resolve_device(suite.runtime.device)).acc


def _run_job(suite_dump: dict, runs_dir: str, force: bool, method: str, seed: int) -> SuiteOutcome:
    import methods  # noqa: F401

    _job_signals()

    from .runner import run_suite
    from .tracking import trackers

    suite = Suite.model_validate({**suite_dump, "methods": {method: suite_dump["methods"][method]}, "seeds": [seed]})
    return run_suite(suite, runs_dir, force, callbacks=trackers(suite, runs_dir))


def executor(kind: str, folder: Path, suite: Suite):
    import submitit

    if kind not in ("slurm", "local"):
        raise HarnessError(f"--launcher {kind!r}: choose slurm or local")
    try:
        ex = submitit.AutoExecutor(folder=str(folder), cluster=kind)
    except RuntimeError as e:  # e.g. no srun on this machine
        raise HarnessError(f"--launcher {kind}: {str(e).splitlines()[0]}") from None
    timeout = int(os.environ.get("DFAD_LAUNCH_TIMEOUT_MIN", 24 * 60))
    ex.update_parameters(timeout_min=timeout, name=f"dfad-{suite.name}")
    if kind == "slurm":
        extra = {"slurm_partition": os.environ.get("DFAD_SLURM_PARTITION"),
                 "slurm_array_parallelism": int(os.environ.get("DFAD_SLURM_PARALLEL", 64)),
                 "gpus_per_node": int(os.environ.get("DFAD_SLURM_GPUS", 1)),
                 "cpus_per_task": int(os.environ.get("DFAD_SLURM_CPUS", 4))}
        ex.update_parameters(**{k: v for k, v in extra.items() if v is not None})
    return ex


def launch(suite: Suite, runs_dir: str | Path, force: bool, kind: str, log=print) -> SuiteOutcome:
    """Submit, wait, and gather one outcome, as run_suite would have returned it."""
    runs_dir = Path(runs_dir).resolve()  # jobs may start in another working directory
    store = Store(runs_dir, suite.name)
    store.ensure_writable()
    check_models(suite)  # as run_suite: a missing checkpoint is named before finished runs are compared
    check_finished_runs(suite, store, force)
    gpus = visible_gpus() if kind == "local" else []
    parallel = local_parallel(gpus) if kind == "local" else 0  # a bad setting named before any job starts
    ex = executor(kind, runs_dir / "submitit" / suite.name, suite)
    dump = suite.model_dump(mode="json")
    job = (submit_local(ex, gpus[0] if gpus else None, _teacher_job, dump, str(runs_dir)) if kind == "local"
           else ex.submit(_teacher_job, dump, str(runs_dir)))
    log(f"{kind}: teacher job {job.job_id}")
    try:
        log(f"teacher test acc {job.result():.4f}")
    except KeyboardInterrupt:
        if kind == "local":
            stop_local([job])
        raise
    except Exception as e:
        raise HarnessError(f"teacher job {job.job_id} failed ({str(e).strip().splitlines()[-1][:200]}); "
                           f"logs in {ex.folder}") from None
    runs = planned_runs(suite)
    if kind == "local":
        return _local_window(ex, suite, dump, runs_dir, force, runs, gpus, parallel, log)
    n = len(runs)
    jobs = ex.map_array(_run_job, [dump] * n, [str(runs_dir)] * n, [force] * n, [m for m, _ in runs],
                        [s for _, s in runs])
    log(f"{kind}: job array {jobs[0].job_id.split('_')[0] if jobs else '-'} with {n} runs; logs in {ex.folder}")
    outcome = SuiteOutcome()
    for (method, seed), j in zip(runs, jobs):
        _gather(outcome, method, seed, j, ex.folder)
    return outcome


def _gather(outcome: SuiteOutcome, method: str, seed: int, job, folder) -> None:
    try:
        outcome.merge(job.result())
    except Exception as e:
        entry = (method, seed, f"job {job.job_id} died: {str(e).strip().splitlines()[-1][:200]}; logs in {folder}")
        outcome.failed.append(entry)
        outcome.crashed.append(entry)


def visible_gpus() -> list[str]:
    """This process's GPUs as CUDA_VISIBLE_DEVICES names them (indices or UUIDs)."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [d.strip() for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def local_parallel(gpus: list[str]) -> int:
    raw = os.environ.get("DFAD_LOCAL_PARALLEL", "").strip()
    if not raw:
        return max(1, len(gpus))
    if not raw.isdigit() or int(raw) < 1:
        raise HarnessError(f"DFAD_LOCAL_PARALLEL={raw!r}: give a whole number of jobs at once, at least 1")
    return int(raw)


def gpu_setup(gpu: str | None) -> list[str]:
    """The shell line before a local job's controller: submitit's local jobs get CUDA_VISIBLE_DEVICES="" (no GPU)
    unless told otherwise. A name may be an index or a UUID, so it goes through the shell, not submitit's
    integer-only `visible_gpus`."""
    return [] if gpu is None else [f"export CUDA_VISIBLE_DEVICES={shlex.quote(gpu)}"]


def submit_local(ex, gpu: str | None, fn, *args):
    """A local job whose controller ignores SIGINT (it inherits that from this process at its start): on Ctrl-C
    it would otherwise print a traceback, signal its job a second time and kill it a second later, before the
    job's loop has written its checkpoint. This process stops the jobs instead (stop_local)."""
    import signal

    ex.update_parameters(local_setup=gpu_setup(gpu))
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return ex.submit(fn, *args)
    finally:
        signal.signal(signal.SIGINT, previous)


def controller_pid(pid: int) -> int:
    """A local job's id is the pid submitit started: its controller, or the shell that runs the setup line
    before it (Linux: found among the shell's children)."""
    def is_controller(p) -> bool:  # `python -m submitit.local._local`; the shell only names it inside its -c string
        try:
            return b"submitit.local._local" in Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False

    if is_controller(pid) or not Path("/proc").is_dir():
        return pid
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and is_controller(stat.parent.name):
            return int(stat.parent.name)
    return pid


def stop_local(jobs, own_s: float = 10.0, grace_s: float = 120.0) -> None:
    """After a stop of this process: local jobs still running after own_s (Ctrl-C in a terminal reached them too)
    get SIGTERM through their controllers, which pass it on; each then checkpoints and exits."""
    import signal

    def wait(s):
        deadline = time.monotonic() + s
        while any(not j.done() for j in jobs) and time.monotonic() < deadline:
            time.sleep(0.2)

    wait(own_s)
    for j in jobs:
        if not j.done():
            try:
                os.kill(controller_pid(int(j.job_id)), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass
    wait(grace_s)


def _local_window(ex, suite: Suite, dump: dict, runs_dir: Path, force: bool, runs, gpus: list[str], parallel: int,
                  log) -> SuiteOutcome:
    """Local jobs a window at a time (all at once would share the cores and one GPU among every run), each
    with its share of the threads and, where there are GPUs, one of them."""
    from . import env

    parallel = min(parallel, max(1, len(runs)))
    threads = max(1, env.thread_count(suite.runtime.threads) // parallel)
    dump = {**dump, "runtime": {**dump["runtime"], "threads": threads}}
    shared = "" if not gpus else ", one GPU each" if parallel <= len(gpus) else f", {len(gpus)} GPU(s) in turn"
    log(f"local: {len(runs)} runs, {parallel} at once ({threads} thread(s) each{shared}); logs in {ex.folder}")
    outcome, todo, running = SuiteOutcome(), list(runs), {}  # slot -> (method, seed, job)
    try:
        while todo or running:
            for slot in [k for k in range(parallel) if k not in running][:len(todo)]:
                method, seed = todo.pop(0)
                running[slot] = (method, seed, submit_local(ex, gpus[slot % len(gpus)] if gpus else None, _run_job,
                                                            dump, str(runs_dir), force, method, seed))
            for slot, (method, seed, job) in list(running.items()):
                if job.done():
                    _gather(outcome, method, seed, job, ex.folder)
                    del running[slot]
            if running:
                time.sleep(0.5)
    except KeyboardInterrupt:
        stop_local([job for _, _, job in running.values()])
        raise
    return outcome
