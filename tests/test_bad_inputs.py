"""A fast subset of benchmarks/bad_inputs.py: each case a `dfad-bench` process of its own (forked from one that
imported the harness once: cliproc; the script itself starts the console script) beside one finished smoke run;
each bad input exits non-zero with one line on stderr, the `error:` line, no traceback, nothing outside its temporary
folder touched, and the finished run's files byte-identical afterwards."""
import atexit
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

import cliproc
from conftest import REPO


def private_data_root() -> Path:
    """The data root's datasets linked into a folder of this test process's own: `make test` runs tests in
    several processes, and another one may decode a dataset into the shared root's cache while a case here
    checks that nothing outside its temporary folder was written."""
    shared = Path(os.environ.get("DFAD_DATA", "/work/data"))
    root = Path(tempfile.mkdtemp(prefix="dfad-bad-inputs-data-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    for entry in shared.iterdir() if shared.is_dir() else []:
        if entry.name != ".dfad-cache":
            (root / entry.name).symlink_to(entry)
    return root


spec = importlib.util.spec_from_file_location("bad_inputs", REPO / "benchmarks" / "bad_inputs.py")
bad_inputs = sys.modules["bad_inputs"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
_shared = os.environ.get("DFAD_DATA")
os.environ["DFAD_DATA"] = str(private_data_root())  # read once, by the module: its cases' DFAD_DATA
try:
    spec.loader.exec_module(bad_inputs)
finally:
    if _shared is None:
        del os.environ["DFAD_DATA"]
    else:
        os.environ["DFAD_DATA"] = _shared
bad_inputs.dfad = lambda *args, cwd, env=None, timeout=300: cliproc.run(args, env=bad_inputs.cli_env(env), cwd=cwd,
                                                                         timeout=timeout)
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
    "validate: checkpoint of another class count": "fc2.weight has shape (100, 84), expected (10, 84)",
    "checkpoint of junk bytes": "not a torch file (neither a zip archive nor a pickle)",
    "model kwarg the model does not take": "unexpected keyword argument 'widht'",
    "checkpoint missing, no --profile (its note goes to stdout)": "none.pt does not exist"}


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
    assert r["rc"] != 0 and len(r["errors"]) == 1 and r["stderr_lines"] == 1 and not r["traceback"], r
    assert SUBSET[name] in r["errors"][0], r["errors"]
    assert r["intact"], r["changed"]
    assert not r["outside"] and not r["executed"], r
