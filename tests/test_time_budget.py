"""budget.time_budget_s: a run sized to the machine. The probe times the method without touching the run (its
weights, its random numbers), the count it picks fits the budget, and a resumed run keeps the count it began with."""
import csv
import json
import time

import pytest
import torch

import harness
from conftest import SMOKE_TEACHER, random_test_set
from harness.errors import HarnessError
from harness.method import Method, Params

BASE = [*SMOKE_TEACHER, "budget.iterations=40", "budget.eval_every=10", "runtime.deterministic=true",
        "tracking.wandb.mode=disabled", "methods.dfad.schedule=cosine"]


def run(runs, *overrides):
    from harness.config import load_suite
    from harness.progress import SuiteProgress
    from harness.runner import run_suite

    suite = load_suite("mnist", "smoke", [*BASE, *overrides], methods=["dfad"])
    out = run_suite(suite, runs, progress=SuiteProgress(1, live=False, stream=open("/dev/null", "w")))
    assert out.done or out.skipped, out.failed
    rd = runs / "mnist" / "dfad" / "seed-0"
    return json.loads((rd / "summary.json").read_text()), torch.load(rd / "student.pt", weights_only=True)


def metrics(runs):
    with open(runs / "mnist" / "dfad" / "seed-0" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_a_budget_below_the_cap_runs_the_iterations_chosen_with_the_schedule_over_them(runs, monkeypatch):
    chosen = {"budget_s": 600.0, "probe_s_per_iter": 0.1, "probe_eval_s": 0.1, "probe_wall_s": 1.0,
              "max_iterations": 40, "iterations": 20}
    monkeypatch.setattr("harness.runner.fit_iterations", lambda *a, **k: (20, chosen))
    summary, _ = run(runs, "budget.time_budget_s=600")
    assert summary["iterations"] == 20 and summary["time_budget"] == chosen
    rows = metrics(runs)
    assert [int(r["iteration"]) for r in rows] == [10, 20]
    # cosine over the 20 iterations run, not the cap's 40: the learning rate is spent at the last one
    assert float(rows[0]["lr_student"]) > 0 and float(rows[-1]["lr_student"]) < 1e-9
    state = torch.load(runs / "mnist" / "dfad" / "seed-0" / "checkpoint.pt", weights_only=True)
    assert state["iterations"] == 20 and state["time_budget"] == chosen


def test_a_budget_that_fits_the_cap_runs_exactly_the_fixed_run(runs, tmp_path_factory):
    """The probe runs on its own copy with the random numbers forked: the budgeted run is bit for bit the run
    of the same iterations without a budget."""
    budgeted, weights = run(runs, "budget.time_budget_s=1e6")
    tb = budgeted["time_budget"]
    assert budgeted["iterations"] == tb["iterations"] == tb["max_iterations"] == 40
    assert tb["probe_s_per_iter"] > 0 and tb["budget_s"] == 1e6
    other = tmp_path_factory.mktemp("fixed")
    import shutil

    shutil.copytree(runs / "teachers", other / "teachers")
    fixed, fixed_weights = run(other)
    assert "time_budget" not in fixed
    assert fixed["best_acc"] == budgeted["best_acc"]
    assert all(torch.equal(weights[k], fixed_weights[k]) for k in weights)
    # an unset budget leaves the run's config (and the hash of every run made before the key existed) as it was
    assert fixed["config_hash"] != budgeted["config_hash"]
    import yaml

    stored = yaml.safe_load((other / "mnist" / "dfad" / "seed-0" / "config.yaml").read_text())
    assert "time_budget_s" not in stored["budget"]


def test_a_resumed_run_keeps_the_iterations_it_planned(runs, monkeypatch):
    """No second probe on resume: the checkpoint's planned count (here raised to 50 past the 40 the cap allows)
    is the one the run finishes, and the summary keeps what the count was chosen from."""
    first, _ = run(runs, "budget.time_budget_s=1e6")
    rd = runs / "mnist" / "dfad" / "seed-0"
    state = torch.load(rd / "checkpoint.pt", weights_only=True)
    assert state["iterations"] == 40
    torch.save({**state, "iterations": 50}, rd / "checkpoint.pt")
    (rd / "summary.json").write_text(json.dumps({**first, "status": "interrupted"}))

    def probed(*a, **k):
        raise AssertionError("a resumed run was probed again")

    monkeypatch.setattr("harness.runner.fit_iterations", probed)
    second, after = run(runs, "budget.time_budget_s=1e6")
    assert second["iterations"] == 50 and second["resumed_from"] == 40
    assert second["time_budget"] == first["time_budget"]
    assert [int(r["iteration"]) for r in metrics(runs)][-2:] == [40, 50]
    # the schedule spans the 50: iterations 41-49 still learn (over the cap's 40 the cosine would be spent at 40,
    # and the student would leave them as it came)
    before = state["method"]["modules"]["student"]
    assert any(not torch.equal(before[k], v) for k, v in after.items() if v.is_floating_point())


class Sleeper(Method):
    """A method whose iteration takes a known time (a sleep), for the arithmetic of the fit."""

    name = "sleeper"

    def setup(self):
        pass

    def step(self, it):
        time.sleep(0.01)
        torch.rand(1)  # draws a random number, as every real method does
        return {}


def test_the_fit_counts_iterations_and_evaluations_and_leaves_the_rng_alone(monkeypatch):
    from harness.api import build_context
    from harness.loop import fit_iterations
    from harness.models import build_model

    def probe():
        ctx = build_context(build_model("lenet5"), build_model("lenet5_half"), (1, 32, 32), 10, 0, 10, "cpu",
                            "fp32", "off")
        return Sleeper(ctx, Params())

    monkeypatch.setattr("harness.loop.evaluate", lambda *a, **k: time.sleep(0.05))  # an evaluation takes 50 ms
    test = random_test_set((1, 32, 32))
    before = torch.get_rng_state()
    said = []
    n, info = fit_iterations(probe, test, 100000, 10, 2.0, log=said.append)
    assert torch.equal(torch.get_rng_state(), before)
    # 2 s at >= 10 ms per iteration and >= 5 ms of evaluation per iteration, with 5% to spare: at most 126
    # iterations, in whole evaluation periods
    assert 10 <= n <= 126 and n % 10 == 0 and info["iterations"] == n
    assert info["probe_s_per_iter"] >= 0.01 and info["probe_eval_s"] >= 0.05
    assert "-> " + str(n) + " iterations" in said[0]
    assert fit_iterations(probe, test, 35, 10, 1e6, log=said.append)[0] == 35  # the cap, even off the period
    assert fit_iterations(probe, test, 30, 10, 1e-3, log=said.append)[0] == 1  # nothing fits: one iteration


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def test_distill_takes_a_time_budget():
    test = random_test_set((3, 16, 16), n=64)

    def once(**budget):
        torch.manual_seed(0)
        teacher, student = TinyNet(), TinyNet()
        res = harness.distill(teacher, student, test_set=test, iterations=6, eval_every=3, batch_size=8, nz=8, ngf=4,
                              precision="fp32", **budget)
        return res, torch.cat([p.detach().flatten() for p in student.parameters()])

    res, weights = once(time_budget_s=1e6)
    assert res.iterations == res.time_budget["iterations"] == 6 and len(res.history) == 2
    plain, plain_weights = once()
    assert plain.time_budget is None
    assert torch.equal(weights, plain_weights)  # the probe trained a copy: the run is the one without a budget
    with pytest.raises(HarnessError, match="time_budget_s"):
        harness.distill(TinyNet(), TinyNet(), test_set=test, time_budget_s=0)


def test_a_cell_of_seeds_that_ran_different_iterations_says_so():
    """One budget, two machines (or moments): the seeds share a config and a cell, and the table says how far
    their iteration counts apart are."""
    import pandas as pd

    from reports.collect import aggregate

    runs = pd.DataFrame([{"method": "dfad", "seed": s, "status": "done", "best_acc": a, "final_acc": a, "reason": None,
                          "unavailable": None, "iterations": n, "config": {"budget": {"time_budget_s": 60.0}}}
                         for s, a, n in [(0, 0.80, 2750), (1, 0.82, 3000)]])
    cell = aggregate(runs, "best")
    assert cell.status == "ok" and cell.n == 2 and abs(cell.mean - 0.81) < 1e-9
    assert "2,750-3,000 iterations" in cell.note
    assert aggregate(runs.assign(iterations=3000), "best").note is None


class SlowedDown(Sleeper):
    """Steps that take 20 ms, where the probe found 10: a machine that slowed down after the probe."""

    def step(self, it):
        time.sleep(0.02)
        return {"loss": torch.zeros(())}


def _sleeper_ctx():
    from harness.api import build_context
    from harness.models import build_model

    return build_context(build_model("lenet5"), build_model("lenet5_half"), (1, 32, 32), 10, 0, 10, "cpu", "fp32",
                         "off")


@pytest.mark.parametrize("eval_every", [5, 10_000])
def test_a_run_slower_than_its_probe_stops_at_the_budget_scored(monkeypatch, eval_every):
    """The count was chosen from a probe; the run itself keeps to the budget: at an evaluation when the next period
    would end past it, or at once (and scored) when a period outlasts it."""
    from harness.loop import run_loop

    monkeypatch.setattr("harness.loop.evaluate", lambda *a, **k: 0.5)
    planned = {"budget_s": 1.2, "probe_s_per_iter": 0.01, "probe_eval_s": 0.0, "probe_wall_s": 0.2,
               "max_iterations": 1000, "iterations": 1000}
    t = time.perf_counter()
    res = run_loop(SlowedDown(_sleeper_ctx(), Params()), random_test_set((1, 32, 32)), 1000, eval_every,
                   time_budget=planned)
    took = time.perf_counter() - t
    # 1 s of the run's own (the probe took 0.2 of the 1.2) at >= 20 ms per iteration: at most 50 iterations
    assert 10 <= res.iterations <= 50 and took < 1.0 + 0.5
    assert res.history[-1]["iteration"] == res.iterations  # the last iteration run is scored
    tb = res.time_budget
    assert tb["stopped_at"] == res.iterations and tb["planned_iterations"] == 1000
    assert planned.get("stopped_at") is None  # the caller's record is not changed in place
    if eval_every == 5:  # whole periods: the stop comes at an evaluation (or, if a period ran late, between them)
        assert took < 1.0 + 0.25
        if "next evaluation period" in tb["stopped_because"]:
            assert res.iterations % 5 == 0
        else:
            assert "ran out between evaluations" in tb["stopped_because"]
    else:
        assert "ran out between evaluations" in tb["stopped_because"] and len(res.history) == 1


def test_a_run_that_keeps_its_pace_runs_its_count():
    from harness.loop import run_loop

    # 30 iterations of >= 20 ms (0.6 s) in a budget of 1.6 s (the probe took 0.2): no early stop
    planned = {"budget_s": 1.6, "probe_s_per_iter": 0.02, "probe_eval_s": 0.0, "probe_wall_s": 0.2,
               "max_iterations": 30, "iterations": 30}
    res = run_loop(SlowedDown(_sleeper_ctx(), Params()), random_test_set((1, 32, 32)), 30, 10, time_budget=planned)
    assert res.iterations == 30 and res.time_budget == planned


def test_a_teacher_slower_than_its_probe_stops_at_the_budget(monkeypatch):
    from harness.config import TeacherRecipe
    from harness.teacher import train_teacher
    from test_teacher import _tiny_net, _tiny_spec

    monkeypatch.setattr("harness.teacher.fit_epochs", lambda *a, **k: 50)  # the probe's count, too many to fit
    lines = []

    def slow(line):  # every epoch takes >= 0.1 s
        lines.append(line)
        if line.startswith("teacher epoch"):
            time.sleep(0.1)

    recipe = TeacherRecipe(epochs=50, batch_size=16, lr=0.05, time_budget_s=0.5, precision="fp32")
    _, acc, seconds, epochs = train_teacher(_tiny_net(), _tiny_spec(), recipe, torch.device("cpu"), log=slow)
    # >= 0.1 s per epoch: 5 fit in 0.5 s; the 50 planned would take >= 5 s (the margin: a loaded test machine)
    assert 1 <= epochs <= 5 and seconds < 0.5 + 1.0 and 0 <= acc <= 1
    assert any(f"stopping after epoch {epochs} of 50" in line for line in lines), lines
    assert lines[-1].startswith(f"teacher epoch {epochs}/{epochs}")
