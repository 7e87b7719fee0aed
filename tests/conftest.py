import os
from pathlib import Path

import pytest
import torch

# Each test process (pytest-xdist: `make test` runs TEST_JOBS of them) takes its share of the cores, and so do the
# runs and subprocesses it starts (OMP_NUM_THREADS, unless a test sets its own): two processes of two threads each
# on two cores made every test slower than one thread each.
THREADS = max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
REPO = Path(__file__).resolve().parent.parent


def mnist_root() -> Path | None:
    root = Path(os.environ.get("DFAD_DATA", REPO / "data"))
    return root if (root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists() else None


@pytest.fixture
def mnist_data():
    root = mnist_root()
    if root is None:
        pytest.skip("MNIST not under $DFAD_DATA (run ../shared/data/prepare.sh DIR and set DFAD_DATA=DIR)")
    return root


def random_test_set(shape, n=32, k=10):
    """A fixed random labelled set: enough for the runner to evaluate, with no data files."""
    from harness.data import ImageTensors

    g = torch.Generator().manual_seed(0)
    return ImageTensors(torch.randn(n, *shape, generator=g), torch.randint(0, k, (n,), generator=g))


def save_image(img: torch.Tensor, path, quality: int = 75) -> None:
    """A uint8 (C, H, W) tensor as an image file, by its suffix (PIL: torchvision 0.29 deprecates its encoders)."""
    from PIL import Image

    a = img.permute(1, 2, 0).numpy()
    Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(path, quality=quality)


class FixedTeacher:
    """What the runner takes as its teacher: a model and its accuracy, without training one."""

    def __init__(self, model, acc=0.5):
        self.model, self.acc = model, acc


# A small fp32 smoke teacher, trained once per session and copied into each runs dir (tracking, tune tests)
SMOKE_TEACHER = ["teacher.recipe.train_subset=2000", "teacher.recipe.precision=fp32"]


@pytest.fixture
def runs(tmp_path, tmp_path_factory, mnist_data, monkeypatch):
    """A runs dir holding the cached smoke teacher, with no W&B settings inherited from the shell."""
    import shutil

    from harness.config import load_suite
    from harness.teacher import ensure_teacher

    for var in ("WANDB_MODE", "WANDB_DISABLED", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    cache = tmp_path_factory.getbasetemp() / "smoke-teachers"
    if not (cache / "teachers").is_dir():
        ensure_teacher(load_suite("mnist", "smoke", SMOKE_TEACHER), cache, torch.device("cpu"), log=lambda *_: None)
    shutil.copytree(cache / "teachers", tmp_path / "teachers", dirs_exist_ok=True)
    return tmp_path
