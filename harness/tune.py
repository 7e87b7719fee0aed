"""`dfad-bench tune`: an Optuna study over one method's search space (the suite's `search.<method>`).

The objective is student accuracy on a validation split held out from the training set (10% of each class),
never the test set; it is reported at every evaluation so the pruner can stop bad trials. Workers share
one storage: a journal file under the runs dir (several processes on one machine) or an RDB URL (many
machines). Each trial is a W&B run too. The study ends as a YAML overlay for `run --params` and plots.
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import List, Optional

import typer

from .errors import HarnessError

VAL_FRACTION = 0.1
SPLIT = f"a class-stratified {VAL_FRACTION:.0%} (fixed seed)"  # recorded in the study: trials must share a split


def split_train(spec):
    """(fit, val): the training images minus a held-out 10% of each class, and that 10%. Drawn with a fixed
    seed, so every worker holds out the same images, and per class, so class-sorted data (an ImageFolder's,
    Caltech101's) is held out evenly rather than as its last classes. Segmentation maps: a plain 10%."""
    import torch

    from .data import ImageTensors

    data = spec.load("train")
    n = len(data)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    if data.y.dim() == 1:
        perm = perm[torch.sort(data.y[perm], stable=True).indices]  # by class, random within each
        held, start = [], 0
        for count in torch.unique_consecutive(data.y[perm], return_counts=True)[1].tolist():
            k = max(1, round(count * VAL_FRACTION)) if count >= 2 else 0
            held.append(perm[start:start + k])
            start += count
        held = torch.cat(held)
    else:
        held = perm[:max(1, int(n * VAL_FRACTION))]
    if len(held) == 0 or len(held) == n:
        raise HarnessError(f"{spec.name}: too few training images ({n}) to hold out a validation split")
    keep = torch.ones(n, dtype=torch.bool)
    keep[held] = False
    val = held.sort().values
    return (ImageTensors(data.x[keep], data.y[keep], data.mean, data.std, data.metric),
            ImageTensors(data.x[val], data.y[val], data.mean, data.std, data.metric))


def open_storage(url: str | None, runs_dir: Path, study: str):
    """A journal file (default `<runs-dir>/tune/<study>.journal`, or a path), or an RDB URL."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    from .tracking import redact

    label = url or str(Path(runs_dir) / "tune" / f"{study}.journal")
    try:
        if url and "://" in url:
            for attempt in range(5):
                try:  # heartbeats let other workers fail a dead machine's trial instead of waiting forever
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True},
                                                          heartbeat_interval=60, grace_period=180)
                except Exception as e:  # workers starting together race to create the schema: try again
                    if attempt == 4 or not any(w in str(e) for w in ("already exists", "duplicate key")):
                        raise
                    time.sleep(0.5 + attempt)
        path = Path(label)
        path.parent.mkdir(parents=True, exist_ok=True)
        check_journal(path)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    except HarnessError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        if isinstance(e, ImportError):  # SQLAlchemy's PostgreSQL driver is psycopg 3
            first = f"no database driver for it; pip install -e '.[distributed]' ({first[:80]})"
        raise HarnessError(f"--storage {redact(label)}: cannot open ({type(e).__name__}: {redact(first)})") from None


def check_journal(path: Path) -> None:
    """An existing file given as a journal must be one (JSON records, one per line): optuna would append its
    records to any other file, and fail on it."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb") as f:
        first = f.readline(1 << 20)
    try:
        ok = isinstance(json.loads(first), dict)
    except ValueError:
        ok = False
    if not ok:
        raise HarnessError(f"--storage {path}: not an Optuna journal file (its first line is not a JSON record); "
                           f"give a new file name or a database URL")


