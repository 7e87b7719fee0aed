"""`dfad-bench run --launcher slurm|local`: a suite's (method, seed) runs as submitit jobs.

The teacher is trained (or found in the cache) by a first job, so the runs' jobs never race to train it.
Slurm settings come from the environment: DFAD_SLURM_PARTITION, DFAD_SLURM_GPUS (default 1),
DFAD_SLURM_CPUS (default 4), DFAD_SLURM_PARALLEL (array tasks at once), DFAD_LAUNCH_TIMEOUT_MIN.
`--launcher local` runs DFAD_LOCAL_PARALLEL jobs at once (default: one per visible GPU, else one), each with its
share of the CPU threads and its own GPU.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from .config import Suite
from .errors import HarnessError, JobDiedError
from .loop import stop_handler
from .runner import SuiteOutcome, check_finished_runs, check_models, planned_runs
from .store import Store


def _raise():
    raise KeyboardInterrupt


def _job_start(gpu: str | None) -> None:
    """First thing in a local job, before anything starts CUDA: its GPU (submitit gives local jobs
    CUDA_VISIBLE_DEVICES="", no GPU), and Ctrl-C and SIGTERM stopping the job as they stop `dfad-bench run` (a
    run's loop checkpoints first). SIGINT arrives blocked (see submit_local): a Ctrl-C pressed while the job
    started is delivered here."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "local":  # slurm: submitit's own signal handling stands
        return
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    handler = stop_handler(_raise)
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _teacher_job(suite_dump: dict, runs_dir: str, gpu: str | None = None) -> float:
    _job_start(gpu)
    import methods  # noqa: F401

    from . import env
    from .teacher import ensure_teacher

    suite = Suite.model_validate(suite_dump)
    env.apply_runtime(suite.runtime)
    return ensure_teacher(suite, Path(runs_dir), env.runtime_device(suite.runtime)).acc


def _run_job(suite_dump: dict, runs_dir: str, force: bool, method: str, seed: int, gpu: str | None = None) -> SuiteOutcome:
    _job_start(gpu)
    import methods  # noqa: F401

    from .runner import run_suite
    from .tracking import trackers

    suite = Suite.model_validate({**suite_dump, "methods": {method: suite_dump["methods"][method]}, "seeds": [seed]})
    return run_suite(suite, runs_dir, force, callbacks=trackers(suite, runs_dir))


def env_int(name: str, default: int, least: int = 1) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < least:
        raise HarnessError(f"{name}={raw!r}: give a whole number, at least {least}")
    return int(raw)


def executor(kind: str, folder: Path, suite: Suite):
    import submitit

    if kind not in ("slurm", "local"):
        raise HarnessError(f"--launcher {kind!r}: choose slurm or local")
    timeout = env_int("DFAD_LAUNCH_TIMEOUT_MIN", 24 * 60)
    extra = {}
    if kind == "slurm":
        extra = {"slurm_partition": os.environ.get("DFAD_SLURM_PARTITION"),
                 "slurm_array_parallelism": env_int("DFAD_SLURM_PARALLEL", 64),
                 "gpus_per_node": env_int("DFAD_SLURM_GPUS", 1, least=0),
                 "cpus_per_task": env_int("DFAD_SLURM_CPUS", 4)}
    try:
        ex = submitit.AutoExecutor(folder=str(folder), cluster=kind)
    except RuntimeError as e:  # e.g. no srun on this machine
        raise HarnessError(f"--launcher {kind}: {str(e).splitlines()[0]}") from None
    ex.update_parameters(timeout_min=timeout, name=f"dfad-{suite.name}")
    ex.update_parameters(**{k: v for k, v in extra.items() if v is not None})
    return ex


def visible_gpus() -> list[str]:
    """This process's GPUs as CUDA_VISIBLE_DEVICES names them (indices or UUIDs)."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [d.strip() for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def local_gpus(device: str) -> list[str]:
    """The GPUs local jobs take in turn: none for `cpu` (or without GPUs), the one `cuda:N` names, else all."""
    gpus = [] if device == "cpu" else visible_gpus()
    if gpus and device.startswith("cuda:"):
        n = device.split(":", 1)[1]
        if not n.isdigit() or int(n) >= len(gpus):
            raise HarnessError(f"runtime.device={device!r}: this machine shows {len(gpus)} GPU(s)")
        gpus = [gpus[int(n)]]
    return gpus


def submit_local(ex, started: list, fn, *args):
    """Start a local job with SIGINT blocked, which its controller and its job inherit: the controller never
    takes a Ctrl-C (it would print a traceback, signal its job a second time and kill it a second later, before
    the job's loop has written its checkpoint); the job unblocks it once its handler is in place (_job_start), and
    this process once the job is in `started`, so a Ctrl-C pressed meanwhile is late, not lost."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        started.append(ex.submit(fn, *args))
        return started[-1]
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def stop_local(jobs, grace_s: float = 120.0, log=print) -> None:
    """After a stop of this process: SIGTERM to every local job still running, through its controller (a local
    job's id is the controller's pid), which passes it on; a job that Ctrl-C reached already goes on with its
    stop (stop_handler). Then wait for them, and name any still running."""
    running = [j for j in jobs if not j.done()]
    for j in running:
        try:
            os.kill(int(j.job_id), signal.SIGTERM)
        except (ProcessLookupError, ValueError):
            pass
    deadline = time.monotonic() + grace_s
    while any(not j.done() for j in running) and time.monotonic() < deadline:
        time.sleep(0.2)
    if left := [j.job_id for j in running if not j.done()]:
        log(f"warning: local job(s) {', '.join(left)} still running after {grace_s:.0f} s; they stop at their "
            f"next checkpoint, or kill them")


def launch(suite: Suite, runs_dir: str | Path, force: bool, kind: str, log=print) -> SuiteOutcome:
    """Submit, wait, and gather one outcome, as run_suite would have returned it."""
    runs_dir = Path(runs_dir).resolve()  # jobs may start in another working directory
    store = Store(runs_dir, suite.name)
    store.ensure_writable()
    check_models(suite)  # as run_suite: a missing checkpoint is named before finished runs are compared
    check_finished_runs(suite, store, force)
    if kind == "local":  # bad settings named before anything is made
        gpus, parallel = local_gpus(suite.runtime.device), env_int("DFAD_LOCAL_PARALLEL", 0)
    ex = executor(kind, runs_dir / "submitit" / suite.name, suite)
    dump = suite.model_dump(mode="json")
    if kind == "local":
        return _local(ex, suite, dump, runs_dir, force, gpus, parallel, log)
    job = ex.submit(_teacher_job, dump, str(runs_dir))
    log(f"{kind}: teacher job {job.job_id}")
    _teacher_acc(job, ex, log)
    runs = planned_runs(suite)
    n = len(runs)
    jobs = ex.map_array(_run_job, [dump] * n, [str(runs_dir)] * n, [force] * n, [m for m, _ in runs],
                        [s for _, s in runs])
    log(f"{kind}: job array {jobs[0].job_id.split('_')[0] if jobs else '-'} with {n} runs; logs in {ex.folder}")
    outcome = SuiteOutcome()
    for (method, seed), j in zip(runs, jobs):
        _gather(outcome, method, seed, j, ex.folder)
    return outcome


def _teacher_acc(job, ex, log) -> None:
    try:
        log(f"teacher test acc {job.result():.4f}")
    except Exception as e:
        raise JobDiedError(f"teacher job {job.job_id} failed ({str(e).strip().splitlines()[-1][:200]}); "
                           f"logs in {ex.folder}") from None


def _gather(outcome: SuiteOutcome, method: str, seed: int, job, folder) -> None:
    try:
        outcome.merge(job.result())
    except Exception as e:
        entry = (method, seed, f"job {job.job_id} died: {str(e).strip().splitlines()[-1][:200]}; logs in {folder}")
        outcome.failed.append(entry)
        outcome.crashed.append(entry)


def _local(ex, suite: Suite, dump: dict, runs_dir: Path, force: bool, gpus: list[str], parallel: int,
           log) -> SuiteOutcome:
    """The teacher's job, then the runs' jobs a window at a time (all at once would share the cores, and one
    GPU, among every run), each with its share of the threads and, where there are GPUs, one of them."""
    from . import env

    runs = planned_runs(suite)
    parallel = min(parallel or max(1, len(gpus)), max(1, len(runs)))
    threads = max(1, env.thread_count(suite.runtime.threads) // parallel)
    one_gpu = {"device": "cuda"} if gpus else {}  # each job sees its one GPU as cuda:0
    teacher_dump = {**dump, "runtime": {**dump["runtime"], **one_gpu}}  # the teacher trains alone: every thread
    dump = {**dump, "runtime": {**dump["runtime"], "threads": threads, **one_gpu}}
    started: list = []
    try:
        job = submit_local(ex, started, _teacher_job, teacher_dump, str(runs_dir), gpus[0] if gpus else None)
        log(f"local: teacher job {job.job_id}")
        _teacher_acc(job, ex, log)
        shared = "" if not gpus else ", one GPU each" if parallel <= len(gpus) else f", {len(gpus)} GPU(s) in turn"
        log(f"local: {len(runs)} runs, {parallel} at once ({threads} thread(s) each{shared}); logs in {ex.folder}")
        outcome, todo, running = SuiteOutcome(), list(runs), {}  # slot -> (method, seed, job)
        while todo or running:
            for slot in [k for k in range(parallel) if k not in running][:len(todo)]:
                method, seed = todo.pop(0)
                gpu = gpus[slot % len(gpus)] if gpus else None
                running[slot] = (method, seed, submit_local(ex, started, _run_job, dump, str(runs_dir), force,
                                                            method, seed, gpu))
            for slot, (method, seed, job) in list(running.items()):
                if job.done():
                    _gather(outcome, method, seed, job, ex.folder)
                    del running[slot]
            if running:
                time.sleep(0.5)
        return outcome
    except BaseException:  # a stop, or anything else: no job goes on alone
        stop_local(started, log=log)
        raise
