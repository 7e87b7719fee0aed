"""Bad input through the real CLI: every case a `dfad-bench` subprocess from a fresh temporary folder.

First one finished smoke run (DFAD, MNIST) is made in the shared runs dir; after every case its files'
hashes are compared, the case's stderr is checked for exactly one line, the `error:` line (no traceback), and
watched places outside the temporary folder (the data root, the suite files, /etc/passwd) are compared.
The full disk is a real tmpfs of 64 KiB mounted as the runs dir (needs root; skipped otherwise).

    OMP_NUM_THREADS=1 DFAD_DATA=/work/data .venv/bin/python benchmarks/bad_inputs.py
writes benchmarks/results/bad-inputs.md.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
CLI = str(REPO / ".venv" / "bin" / "dfad-bench")
DATA = Path(os.environ.get("DFAD_DATA", "/work/data"))
SMOKE = ["--profile", "smoke", "--methods", "dfad", "--no-report"]
WATCHED = [DATA, *sorted((REPO / "benchmarks").glob("*.yaml")), Path("/etc/passwd")]  # outside the tmp folder


@dataclass
class Case:
    name: str
    args: list  # after `dfad-bench`; "{t}" is replaced by the tmp folder
    env: dict = field(default_factory=dict)
    setup: Callable[[Path], None] | None = None  # prepares files in the tmp folder
    mount: bool = False  # runs dir on a 64 KiB tmpfs at {t}/full
    sentinel: bool = False  # the case carries pickled code that would create {t}/PWNED


def cli_env(extra=None) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "DFAD_DATA": str(DATA), "DFAD_DOWNLOAD": "0",
            "WANDB_MODE": "disabled", **(extra or {})}


def dfad(*args, cwd: Path, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], cwd=cwd, env=cli_env(env), capture_output=True, text=True, timeout=timeout)


# ---- files the cases need ------------------------------------------------------------------------
def suite_file(text: str):
    return lambda t: (t / "s.yaml").write_text(text)


def state_dict(model: str, classes: int = 10, in_ch: int = 1) -> dict:
    import torch

    import methods  # noqa: F401
    from harness.models import build_model

    torch.set_num_threads(1)
    return build_model(model, num_classes=classes, in_channels=in_ch).state_dict()


def torch_file(obj_fn):
    def make(t: Path):
        import torch

        torch.save(obj_fn(), t / "ckpt.pt")
    return make


class Payload:
    """Pickled code: unpickling it would run `touch PWNED`."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def evil(t: Path, zipped: bool):
    import pickle

    import torch

    obj = {"state_dict": {"conv1.weight": Payload(t / "PWNED")}}
    if zipped:
        torch.save(obj, t / "ckpt.pt")
    else:
        (t / "ckpt.pt").write_bytes(pickle.dumps(obj))