def make_pruner(kind: str, suite, trials: int):
    import optuna

    b = suite.budget
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=b.eval_every, max_resource=b.iterations, reduction_factor=3)
    if kind == "median":  # the first evaluation is never judged: every student starts near chance
        return optuna.pruners.MedianPruner(n_startup_trials=min(5, max(2, trials // 3)),
                                           n_warmup_steps=2 * b.eval_every)
    raise HarnessError(f"--pruner {kind!r}: choose median or hyperband")


def suggest(trial, space: dict) -> dict:
    out = {}
    for name, sp in space.items():
        if sp.choices is not None:
            out[name] = trial.suggest_categorical(name, sp.choices)
        elif sp.is_int:
            out[name] = trial.suggest_int(name, int(sp.low), int(sp.high), step=int(sp.step or 1), log=sp.log)
        else:
            out[name] = trial.suggest_float(name, sp.low, sp.high, step=sp.step, log=sp.log)
    return out


def run_trial(trial, suite, method: str, teacher, fit, val, device, runs_dir: Path, study: str) -> float:
    import optuna

    from .api import build_context, make_method, runtime_switches
    from .config import config_hash, method_of
    from .data import get_dataset
    from .loop import run_loop
    from .runner import build_student
    from .tracking import WandbTracker

    spec, seed = get_dataset(suite.dataset), suite.seeds[0]
    params = {**suite.method_params(method).model_dump(), **suggest(trial, suite.search[method])}
    cfg = {**suite.run_config(method, seed), "params": params}
    tracker = WandbTracker(suite, runs_dir, group=study, job_type="trial", name=f"trial-{trial.number}",
                           extra_config={"study": study, "trial": trial.number, "objective": "val_acc"})
    trial.set_user_attr("wandb_id", tracker.on_run_start(None, cfg, {"config_hash": config_hash(cfg)}).get("wandb_id"))
    best, status = 0.0, "failed"
    try:
        torch_seed(seed)
        # data-driven methods train on `fit` only, so the validation images stay unseen by the student
        ctx = build_context(teacher.model, build_student(suite), spec.input_shape, spec.num_classes, seed,
                            suite.budget.iterations, device, dataset=suite.dataset, train_set=fit,
                            **runtime_switches(suite.runtime))
        m = make_method(method_of(method, suite.methods.get(method)), ctx, params)
        m.setup()

        def on_eval(row):
            nonlocal best
            row = {("val_acc" if k == "test_acc" else k): v for k, v in row.items()}
            best = max(best, row["val_acc"])
            tracker.on_eval(row, m)
            trial.report(row["val_acc"], row["iteration"])
            # at the last evaluation the budget is spent: the trial's result is kept, never pruned
            if row["iteration"] < suite.budget.iterations and trial.should_prune():
                raise optuna.TrialPruned(f"val acc {row['val_acc']:.4f} at iteration {row['iteration']}")

        run_loop(m, val, suite.budget.iterations, suite.budget.eval_every, on_eval=on_eval)
        status = "done"
        return best
    except optuna.TrialPruned:
        status = "pruned"
        raise
    except KeyboardInterrupt:  # optuna records it failed: marked, so the study's summary says what happened
        status = "interrupted"
        trial.set_user_attr("interrupted", True)
        raise
    finally:
        tracker.on_run_end({"status": status, "best_val_acc": best, "teacher_acc": teacher.acc})


def torch_seed(seed: int):
    import torch

    torch.manual_seed(seed)


def _no_interrupt_traceback(record) -> bool:
    """optuna logs a trial that Ctrl-C stopped as failed, with the KeyboardInterrupt's traceback: the command's one
    line says it instead (and the trial is marked interrupted)."""
    return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))


def trial_seeded_sampler(seed: int):
    """TPE whose random draws for a trial come from (seed, the trial's number), not from the sampler's own stream.
    The storage gives every trial a number no other worker has: workers of one command, `tune` commands started
    together on one study (same --seed, other machines) and a resumed study draw new points, and a study replayed
    from the same history draws the same ones. constant_liar: parallel workers do not all pile onto the point a
    running trial already explores."""
    import numpy as np
    import optuna

    class TrialSeededTPE(optuna.samplers.TPESampler):
        def before_trial(self, study, trial):
            a, b = np.random.SeedSequence([seed, trial.number]).generate_state(2)
            try:  # optuna's own RNGs (TPE's and its start-up RandomSampler's), reseeded in place
                self._rng.rng.seed(int(a))
                self._random_sampler._rng.rng.seed(int(b))
            except AttributeError:  # another optuna's internals: distinct draws still, not reproducible ones
                self.reseed_rng()
            super().before_trial(study, trial)

    return TrialSeededTPE(seed=seed, constant_liar=True)


