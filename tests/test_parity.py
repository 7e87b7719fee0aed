"""benchmarks/parity.py: the default-vs-plain accuracy comparison reads both stores and judges the 1-point rule."""
import importlib.util

import pytest

from conftest import REPO
from harness.store import Store

spec = importlib.util.spec_from_file_location("parity", REPO / "benchmarks" / "parity.py")
parity = importlib.util.module_from_spec(spec)
spec.loader.exec_module(parity)


def _store(root, accs, precision, unfinished_seed=None):
    store = Store(root, "mnist")
    for seed, acc in enumerate(accs):
        rd = store.run("dfad", seed)
        rd.path.mkdir(parents=True)
        rd.write_summary({"status": "done", "best_acc": acc, "final_acc": acc - 0.001, "precision": precision,
                          "git_commit": "abcdef0123", "s_per_iter": 0.5})
    if unfinished_seed is not None:
        rd = store.run("dfad", unfinished_seed)
        rd.path.mkdir(parents=True)
        rd.write_summary({"status": "running", "precision": precision})
        rd.write_metrics([{"iteration": 50, "test_acc": 0.5}, {"iteration": 100, "test_acc": 0.8}])


@pytest.mark.parametrize("plain,verdict", [([0.975, 0.970, 0.965], "+0.50 points**, within 1 point"),
                                           ([0.965, 0.960, 0.955], "+1.50 points**, NOT within 1 point")])
def test_parity_means_and_verdict(tmp_path, plain, verdict):
    _store(tmp_path / "d", [0.98, 0.975, 0.97], "bfloat16")
    _store(tmp_path / "p", plain, "fp32")
    text = parity.parity("mnist", str(tmp_path / "d"), str(tmp_path / "p"))
    assert "default: mean best accuracy **0.9750 ± 0.0050** (n = 3" in text
    assert verdict in text
    assert text.count("| done |") == 6 and "n = 3 only" not in text and "n = 2 only" not in text


def test_parity_shows_unfinished_runs_and_small_n(tmp_path):
    _store(tmp_path / "d", [0.98, 0.975, 0.97], "bfloat16")
    _store(tmp_path / "p", [0.97, 0.97], "fp32", unfinished_seed=2)
    text = parity.parity("mnist", str(tmp_path / "d"), str(tmp_path / "p"))
    assert "| plain | 2 | running (iteration 100) | - |" in text
    assert "(n = 2 only: the issue asks for n = 3)" in text
