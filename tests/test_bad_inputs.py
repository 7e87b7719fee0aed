"""A fast subset of benchmarks/bad_inputs.py: real `dfad-bench` subprocesses beside one finished smoke run;
each bad input exits non-zero with exactly one `error:` line, no traceback, nothing outside its temporary
folder touched, and the finished run's files byte-identical afterwards."""
import importlib.util
import re
import sys
from pathlib import Path

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("bad_inputs", REPO / "benchmarks" / "bad_inputs.py")
bad_inputs = sys.modules["bad_inputs"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
spec.loader.exec_module(bad_inputs)
CASES = {c.name: c for c in bad_inputs.CASES}
SUBSET = {  # case -> what its one error line must name
    "malformed YAML": "malformed YAML", "negative learning rate": "methods.dfad.lr_S",
    "unknown dataset": "did you mean 'mnist'", "bad --seeds list": "--seeds",
    "missing split (MNIST train only)": "test split", "checkpoint of another class count": "fc2.weight",
    "checkpoint with pickled code (torch zip)": "pickled code", "unwritable runs dir (under a file)": "not writable",
    "full disk during a checkpoint (64 KiB tmpfs)": "No space left on device",
    "CUDA graph on a CPU device": "runtime.cuda_graph=true needs a CUDA device",
    "model that cannot take the dataset's input": "cannot take mnist's input (1, 32, 32)",
    # nothing written beside the data root's decoded copies when an own dataset fails to decode
    "own dataset: a file that is not an image": "not an image torchvision or PIL can decode",
    "validate: the suite's data is not under DFAD_DATA": "data missing for 2 dataset split(s): nyuv2 test",
    "validate: checkpoint of another class count": "fc2.weight has shape (100, 84), expected (10, 84)"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    if not (bad_inputs.DATA / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists():
        pytest.skip("MNIST not under $DFAD_DATA")
    t = tmp_path_factory.mktemp("bad-inputs")
    return t, bad_inputs.make_finished_run(t)


@pytest.mark.parametrize("name", SUBSET)
def test_bad_input(finished, name):
    t, hashes = finished
    r = bad_inputs.run_case(CASES[name], t, hashes)
    if "skipped" in r:
        pytest.skip(r["skipped"])
    assert r["rc"] != 0 and len(r["errors"]) == 1 and not r["traceback"], r
    assert SUBSET[name] in r["errors"][0], r["errors"]
    assert r["intact"], r["changed"]
    assert not [p for p in r["outside"] if not decoded_by_another_test(p)] and not r["executed"], r


def decoded_by_another_test(path: str) -> bool:
    """make test runs tests in several processes (TEST_JOBS): meanwhile any of them may decode a built-in
    dataset into the shared data root's cache (`usps-test.pt`, written through a `.tmp<pid>` file). An own
    dataset's copies carry a fingerprint (`digits-<hash>-train.pt`) and are still counted."""
    p, cache = Path(path), bad_inputs.DATA / ".dfad-cache"
    return p == cache or (p.parent == cache and re.fullmatch(r"[a-z0-9_]+-(train|test)\.(pt|tmp\d+)", p.name))