def worker(suite_dump: dict, method: str, study: str, storage: str | None, n_trials: int, seed: int,
           pruner: str, runs_dir: str, threads: int | None) -> None:
    """One tuning process: the shared storage, `n_trials` trials, each drawn from (seed, its trial number)."""
    interruptible()
    import methods  # noqa: F401  (register every method)
    import optuna

    from . import env
    from .config import Suite
    from .data import get_dataset
    from .teacher import ensure_teacher

    suite = Suite.model_validate(suite_dump)
    env.apply_runtime(suite.runtime, threads)
    device = env.runtime_device(suite.runtime)
    teacher = ensure_teacher(suite, Path(runs_dir), device, log=lambda *_: None)
    fit, val = split_train(get_dataset(suite.dataset))
    sampler = trial_seeded_sampler(seed)
    st = optuna.load_study(study_name=study, storage=open_storage(storage, Path(runs_dir), study), sampler=sampler,
                           pruner=make_pruner(pruner, suite, n_trials))
    logging.getLogger("optuna.study._optimize").addFilter(_no_interrupt_traceback)  # once per logger: idempotent
    try:
        st.optimize(lambda t: run_trial(t, suite, method, teacher, fit, val, device, Path(runs_dir), study),
                    n_trials=n_trials, catch=(HarnessError,))
    except KeyboardInterrupt:  # the trial is recorded failed by optuna; the parent says what happened, once
        if mp.parent_process() is None:
            raise
        sys.exit(130)


