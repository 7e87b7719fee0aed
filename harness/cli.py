"""`dfad-bench`: run, report, ls, validate and teacher, a thin layer over harness.runner and reports."""
from __future__ import annotations

import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import List, Optional

import typer

from .errors import HarnessError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmark harness for data-free knowledge distillation (DFAD and its baselines).")

RUNS_DIR = typer.Option("runs", "--runs-dir", help="Where runs are stored: <runs-dir>/<suite>/<method>/seed-<n>/")
PROFILE = typer.Option(None, "--profile", "-p", help="paper, or one of the suite's profiles: quick, smoke, ... "
                       "(default: paper with CUDA, else quick where the suite has it)")
STORED_PROFILE = typer.Option(None, "--profile", "-p", help="the profile the runs were made with (default: the one "
                              "recorded in the stored runs)")
OVERRIDES = typer.Argument(None, help="key.path=value overrides, e.g. budget.iterations=500")


def fail(msg: str, code: int = 2):
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _csv(text: str | None, cast=str, what="list") -> list | None:
    if text is None:
        return None
    try:
        items = [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise HarnessError(f"--{what} {text!r} is not a comma-separated list of {cast.__name__}s") from None
    if not items:
        raise HarnessError(f"--{what} is empty")
    return items


def _load(suite, profile, overrides, methods=None, seeds=None, params=None, announce=True, also=None):
    import methods as _  # noqa: F401  (register every method)

    from .config import default_profile, load_suite, read_yaml, suite_path

    s = load_suite(suite, profile, overrides or [], _csv(methods, str, "methods"), _csv(seeds, int, "seeds"), params,
                   also_methods=_csv(also, str, "methods"))
    if profile is None and announce:  # once the suite loaded (a bad input's error stays the only line on stderr),
        profiles = read_yaml(suite_path(suite)).get("profiles")  # on stdout, with the progress it heads
        name, why = default_profile(profiles)
        names = ["paper", *(profiles if isinstance(profiles, dict) else [])]
        choose = f"--profile {'|'.join(names)} to choose" if len(names) > 1 else "the suite has no other profiles"
        typer.echo(f"profile: {name} ({why}; {choose})")
    return s


_stopped = threading.Event()  # a stop signal arrived during the command, even if something swallowed it


def _stop_as_interrupt():
    """Ctrl-C and SIGTERM (kill, a scheduler) outside a run's loop, e.g. while a teacher trains, stop with the
    message and exit 130, not a silent 143 (the loop has its own handler, which checkpoints first). The signal is
    also remembered: a KeyboardInterrupt raised inside a finaliser (a figure or file closed by the garbage
    collector during the report) is only printed as "Exception ignored" by Python, and the command must not then
    carry on and exit 0. Returns the handlers it replaced ({} off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    _stopped.clear()

    def interrupt(signum, frame):
        _stopped.set()
        raise KeyboardInterrupt

    return {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}


def guarded(fn):
    import functools

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        previous = _stop_as_interrupt()
        try:
            out = fn(*a, **kw)
            if _stopped.is_set():  # swallowed on the way (see _stop_as_interrupt)
                raise KeyboardInterrupt
            return out
        except HarnessError as e:
            fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            again = ("rerun without --force to resume (with --force every run is redone)" if kw.get("force")
                     else "rerun to resume")
            typer.echo(f"interrupted: finished runs and checkpoints are kept; {again}", err=True)
            raise typer.Exit(130)
        except OSError as e:
            import errno

            from .store import STORAGE_ERRNOS

            if e.errno not in STORAGE_ERRNOS:
                raise
            where = Path(e.filename).parent if e.filename else "a file"  # not the temporary file's own name
            fix = ("make it writable or choose another --runs-dir" if e.errno == errno.EROFS
                   else "free space and rerun to resume")
            fail(f"cannot write under {where} ({e.strerror}); finished runs and the last good checkpoints are "
                 f"kept: {fix}")
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    return wrapper


@app.command()
@guarded
def run(suite: str = typer.Argument(..., help="suite name in benchmarks/ or path to a suite file"),
        overrides: Optional[List[str]] = OVERRIDES, profile: Optional[str] = PROFILE,
        methods: Optional[str] = typer.Option(None, "--methods", help="comma-separated methods (default: the suite's)"),
        seeds: Optional[str] = typer.Option(None, "--seeds", help="comma-separated seeds (default: the suite's)"),
        runs_dir: Path = RUNS_DIR, force: bool = typer.Option(False, "--force", help="redo finished runs"),
        params: Optional[Path] = typer.Option(None, "--params", help="YAML overlay of parameters (from tune)"),
        report: bool = typer.Option(True, "--report/--no-report", help="write and print the table at the end"),
        launcher: Optional[str] = typer.Option(None, "--launcher", help="slurm | local: submit runs as a job array")):
    """Train (or reuse) the teacher, run every method x seed, then table the results."""
    from .runner import run_suite
    from .tracking import trackers

    s = _load(suite, profile, overrides, methods, seeds, str(params) if params else None)
    if launcher:
        from .launch import launch

        outcome = launch(s, runs_dir, force, launcher, log=lambda m: typer.echo(m, err=True))
    else:
        outcome = run_suite(s, runs_dir, force, callbacks=trackers(s, runs_dir))
    if report:  # the suite's whole table, not only the methods this command ran (--methods)
        _report(_load(suite, profile, overrides, None, seeds, str(params) if params else None, announce=False,
                      also=methods) if methods else s, runs_dir)
    for line in outcome.messages():
        typer.echo(line, err=True)
    if outcome.crashed:  # diverged or not-applicable runs are results (FAILED, n/a); a crash measured nothing
        raise typer.Exit(1)


def _report(s, runs_dir, metric="best"):
    """The end-of-run report: tables (paper's values beside ours), figures and report.md."""
    from reports.build import suite_report

    out = suite_report(s, runs_dir, metric, "under")
    typer.echo((Path(runs_dir) / s.name / "report" / "table.md").read_text())
    typer.echo(f"wrote {out} and {Path(runs_dir) / s.name / 'report'}/table.{{md,tex,csv,html}}, "
               f"table-standalone.tex, figures")


@app.command()
@guarded
def report(suites: Optional[List[str]] = typer.Argument(None, help="suites (names or files); several give one "
                                                                  "table with a column group per dataset"),
           runs_dir: Path = RUNS_DIR, profile: Optional[str] = STORED_PROFILE,
           paper_table: Optional[str] = typer.Option(None, "--paper-table", help="cls | seg: the paper's Table 2 "
                                                     "or 3, over the suites named after its datasets"),
           metric: str = typer.Option("best", "--metric", help="best | final"),
           fmt: str = typer.Option("md", "--format", help="what to print: latex | md | csv | html"),
           with_paper: bool = typer.Option(True, "--with-paper/--no-paper", help="show the paper's values beside ours"),
           paper_as: str = typer.Option("under", "--paper-as", help="under (a row under ours) | delta (a column)"),
           ablation: bool = typer.Option(False, "--ablation", help="the loss-ablation table of these suites"),
           plots: bool = typer.Option(True, "--plots/--no-plots", help="figures in report.md (one suite); "
                                      "--no-plots: tables and report.md only")):
    """Render stored runs: tables (md, tex, csv, html), figures and report.md. Never trains."""
    from reports.build import multi_table, suite_report, write_multi
    from reports.table import PAPER_TABLES, render

    from .store import Store

    for opt, val, ok in (("--metric", metric, ("best", "final")), ("--format", fmt, ("latex", "md", "csv", "html")),
                         ("--paper-as", paper_as, ("under", "delta")), ("--paper-table", paper_table or "cls",
                                                                        tuple(PAPER_TABLES))):
        if val not in ok:
            raise HarnessError(f"{opt} {val!r}: choose {' or '.join(ok)}")
    if bool(paper_table) == bool(suites):
        raise HarnessError("give suites, or --paper-table cls|seg (not both)")
    names = PAPER_TABLES[paper_table] if paper_table else list(suites)
    loaded = [_report_suite(n, runs_dir, profile, bool(paper_table), missing_ok=len(names) > 1) for n in names]
    if not paper_table and (missing := [s.name for s in loaded if not Store(runs_dir, s.name).has_runs()]):
        if len(missing) == len(loaded):
            raise HarnessError(f"no runs of suites {', '.join(map(repr, missing))} under {runs_dir}")
        typer.echo(f"warning: no runs of suite(s) {', '.join(map(repr, missing))} under {runs_dir}: n/a", err=True)
    if paper_table and not any(s and Store(runs_dir, s.name).has_runs() for s in loaded):
        typer.echo(f"warning: no runs of {', '.join(names)} under {runs_dir}: the table holds the paper's numbers "
                   f"only", err=True)
    paper = paper_as if with_paper else None
    t = multi_table(loaded, [s.dataset if s else n for s, n in zip(loaded, names)], runs_dir, metric,
                    paper_rows=bool(paper_table), ablation=ablation)
    try:  # a store that cannot be written (read-only, an archive) still prints its table
        if len(loaded) == 1 and not paper_table:
            typer.echo(f"wrote {suite_report(loaded[0], runs_dir, metric, paper, figures_too=plots)}", err=True)
        if len(loaded) > 1 or paper_table or ablation:
            names = "+".join(s.name for s in loaded if s)
            stem = (f"paper-table-{paper_table}" if paper_table else names if ablation and names.startswith("ablation")
                    else ("ablation-" if ablation else "table-") + names)  # not ablation-ablation-loss
            out = write_multi(t, runs_dir, stem, paper, [s for s in loaded if s], ablation and plots)
            typer.echo(f"wrote {out}/{stem}.{{md,tex,csv,html}} and {stem}-standalone.tex", err=True)
    except OSError as e:
        import errno

        from .store import STORAGE_ERRNOS

        if e.errno not in (*STORAGE_ERRNOS, errno.EACCES, errno.EPERM):
            raise
        typer.echo(f"warning: no report files written under {runs_dir} ({e.strerror}); the table is printed only",
                   err=True)
    typer.echo(render(t, fmt, paper))


def _report_suite(name: str, runs_dir: Path, profile: str | None, paper_table: bool, missing_ok: bool):
    """A suite loaded with the profile its runs were stored under; None for a paper-table dataset with no suite
    file. A suite without runs is an error, or, where missing_ok (a column among others), n/a cells."""
    from .config import BENCHMARKS_DIR
    from .data import READING_STORED_RUNS
    from .store import Store

    if paper_table and not (BENCHMARKS_DIR / f"{name}.yaml").is_file():
        return None
    stored = _stored_profile(name, runs_dir)
    token = READING_STORED_RUNS.set(True)  # a report reads the run store, not the suite's own data
    try:
        s = _load(name, profile or stored, [], announce=False)
    finally:
        READING_STORED_RUNS.reset(token)
    if profile and stored and profile != stored:
        typer.echo(f"warning: {name}'s runs under {runs_dir} were made with profile {stored}, not {profile}; "
                   f"the report's titles name {profile}, its cells each run's own", err=True)
    if not missing_ok and not Store(runs_dir, s.name).has_runs():
        raise HarnessError(f"no runs of suite {s.name!r} under {runs_dir}")
    return s


def _stored_profile(suite: str, runs_dir: Path) -> str | None:
    from .config import suite_path
    from .store import Store, read_json

    from .runner import read_yaml_or_none

    for rd in Store(runs_dir, suite_path(suite).stem).runs():
        # the summary's, else the config's (a summary.json that cannot be read leaves the run's config.yaml)
        for record in (read_json(rd.summary_path), read_yaml_or_none(rd.config)):
            if isinstance(record, dict) and isinstance(record.get("profile"), str):
                return record["profile"]
    return None


@app.command()
@guarded
def validate(suite: str = typer.Argument(...), overrides: Optional[List[str]] = OVERRIDES,
             profile: Optional[str] = typer.Option(None, "--profile", "-p", help="check this profile only "
                                                   "(default: every profile of the suite)"),
             data: bool = typer.Option(True, "--data/--no-data", help="also check that the data the runs read is "
                                       "under $DFAD_DATA (decodes and caches it once; never downloads)"),
             runs_dir: Path = typer.Option("runs", "--runs-dir", help="where runs are stored: a teacher cached there "
                                           "needs no training data")):
    """Load and check a suite (every profile, or the one given) without running anything: the config, that
    its teacher and student build and take the dataset's input, and that its data is there."""
    from .config import read_yaml, suite_path
    from .runner import check_models, data_needs

    profiles = [profile] if profile else ["paper", *(read_yaml(suite_path(suite)).get("profiles") or {})]
    needs: dict[tuple[str, str], list[str]] = {}
    for p in profiles:
        s = _load(suite, p, overrides, announce=False)
        check_models(s)
        typer.echo(f"ok: {s.name} [{p}] dataset {s.dataset}, teacher {s.teacher.model.name}, student "
                   f"{s.student.name}, methods {', '.join(s.method_names())}, seeds {s.seeds}, "
                   f"{s.budget.iterations} iterations" + (f" at most, as many as fit in {s.budget.time_budget_s:g}s"
                                                          if s.budget.time_budget_s else ""))
        for key, users in data_needs(s, runs_dir).items():
            needs[key] = list(dict.fromkeys([*needs.get(key, []), *users]))
    if data:
        _check_data(needs)


def _check_data(needs: dict[tuple[str, str], list[str]]) -> None:
    """One line per dataset split the runs read; a split that is missing and cannot be downloaded is an error."""
    from .data import download_allowed, data_root, get_dataset, missing_split

    missing = []
    for (name, split), users in needs.items():
        why = missing_split(name, split)
        used = f"(read by {', '.join(users)})"
        if why is None:
            typer.echo(f"data: {name} {split} found under {get_dataset(name).folder or data_root()} {used}")
        elif get_dataset(name).downloads and download_allowed():
            typer.echo(f"data: {name} {split} not under {data_root()}; the run downloads it {used}")
        else:
            typer.echo(f"data: {name} {split} MISSING {used}: {why}")
            missing.append(f"{name} {split} ({why})")
    if missing:
        raise HarnessError(f"data missing for {len(missing)} dataset split(s): {missing[0]}"
                           + (f"; +{len(missing) - 1} more (listed above)" if len(missing) > 1 else ""))


@app.command()
@guarded
def teacher(suite: str = typer.Argument(...), overrides: Optional[List[str]] = OVERRIDES,
            profile: Optional[str] = PROFILE, runs_dir: Path = RUNS_DIR):
    """Train (or reuse, or load with teacher.checkpoint=PATH) the suite's teacher and print its accuracy."""
    from . import env
    from .data import get_dataset, metric_word
    from .teacher import ensure_teacher

    from .runner import check_models

    s = _load(suite, profile, overrides)
    env.apply_runtime(s.runtime)
    check_models(s, ("teacher",))
    t = ensure_teacher(s, runs_dir, env.runtime_device(s.runtime))
    what = metric_word(get_dataset(s.dataset).metric)
    typer.echo(f"teacher {s.teacher.model.name} on {s.dataset}: test {what} {t.acc:.4f} ({t.source}, {t.path})")


@app.command()
@guarded
def speed(suite: str = typer.Argument(...), overrides: Optional[List[str]] = OVERRIDES,
          method: str = typer.Option("dfad", "--method", "-m"), iters: int = typer.Option(5, "--iters", min=1),
          warmup: int = typer.Option(2, "--warmup", min=0), repeats: int = typer.Option(3, "--repeats", min=1),
          profile: Optional[str] = PROFILE,
          memory: bool = typer.Option(True, help="Each path's peak memory, measured in a fresh process per path."),
          limits: bool = typer.Option(True, help="The machine's matmul and conv peaks (~10 s on a CPU) and each "
                                                 "path's ratio to them.")):
    """Time a method's iterations: default path vs the plain eager fp32 NCHW loop; prints one JSON object."""
    from .speed import speed_command

    speed_command(suite, method, iters, warmup, repeats, profile, overrides, memory=memory, limits=limits)


@app.command("ls")
@guarded
def ls():
    """List suites, datasets, models and methods."""
    import methods as _  # noqa: F401

    from .config import list_suites
    from .registry import DATASETS, METHODS, MODELS

    for title, names in (("suites", list_suites()), ("datasets", DATASETS.names()), ("models", MODELS.names()),
                         ("methods", METHODS.names())):
        typer.echo(f"{title}: {', '.join(names)}")


from .tune import tune_command  # noqa: E402  (tune.py imports cli only inside the command: no cycle)
app.command("tune")(guarded(tune_command))


def main() -> int:
    """The `dfad-bench` command: as `app`, but a usage error (an unknown option or command, a flag's bad value) is
    one line naming it, like every other bad input, not a framed box; so is a warning (a switch that falls back, a
    library's notice), as the harness's own messages are."""
    formatwarning = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *_, **__: f"warning: {' '.join(str(message).split())}\n"
    try:
        return _main()
    finally:  # main() called in a process that goes on (a test) leaves its warnings as they were
        warnings.formatwarning = formatwarning


def _main() -> int:
    from typer._click import exceptions as click  # typer's own click, whose errors its commands raise

    try:
        rc = app(standalone_mode=False)
    except click.NoArgsIsHelpError as e:
        typer.echo(e.format_message())
        return 0
    except click.UsageError as e:
        where = f" (see {e.ctx.command_path} --help)" if e.ctx else ""
        typer.echo(f"error: {' '.join(e.format_message().split())}{where}", err=True)
        return e.exit_code
    except click.ClickException as e:
        typer.echo(f"error: {' '.join(e.format_message().split())}", err=True)
        return e.exit_code
    except click.Abort:  # Ctrl-C while click itself read input
        typer.echo("interrupted", err=True)
        rc = 130
    if rc == 130:  # stopped: another Ctrl-C while the process winds down (W&B's exit hooks) would end it by the
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # signal, with a traceback, and not with 130
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