def truncated(t: Path):
    import torch

    torch.save(state_dict("lenet5"), t / "ckpt.pt")
    data = (t / "ckpt.pt").read_bytes()
    (t / "ckpt.pt").write_bytes(data[: len(data) // 2])


def train_only(t: Path):
    raw = t / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (raw / f).symlink_to(DATA / "MNIST" / "raw" / f)


GOOD_SUITE = (REPO / "benchmarks" / "mnist.yaml").read_text()
CK = "teacher.checkpoint={t}/ckpt.pt"
R = ["--runs-dir", "{t}/runs"]  # the shared runs dir holding the finished run
FRESH = ["--runs-dir", "{t}/fresh"]  # checkpoint and model cases: the shared dir would answer "different config" first

CASES = [
    Case("malformed YAML", ["run", "{t}/s.yaml", *SMOKE, *R], setup=suite_file("dataset: mnist\n  teacher: [\n")),
    Case("suite file not a mapping", ["run", "{t}/s.yaml", *SMOKE, *R], setup=suite_file("- mnist\n- dfad\n")),
    Case("suite file not UTF-8", ["run", "{t}/s.yaml", *SMOKE, *R], setup=lambda t: (t / "s.yaml").write_bytes(b"\xff\xfe\x00")),
    Case("suite file missing", ["run", "{t}/nope.yaml", *SMOKE, *R]),
    Case("unknown key in suite", ["run", "{t}/s.yaml", *SMOKE, *R], setup=suite_file(GOOD_SUITE + "budgett: {iterations: 5}\n")),
    Case("misspelt key in suite (budgt)", ["run", "{t}/s.yaml", *SMOKE, *R],
         setup=suite_file(GOOD_SUITE.replace("\nbudget:", "\nbudgt:", 1))),
    Case("own dataset: folder missing", ["run", "{t}/s.yaml", *SMOKE, *R],
         setup=lambda t: suite_file(GOOD_SUITE.replace("dataset: mnist\n", f"datasets: {{mine: {{folder: {t}/nope}}}}\n"
                                                                          "dataset: mine\n", 1))(t)),
    Case("own dataset: a file that is not an image", ["run", "{t}/s.yaml", *SMOKE, *FRESH], setup=lambda t: (
        [(t / "own" / s / "a").mkdir(parents=True) or (t / "own" / s / "a" / "x.png").write_text("not a png")
         for s in ("train", "test")],
        suite_file(GOOD_SUITE.replace("dataset: mnist\n", f"datasets: {{mine: {{folder: {t}/own, channels: 1}}}}\n"
                                                            "dataset: mine\n", 1))(t))),
    Case("own dataset: a class folder with no images", ["run", "{t}/s.yaml", *SMOKE, *FRESH], setup=lambda t: (
        [(t / "own" / s / c).mkdir(parents=True) for s in ("train", "test") for c in ("a", "b")],
        (t / "own" / "train" / "a" / "Thumbs.db").write_text("not an image"),
        suite_file(GOOD_SUITE.replace("dataset: mnist\n", f"datasets: {{mine: {{folder: {t}/own, channels: 1}}}}\n"
                                                            "dataset: mine\n", 1))(t))),
    Case("own dataset: a test class the training split lacks", ["validate", "{t}/s.yaml"], setup=lambda t: (
        [(t / "own" / s / c).mkdir(parents=True) for s, c in (("train", "a"), ("test", "a"), ("test", "z"))],
        (t / "own" / "train" / "a" / "x.png").write_text("decoded only when a run starts"),
        suite_file(GOOD_SUITE.replace("dataset: mnist\n", f"datasets: {{mine: {{folder: {t}/own, channels: 1}}}}\n"
                                                            "dataset: mine\n", 1))(t))),
    Case("paper spread below zero", ["run", "{t}/s.yaml", *SMOKE, *R],
         setup=suite_file(GOOD_SUITE.replace("dfad: [0.983, 0.002]}", "dfad: [0.983, -0.002]}"))),
    Case("unavailable names a row the paper lacks", ["report", "{t}/s.yaml", *R],
         setup=suite_file(GOOD_SUITE + "unavailable: {kd_rell: USPS is not here}\n")),
    Case("unknown key (override)", ["run", "mnist", *SMOKE, *R, "budget.iteratons=5"]),
    Case("unknown method hyperparameter", ["run", "mnist", *SMOKE, *R, "methods.dfad.lr_s=0.1"]),
    Case("wrong type in suite", ["run", "{t}/s.yaml", *SMOKE, *R], setup=suite_file(GOOD_SUITE.replace("student: {name: lenet5_half}", "student: [lenet5_half]"))),
    Case("wrong type (override)", ["run", "mnist", *SMOKE, *R, "budget.iterations=many"]),
    Case("section given a scalar", ["run", "mnist", *SMOKE, *R, "budget=5"]),
    Case("negative learning rate", ["run", "mnist", *SMOKE, *R, "methods.dfad.lr_S=-0.1"]),
    Case("batch size 0", ["run", "mnist", *SMOKE, *R, "methods.dfad.batch_size=0"]),
    Case("infinite learning rate", ["run", "mnist", *SMOKE, *R, "methods.dfad.lr_S=inf"]),
    Case("learning-rate milestone past the budget", ["run", "mnist", *SMOKE, *R, "methods.dfad.schedule=multistep",
                                                     "methods.dfad.milestones=[100,150]"]),
    Case("method label that is a path", ["run", "{t}/s.yaml", *SMOKE, *R],
         setup=suite_file(GOOD_SUITE.replace("methods:\n", "methods:\n  ../escape: {method: dfad}\n", 1))),
    Case("iterations 0", ["run", "mnist", *SMOKE, *R, "budget.iterations=0"]),
    Case("CUDA graph on a CPU device", ["run", "mnist", *SMOKE, *R, "runtime.device=cpu", "runtime.cuda_graph=true"]),
    Case("CUDA graph and compile together", ["run", "mnist", *SMOKE, *R, "runtime.cuda_graph=true", "runtime.compile=true"]),
    Case("unknown suite", ["run", "mnsit", *SMOKE, *R]),
    Case("unknown method (--methods)", ["run", "mnist", "--profile", "smoke", "--methods", "dfda", *R]),
    Case("unknown model", ["run", "mnist", *SMOKE, *R, "student.name=lenet5_hlf"]),
    Case("unknown dataset", ["run", "mnist", *SMOKE, *R, "dataset=mnits"]),
    Case("model kwargs it cannot be built from", ["run", "mnist", *SMOKE, *FRESH, "student.name=resnet20",
                                                  "student.kwargs.width=-2"]),
    Case("model kwarg the model does not take", ["run", "mnist", *SMOKE, *FRESH, "student.kwargs.widht=0.5"]),
    Case("model that cannot take the dataset's input", ["run", "mnist", *SMOKE, *FRESH,
                                                        "student.name=deeplabv3_mobilenetv2", "student.kwargs.width=0.25"]),
    Case("teacher: model kwargs that leave a layer empty", ["teacher", "mnist", "--profile", "smoke", *FRESH,
                                                           "teacher.model.name=resnet8", "teacher.model.kwargs.width=0"]),
    Case("unknown profile", ["run", "mnist", "--profile", "smok", "--methods", "dfad", *R]),
    Case("missing data root", ["run", "mnist", *SMOKE, "--seeds", "1", *R], env={"DFAD_DATA": "{t}/nodata"}),
    Case("missing split (MNIST train only)", ["run", "mnist", *SMOKE, "--seeds", "1", *R],
         env={"DFAD_DATA": "{t}/data"}, setup=train_only),
    Case("checkpoint path missing", ["run", "mnist", *SMOKE, *FRESH, "teacher.checkpoint={t}/none.pt"]),
    Case("checkpoint not a torch file", ["run", "mnist", *SMOKE, *FRESH, CK], setup=lambda t: (t / "ckpt.pt").write_text("hello\n")),
    Case("checkpoint truncated", ["run", "mnist", *SMOKE, *FRESH, CK], setup=truncated),
    Case("checkpoint of junk bytes", ["run", "mnist", *SMOKE, *FRESH, CK],
         setup=lambda t: (t / "ckpt.pt").write_bytes(b"not a checkpoint at all" * 10)),
    Case("checkpoint missing, no --profile (its note goes to stdout)",
         ["run", "mnist", "--methods", "dfad", "--no-report", *FRESH, "teacher.checkpoint={t}/none.pt"]),
    Case("checkpoint of another architecture", ["run", "mnist", *SMOKE, *FRESH, CK], setup=torch_file(lambda: state_dict("lenet5_half"))),
    Case("checkpoint of another class count", ["run", "mnist", *SMOKE, *FRESH, CK], setup=torch_file(lambda: state_dict("lenet5", 100))),
    Case("validate: checkpoint of another class count", ["validate", "mnist", "--profile", "smoke", "--no-data", CK],
         setup=torch_file(lambda: state_dict("lenet5", 100))),
    Case("checkpoint not a state_dict", ["run", "mnist", *SMOKE, *FRESH, CK], setup=torch_file(lambda: [1, 2, 3])),
    Case("checkpoint with pickled code (torch zip)", ["run", "mnist", *SMOKE, *FRESH, CK], setup=lambda t: evil(t, True), sentinel=True),
    Case("checkpoint with pickled code (raw pickle)", ["run", "mnist", *SMOKE, *FRESH, CK], setup=lambda t: evil(t, False), sentinel=True),
    Case("unwritable runs dir (under a file)", ["run", "mnist", *SMOKE, "--runs-dir", "/etc/passwd/x"]),
    Case("full disk during a checkpoint (64 KiB tmpfs)", ["run", "mnist", *SMOKE, "--runs-dir", "{t}/full/runs", CK],
         setup=torch_file(lambda: state_dict("lenet5")), mount=True),
    Case("override without '='", ["run", "mnist", *SMOKE, *R, "budget.iterations"]),
    Case("override with a bad key path", ["run", "mnist", *SMOKE, *R, "budget..iterations=5"]),
    Case("override into a scalar", ["run", "mnist", *SMOKE, *R, "dataset.name=mnist"]),
    Case("bad --seeds list", ["run", "mnist", "--profile", "smoke", "--methods", "dfad", "--seeds", "0,one", *R]),
    Case("empty --seeds list", ["run", "mnist", "--profile", "smoke", "--methods", "dfad", "--seeds", ",", *R]),
    Case("seed given twice", ["run", "mnist", "--profile", "smoke", "--methods", "dfad", "--seeds", "0,0", *R]),
    Case("negative seed", ["run", "mnist", "--profile", "smoke", "--methods", "dfad", "--seeds=-1", *R]),
    Case("override for a method --methods leaves out", ["run", "mnist", *SMOKE, *R, "methods.dfda.lr_S=0.1"]),
    Case("validate: checkpoint path missing", ["validate", "mnist", "teacher.checkpoint={t}/none.pt"]),
    Case("validate: the suite's data is not under DFAD_DATA", ["validate", "nyuv2", "--profile", "smoke"],
         env={"DFAD_DATA": "{t}/nodata"}),
    Case("empty --methods list", ["run", "mnist", "--profile", "smoke", "--methods", ",", *R]),
    Case("malformed --params file", ["run", "mnist", *SMOKE, *R, "--params", "{t}/p.yaml"],
         setup=lambda t: (t / "p.yaml").write_text("methods: {dfad: [\n")),
    Case("report: bad --metric", ["report", "mnist", "--metric", "worst", *R]),
    Case("tune: unreachable storage URL", ["tune", "mnist", "--method", "dfad", "--profile", "smoke",
                                           "--storage", "postgresql://nobody@127.0.0.1:1/x", "--runs-dir", "{t}/tune"]),
    Case("quoted whole number in a suite file", ["run", "{t}/s.yaml", *SMOKE, *R],
         setup=suite_file(GOOD_SUITE.replace("recipe: {epochs: 10, batch_size: 256,", 'recipe: {epochs: 10, batch_size: "256",'))),
    Case("mistyped WANDB_MODE", ["run", "mnist", *SMOKE, "--seeds", "1", *R], env={"WANDB_MODE": "onlne"}),
    Case("tune: a notes file as --storage", ["tune", "mnist", "--method", "dfad", "--profile", "smoke",
                                             "--storage", "{t}/notes.txt", "--runs-dir", "{t}/tune"],
         setup=lambda t: (t / "notes.txt").write_text("my notes\n")),
    Case("tune: a study name that leaves the runs dir", ["tune", "mnist", "--method", "dfad", "--profile", "smoke",
                                                         "--study", "../escape", "--runs-dir", "{t}/tune"]),
    Case("tune: a real range over a whole-number hyperparameter",
         ["tune", "mnist", "--method", "dfad", "--profile", "smoke", "search.dfad.k.high=10.0", "--runs-dir", "{t}/tune"]),
    Case("a flag's value out of range (speed --iters 0)", ["speed", "mnist", "--profile", "smoke", "--iters", "0"]),
    Case("--launcher local: a bad DFAD_LOCAL_PARALLEL", ["run", "mnist", *SMOKE, "--seeds", "1", *R, "--launcher", "local"],
         env={"DFAD_LOCAL_PARALLEL": "two"}),
]


# ---- checks --------------------------------------------------------------------------------------
def hashes(root: Path) -> dict:
    """Every file of the finished run and the cached teacher -> sha256. Locks aside, and the suite's teacher
    record (<suite>/teacher/summary.json), which says which teacher the last invocation used."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith((".lock", ".owner")) and p.parent.name != "teacher"}


def snapshot(paths=WATCHED) -> dict:
    out = {}
    for top in paths:
        for p in [top, *(top.rglob("*") if top.is_dir() else [])]:
            try:
                st = p.lstat()
                out[str(p)] = (st.st_mtime_ns, st.st_size)
            except OSError:
                pass
    return out


def error_lines(r) -> list[str]:
    return [x for x in r.stderr.splitlines() if x.startswith("error:")]


def make_finished_run(t: Path) -> dict:
    r = dfad("run", "mnist", *SMOKE, "--runs-dir", str(t / "runs"), cwd=t)
    if r.returncode != 0:
        sys.exit(f"the finished smoke run failed:\n{r.stderr[-2000:]}")
    return hashes(t / "runs")


def try_mount(where: Path) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def run_case(case: Case, t: Path, finished: dict) -> dict:
    """One case in its own subfolder of `t` (whose runs/ holds the finished run); returns what was seen."""
    sub = Path(tempfile.mkdtemp(prefix="case-", dir=t))
    (sub / "runs").symlink_to(t / "runs")
    fill = lambda s: s.replace("{t}", str(sub))  # noqa: E731
    if case.setup:
        case.setup(sub)
    mounted = case.mount and try_mount(sub / "full")
    if case.mount and not mounted:
        return {"case": case, "skipped": "tmpfs mount not permitted here"}
    before = snapshot()
    try:
        r = dfad(*map(fill, case.args), cwd=sub, env={k: fill(v) for k, v in case.env.items()})
    finally:
        if mounted:
            subprocess.run(["umount", str(sub / "full")], check=False)
    errs, after, now = error_lines(r), snapshot(), hashes(t / "runs")
    res = {"case": case, "cmd": "dfad-bench " + " ".join(a.replace(str(sub), "$T") for a in map(fill, case.args)),
           "rc": r.returncode, "errors": errs, "traceback": "Traceback" in r.stderr,
           "outside": sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k)),
           "intact": now == finished, "changed": sorted({k for k, _ in set(now.items()) ^ set(finished.items())}),
           "executed": (sub / "PWNED").exists(),
           "message": (errs[0] if errs else (r.stderr.strip().splitlines() or ["(no output)"])[-1]).replace(str(sub), "$T")}
    res["stderr_lines"] = len([x for x in r.stderr.splitlines() if x.strip()])
    res["ok"] = (r.returncode != 0 and len(errs) == 1 and res["stderr_lines"] == 1 and not res["traceback"]
                 and not res["outside"] and res["intact"] and not res["executed"])
    return res


def header() -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return (f"commit {commit}{' (with uncommitted changes)' if dirty else ''}, "
            f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, {platform.node()}: {cpu}, "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}, user {os.getuid() == 0 and 'root' or os.getuid()}")


def write_table(results: list[dict], out: Path) -> None:
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    ok = sum(bool(r.get("ok")) for r in results)
    lines = ["# Bad input through the CLI", "", header(), "",
             f"`benchmarks/bad_inputs.py`: {len(results)} cases, {ok} gave a non-zero exit and one line on stderr, the "
             "`error:` line, with no traceback, touched nothing outside their temporary folder (data root, suite files, "
             "/etc/passwd compared by mtime and size) and left the finished smoke run's files byte-identical. "
             "`$T` is the case's temporary folder; `--profile smoke --methods dfad --no-report` and DFAD_DATA=/work/data "
             "unless the case is about data. Full disk: a real 64 KiB tmpfs mounted as the runs dir (as root).", "",
             "| # | case | command | exit | message | ok |", "|--:|:--|:--|--:|:--|:--|"]
    for i, r in enumerate(results, 1):
        c = r["case"]
        if "skipped" in r:
            lines.append(f"| {i} | {c.name} | | | skipped: {r['skipped']} | - |")
            continue
        notes = [f"{len(r['errors'])} error lines"] if len(r["errors"]) != 1 else []
        notes += ["TRACEBACK"] * r["traceback"] + [f"touched {', '.join(r['outside'][:3])}"] * bool(r["outside"])
        notes += ["finished run CHANGED"] * (not r["intact"]) + ["PICKLED CODE RAN"] * r["executed"]
        notes += ["pickled code not run"] * (c.sentinel and not r["executed"])
        cmd = esc(r["cmd"].replace(" ".join(SMOKE), "…"))
        lines.append(f"| {i} | {c.name} | `{cmd}` | {r['rc']} | {esc(r['message'])} | "
                     f"{'yes' if r['ok'] else 'NO'}{' (' + '; '.join(notes) + ')' if notes else ''} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="dfad-bad-inputs-") as tmp:
        t = Path(tmp)
        finished = make_finished_run(t)
        results = []
        for case in [c for c in CASES if not sys.argv[1:] or any(a in c.name for a in sys.argv[1:])]:
            res = run_case(case, t, finished)
            results.append(res)
            why = {k: res[k] for k in ("errors", "traceback", "outside", "changed", "executed") if k in res}
            print(f"{'ok ' if res.get('ok') else 'BAD'} {case.name}: {res.get('rc')} "
                  f"{res.get('message', res.get('skipped'))}{'' if res.get('ok') else f' {why}'}", flush=True)
    if not sys.argv[1:]:  # a selection (names as arguments) only prints
        write_table(results, REPO / "benchmarks" / "results" / "bad-inputs.md")
    return 0 if all(r.get("ok") or "skipped" in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