def tune(suite, method: str, trials: int, storage: str | None = None, study: str | None = None, jobs: int = 1,
         pruner: str = "median", runs_dir: str | Path = "runs", seed: int = 0, log=print,
         rerun: list[str] | None = None) -> dict:
    """`rerun`: how the suite was given on the command line and its overrides, for best.yaml's hint."""
    import optuna

    from . import env
    from .runner import config_difference, precision_of
    from .store import Store, read_json
    from .teacher import ensure_teacher
    from .tracking import redact, resolve_mode

    resolve_mode(suite.tracking.wandb)  # a mistyped WANDB_MODE: said now, not swallowed by every trial
    if method not in suite.methods:
        raise HarnessError(f"--method {method!r} is not in suite {suite.name} ({', '.join(suite.methods)})")
    if not suite.search.get(method):
        raise HarnessError(f"suite {suite.name} has no search space for {method} "
                           f"(add a `search: {{{method}: ...}}` section)")
    if trials < 1 or jobs < 1:
        raise HarnessError("--trials and --jobs must be at least 1")
    if not 0 <= seed < 2 ** 32:  # numpy's RandomState, under optuna's sampler, takes no other
        raise HarnessError(f"--seed must be between 0 and 2**32 - 1 (got {seed})")
    runs_dir = Path(runs_dir).resolve()
    given, study = study is not None, study or f"{suite.name}-{method}-{suite.profile}"
    if "/" in study or "\\" in study or study.startswith(".") or not study.strip() or not study.isprintable():
        what = "--study" if given else f"the default study name (<suite>-<method>-<profile>), {study!r},"
        raise HarnessError(f"{what} names a folder under <runs-dir>/tune: it needs printable text without '/' or "
                           f"'\\', not starting with '.' (got {study!r})" if given
                           else f"{what} cannot name a folder; give --study NAME")
    Store(runs_dir, "tune").ensure_writable()
    if storage and "://" not in storage:  # a journal file: recorded where it is, not how it was spelled
        storage = str(Path(storage).expanduser().resolve())
        if Path(storage) == runs_dir / "tune" / f"{study}.journal":  # the default journal, named
            storage = None
    out, label = runs_dir / "tune" / study, redact(storage or "journal")
    earlier = (read_json(out / "study.json") or {}).get("storage")
    if earlier and "://" not in earlier and earlier != "journal" and not Path(earlier).is_absolute():
        earlier = None  # recorded as typed (before today): relative to a directory no longer known
    if earlier not in (None, label):  # another study of this name, in another storage, wrote this folder
        raise HarnessError(f"{out} holds study {study} from storage {earlier}, not {label}; give --study another "
                           f"name (or --runs-dir another folder) to keep both")
    make_pruner(pruner, suite, trials)  # a bad --pruner fails here, not in every worker
    verbosity = optuna.logging.get_verbosity()  # its "A new study created" / "Using an existing study" line would
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # come before the checks below: ours says it after them
    try:
        st = optuna.create_study(study_name=study, storage=open_storage(storage, runs_dir, study),
                                 direction="maximize", load_if_exists=True)
    finally:
        optuna.logging.set_verbosity(verbosity)
    objective = f"best student accuracy on {SPLIT} of {suite.dataset}'s training set"
    if st.user_attrs.get("objective", objective) != objective:  # e.g. a study from before the split changed
        raise HarnessError(f"study {study} was scored on another validation split ({st.user_attrs['objective']}); "
                           f"its trials cannot be compared with new ones: give --study a new name")
    st.set_user_attr("objective", objective)
    # what a trial is besides the searched parameters: trials of another budget, profile or teacher do not rank
    # against these (a study's name says only suite, method and profile)
    run = suite.run_config(method, 0)
    config = {k: v for k, v in run.items() if k not in ("seed", "runtime", "params")}
    config["params"] = {k: v for k, v in run["params"].items() if k not in suite.search[method]}
    config = json.loads(json.dumps(config, default=str))
    # what differs from machine to machine on one shared study is not the trial's config: where the images are
    # (their bytes' folder fingerprint) and how the checkpoint's path is spelled (teacher_sha256 says which it is)
    config.get("dataset_def", {}).pop("files", None)
    config.get("dataset_def", {}).pop("folder", None)
    config.get("teacher", {}).pop("checkpoint", None)
    config.get("budget", {}).pop("time_budget_s", None)  # trials run budget.iterations (see tune())
    precision = precision_of(run)  # a bf16 trial does not rank against an fp32 one
    if (earlier := st.user_attrs.get("precision", precision)) != precision:
        raise HarnessError(f"study {study} was run with runtime.precision={earlier}, not {precision}; its trials "
                           f"cannot be compared with new ones: give --study a new name")
    st.set_user_attr("precision", precision)
    if (stored := st.user_attrs.get("config")) is not None and (key := config_difference(stored, config, ())):
        raise HarnessError(f"study {study} was run with another config ({key} differs); its trials cannot be "
                           f"compared with new ones: give --study a new name")
    st.set_user_attr("config", config)
    n_before = len(st.trials)  # read from the storage once
    env.apply_runtime(suite.runtime)
    ensure_teacher(suite, runs_dir, env.runtime_device(suite.runtime), log)  # once, before workers race on it
    jobs = min(jobs, trials)
    threads = max(1, env.thread_count(suite.runtime.threads) // jobs)  # OMP_NUM_THREADS as `run` reads it
    shares = [trials // jobs + (i < trials % jobs) for i in range(jobs)]
    args = [(suite.model_dump(mode="json"), method, study, storage, n, seed, pruner, str(runs_dir), threads)
            for n in shares]
    before = f"{n_before} trial(s) there before, " if n_before else "new, "
    log(f"study {study} ({redact(storage or 'journal')}): {before}{trials} trials in {jobs} worker(s), pruner {pruner}")
    if suite.budget.time_budget_s:  # trials are compared (and pruned) at equal iterations, not at a machine's speed
        log(f"note: every trial runs budget.iterations ({suite.budget.iterations}); budget.time_budget_s "
            f"({suite.budget.time_budget_s:g}s) sizes suite runs only")
    if jobs == 1:
        worker(*args[0])
    else:  # spawn, not fork: torch's threads and optuna's connections do not survive a fork
        procs = [mp.get_context("spawn").Process(target=worker, args=a, daemon=False) for a in args]
        try:
            for p in procs:
                p.start()
            for p in procs:
                p.join()
        finally:  # stopped (Ctrl-C reaches the workers too; SIGTERM only this process): no worker goes on alone
            stop_workers(procs)
        bad = [p.exitcode for p in procs if p.exitcode]
        if bad:
            log(f"warning: {len(bad)} worker(s) exited with {bad}")
    suite_arg, *kept = rerun or [suite.name]  # the hint reruns what was tuned: profile, overrides (not the search's)
    apply = shlex.join(["dfad-bench", "run", suite_arg, "--profile", suite.profile, "--methods", method, "--params",
                        str(out / "best.yaml"), *(o for o in kept if not o.strip().startswith("search."))])
    return finish(optuna.load_study(study_name=study, storage=open_storage(storage, runs_dir, study)),
                  method, out, label, log, apply=apply)


def interruptible() -> None:
    """A worker takes SIGINT as KeyboardInterrupt (stop_workers' stop) whatever it inherited: a command started in the
    background by a shell script (`dfad-bench tune ... &`) has SIGINT ignored, and so would its workers."""
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)


def stop_workers(procs, grace_s: float = 60.0, own_s: float = 10.0) -> None:
    """Workers still running after own_s (Ctrl-C in a terminal reaches them too, and a second SIGINT could
    land while optuna records the first's failed trial) get SIGINT, then SIGTERM after grace_s."""
    import signal

    for p in procs:
        if p.pid is not None:
            p.join(own_s / max(1, len(procs)))
    alive = [p for p in procs if p.pid is not None and p.is_alive()]
    for p in alive:
        try:
            os.kill(p.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    for p in alive:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.terminate()
            p.join()


def finish(st, method: str, out: Path, storage: str, log=print, apply: str = "") -> dict:
    """best.yaml (an overlay for `run --params`), study.json and the plots, in <runs-dir>/tune/<study>/."""
    import optuna
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for t in st.trials:
        state = "interrupted" if t.user_attrs.get("interrupted") else t.state.name.lower()
        counts[state] = counts.get(state, 0) + 1
    done = [t for t in st.trials if t.state == optuna.trial.TrialState.COMPLETE]
    record = {"study": st.study_name, "storage": storage, "method": method, "trials": counts}
    if not done:
        (out / "study.json").write_text(json.dumps(record, indent=2) + "\n")
        raise HarnessError(f"study {st.study_name}: no trial completed ({counts})")
    best = st.best_trial
    record.update(best_value=best.value, best_trial=best.number, best_params=best.params,
                  best_wandb_id=best.user_attrs.get("wandb_id"))
    (out / "study.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "best.yaml").write_text(
        f"# dfad-bench tune: study {st.study_name}, trial {best.number}, val acc {best.value:.4f}\n"
        f"# apply with: {apply or f'dfad-bench run SUITE --methods {method} --params {out}/best.yaml'}\n"
        + yaml.safe_dump({"methods": {method: best.params}}, sort_keys=True))
    plots(st, out, log)
    log(f"best val acc {best.value:.4f} (trial {best.number}): {best.params}; {counts}")
    log(f"wrote {out}/best.yaml, study.json and plots")
    return record


def plots(st, out: Path, log=print) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    for name, fn in (("optimization_history", ovm.plot_optimization_history),
                     ("param_importances", ovm.plot_param_importances)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
                ax = fn(st)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.savefig(out / f"{name}.png", dpi=100, bbox_inches="tight")
            plt.close(fig)
        except Exception as e:  # e.g. importances need two finished trials that differ
            log(f"warning: no {name} plot ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})")


RUNS_DIR = typer.Option("runs", "--runs-dir", help="runs dir; the study goes to <runs-dir>/tune/<study>/")


def tune_command(suite: str = typer.Argument(..., help="suite name in benchmarks/ or path to a suite file"),
                 overrides: Optional[List[str]] = typer.Argument(None, help="key.path=value overrides"),
                 method: str = typer.Option(..., "--method", "-m", help="the method to tune (needs search.<method>)"),
                 trials: int = typer.Option(20, "--trials", help="trials to run now, over all workers"),
                 storage: Optional[str] = typer.Option(None, "--storage", help="journal file path or RDB URL "
                                                       "(default <runs-dir>/tune/<study>.journal)"),
                 study: Optional[str] = typer.Option(None, "--study", help="default <suite>-<method>-<profile>"),
                 profile: Optional[str] = typer.Option(None, "--profile", "-p", help="paper, or one of the suite's profiles (quick, smoke, ...)"),
                 jobs: int = typer.Option(1, "--jobs", "-j", help="worker processes on this machine"),
                 pruner: str = typer.Option("median", "--pruner", help="median | hyperband"),
                 seed: int = typer.Option(0, "--seed", help="sampler seed: a trial draws from (seed, its trial "
                                          "number), so workers and commands sharing one study draw different points "
                                          "with the same seed"),
                 runs_dir: Path = RUNS_DIR):
    """Tune a method's hyperparameters on a held-out validation split; writes a --params overlay."""
    from .cli import _load

    try:  # errors, SIGTERM and full disks: cli's `guarded`, which wraps this command
        s = _load(suite, profile, overrides, methods=method)  # even if the profile's run_methods leave it out
        method = next(iter(s.methods), method)  # as the suite names it (`--method DFAD` tunes its `dfad`)
        tune(s, method, trials, storage, study, jobs, pruner, runs_dir, seed, log=lambda m: typer.echo(m, err=True),
             rerun=[suite, *(overrides or [])])
    except KeyboardInterrupt:
        typer.echo("interrupted: finished trials are in the study; rerun to add more", err=True)
        raise typer.Exit(130)


if __name__ == "__main__":
    sys.exit(typer.run(tune_command))
