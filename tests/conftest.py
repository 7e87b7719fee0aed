import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
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
