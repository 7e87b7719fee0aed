"""W&B tracking: real offline runs in a temporary folder, read back from W&B's own transaction log."""
import json
import shutil

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.errors import HarnessError
from harness.tracking import find_run, read_run, redact

# a small fp32 teacher and a 4-iteration budget: seconds on a shared 2-core CPU
from conftest import SMOKE_TEACHER as TEACHER  # noqa: E402
TINY = TEACHER + ["runtime.precision=fp32", "budget.iterations=4", "budget.eval_every=2", "methods.dfad.batch_size=8",
                  "methods.dfad.k=1", "tracking.wandb.sample_every=2", "tracking.wandb.samples=16"]


def cli_run(runs, *extra):
    res = CliRunner().invoke(app, ["run", "mnist", "--profile", "smoke", "--methods", "dfad", "--seeds", "0",
                                   "--runs-dir", str(runs), "--no-report", *TINY, *extra])
    assert res.exit_code == 0, res.output
    return json.loads((runs / "mnist" / "dfad" / "seed-0" / "summary.json").read_text())


def test_run_is_an_offline_wandb_run(runs):
    summary = cli_run(runs)
    assert summary["status"] == "done" and summary["wandb_mode"] == "offline"
    rec = read_run(find_run(runs, summary["wandb_id"]))
    assert rec["run"] == {"id": summary["wandb_id"], "project": "dfad-bench", "group": "mnist", "job_type": "dfad",
                          "name": "dfad-seed0"}
    cfg = rec["config"]
    assert (cfg["dataset"], cfg["method"], cfg["seed"], cfg["profile"]) == ("mnist", "dfad", 0, "smoke")
    assert cfg["params"]["batch_size"] == 8 and cfg["budget"]["iterations"] == 4
    rows = rec["history"]
    assert [r["iteration"] for r in rows] == [2, 4]
    assert {"test_acc", "elapsed_s", "loss_S", "loss_G", "lr_student"} <= set(rows[0])
    assert rows[0]["samples"]["_type"] == "image-file"  # the first evaluation carries a sample grid
    assert rows[-1]["test_acc"] == summary["final_acc"]
    s = rec["summary"]
    assert s["best_acc"] == summary["best_acc"] and s["teacher_acc"] == summary["teacher_acc"]
    assert s["wall_time_s"] == summary["wall_time_s"] and s["status"] == "done"
    assert rec["exit_code"] == 0
    grids = list((runs / "wandb").glob(f"*-{summary['wandb_id']}/files/media/images/samples_*.png"))
    assert grids


def test_a_resumed_run_names_its_earlier_wandb_runs(runs):
    """Offline W&B cannot resume a run: the attempt that continues an interrupted run is a new W&B run whose
    config and summary.json name the earlier ones."""
    first = cli_run(runs)
    path = runs / "mnist" / "dfad" / "seed-0" / "summary.json"
    path.write_text(json.dumps({**first, "status": "interrupted"}))  # as Ctrl-C leaves it, checkpoint kept
    second = cli_run(runs)
    assert second["status"] == "done" and second["wandb_id"] != first["wandb_id"]
    assert second["wandb_resumed_from"] == [first["wandb_id"]]
    assert read_run(find_run(runs, second["wandb_id"]))["config"]["resumed_from"] == [first["wandb_id"]]
    assert second["best_acc"] == first["best_acc"]  # resumed, not retrained
    assert second["fused_upsample"] is True  # DFAD's generator fuses upsample+conv on the default path


def test_disabled_tracking_changes_nothing_it_computes(runs, tmp_path_factory):
    tracked = cli_run(runs)
    other = runs / "untracked"
    shutil.copytree(runs / "teachers", other / "teachers")
    plain = cli_run(other, "tracking.wandb.mode=disabled")
    assert "wandb_id" not in plain
    assert not (other / "wandb").exists()
    # sampling for the grids forks the RNG, so a tracked run learns exactly what an untracked one does
    read = lambda d: (d / "mnist" / "dfad" / "seed-0" / "metrics.csv").read_text().splitlines()  # noqa: E731
    col = lambda lines: [ln.split(",")[1] for ln in lines]  # noqa: E731  (test_acc)
    assert col(read(runs)) == col(read(other))
    assert tracked["best_acc"] == plain["best_acc"]


def test_online_without_a_server_falls_back_offline_once(runs, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("HOME", str(runs))  # no ~/.netrc: no key, so online fails at once
    import harness.tracking as tr

    monkeypatch.setattr(tr, "_warned", set())
    monkeypatch.setattr(tr, "_warned_online", [])
    from harness.config import load_suite

    suite = load_suite("mnist", "smoke", TINY)
    t = tr.WandbTracker(suite, runs)
    cfg = suite.run_config("dfad", 0)
    extra = t.on_run_start(None, cfg, {})
    t.on_eval({"iteration": 2, "test_acc": 0.5}, None)
    t.on_run_end({"status": "done", "best_acc": 0.5})
    t2 = tr.WandbTracker(suite, runs)
    assert t2.on_run_start(None, cfg, {})["wandb_mode"] == "offline"
    t2.on_run_end({"status": "failed"})
    assert extra["wandb_mode"] == "offline"
    assert capsys.readouterr().err.count("W&B online unavailable") == 1
    rec = read_run(find_run(runs, extra["wandb_id"]))
    assert rec["history"][0]["test_acc"] == 0.5 and rec["summary"]["best_acc"] == 0.5  # nothing lost


def test_secrets_never_reach_wandb():
    d = redact({"api_key": "abc", "storage": "postgresql://bob:hunter2@db:5432/optuna", "nested": {"token": 1}})
    assert d["api_key"] == "<redacted>" and d["nested"]["token"] == "<redacted>"
    assert "hunter2" not in d["storage"] and "bob" in d["storage"]


def test_tracking_section_is_validated():
    from harness.config import load_suite

    assert load_suite("mnist", "smoke").tracking.wandb.mode is None
    with pytest.raises(HarnessError, match="tracking.wandb.mode"):
        load_suite("mnist", "smoke", ["tracking.wandb.mode=sometimes"])
    with pytest.raises(HarnessError, match="tracking.wandb.colour: unknown key"):
        load_suite("mnist", "smoke", ["tracking.wandb.colour=red"])


def test_a_mistyped_wandb_mode_is_an_error_not_offline(monkeypatch):
    from harness.config import WandbCfg
    from harness.errors import HarnessError
    from harness.tracking import resolve_mode

    monkeypatch.delenv("WANDB_DISABLED", raising=False)
    for env, mode in (("dryrun", "offline"), ("run", "online"), ("Disabled", "disabled"), ("", "offline")):
        monkeypatch.setenv("WANDB_MODE", env)
        assert resolve_mode(WandbCfg()) == mode
    monkeypatch.setenv("WANDB_MODE", "onlne")
    with pytest.raises(HarnessError, match="WANDB_MODE='onlne': choose online, offline or disabled"):
        resolve_mode(WandbCfg())
    assert resolve_mode(WandbCfg(mode="disabled")) == "disabled"  # the suite's own setting wins
