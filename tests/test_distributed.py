"""Two `dfad-bench tune` workers, as on two machines, sharing one study on a real PostgreSQL server
(Debian's package, started on loopback in a temporary folder). `make test-distributed` runs it."""
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.distributed
REPO = Path(__file__).resolve().parent.parent
TINY = ["teacher.recipe.train_subset=2000", "teacher.recipe.precision=fp32", "runtime.precision=fp32",
        "budget.iterations=4", "budget.eval_every=2", "search.dfad.batch_size.choices=[8,16]",
        "search.dfad.nz.choices=[16,32]", "search.dfad.k.high=2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdb:
        pytest.skip("PostgreSQL server not installed (apt-get install -y postgresql; make test-distributed does)")
    pytest.importorskip("psycopg", reason="pip install -e '.[distributed]'")
    bindir = Path(initdb[-1]).parent
    # the server refuses to run as root: run it as the package's postgres user, in a folder it owns
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="dfad-pg-"))
    data, port = root / "data", free_port()
    if as_user:
        shutil.chown(root, "postgres", "postgres")
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True)  # noqa: E731
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "start", "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off")
        run(str(bindir / "psql") if (bindir / "psql").exists() else "psql", "-h", "127.0.0.1", "-p", str(port),
            "-U", "postgres", "-c", "CREATE DATABASE optuna")
        yield f"postgresql://postgres@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_record_every_trial_once(postgres, tmp_path, mnist_data):
    import optuna
    import torch

    from harness.config import load_suite
    from harness.teacher import ensure_teacher
    from harness.tune import open_storage

    ensure_teacher(load_suite("mnist", "smoke", TINY), tmp_path, torch.device("cpu"), log=lambda *_: None)
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "harness.cli", "tune", "mnist", "--method", "dfad", "--profile", "smoke",
           "--trials", "3", "--storage", postgres, "--study", "pg", "--runs-dir", str(tmp_path), *TINY]
    workers = [subprocess.Popen([*cmd, "--seed", str(i)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(outs)

    trials = optuna.load_study(study_name="pg", storage=open_storage(postgres, tmp_path, "pg")).trials
    assert sorted(t.number for t in trials) == list(range(6))  # every trial recorded, once
    assert len({t._trial_id for t in trials}) == 6
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert len({t.user_attrs["wandb_id"] for t in trials}) == 6
