"""`dfad-bench run --launcher slurm|local`: a suite's (method, seed) runs as one submitit job array.

The teacher is trained (or found in the cache) by a first job, so the array's jobs never race to train
it. Slurm settings come from the environment: DFAD_SLURM_PARTITION, DFAD_SLURM_GPUS (default 1),
DFAD_SLURM_CPUS (default 4), DFAD_SLURM_PARALLEL (array tasks at once), DFAD_LAUNCH_TIMEOUT_MIN.
"""
from __future__ import annotations

import os
from pathlib import Path

from .config import Suite
from .errors import HarnessError
from .runner import SuiteOutcome, check_finished_runs, check_models, planned_runs
from .store import Store


def _teacher_job(suite_dump: dict, runs_dir: str) -> float:
    import methods  # noqa: F401

    from . import env
    from .teacher import ensure_teacher

    suite = Suite.model_validate(suite_dump)
    env.apply_runtime(suite.runtime)
    return ensure_teacher(suite, Path(runs_dir), env.resolve_device(suite.runtime.device)).acc


def _run_job(suite_dump: dict, runs_dir: str, force: bool, method: str, seed: int) -> SuiteOutcome:
    import methods  # noqa: F401

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
    ex = executor(kind, runs_dir / "submitit" / suite.name, suite)
    dump = suite.model_dump(mode="json")
    job = ex.submit(_teacher_job, dump, str(runs_dir))
    log(f"{kind}: teacher job {job.job_id}")
    try:
        log(f"teacher test acc {job.result():.4f}")
    except Exception as e:
        raise HarnessError(f"teacher job {job.job_id} failed ({str(e).strip().splitlines()[-1][:200]}); "
                           f"logs in {ex.folder}") from None
    runs = planned_runs(suite)
    n = len(runs)
    jobs = ex.map_array(_run_job, [dump] * n, [str(runs_dir)] * n, [force] * n, [m for m, _ in runs],
                        [s for _, s in runs])
    log(f"{kind}: job array {jobs[0].job_id.split('_')[0] if jobs else '-'} with {n} runs; logs in {ex.folder}")
    outcome = SuiteOutcome()
    for (method, seed), j in zip(runs, jobs):
        try:
            outcome.merge(j.result())
        except Exception as e:
            entry = (method, seed, f"job {j.job_id} died: {str(e).strip().splitlines()[-1][:200]}; logs in {ex.folder}")
            outcome.failed.append(entry)
            outcome.crashed.append(entry)
    return outcome
