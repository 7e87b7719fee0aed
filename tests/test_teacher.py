"""Teacher checkpoints: weights only, never code; wrong files are one-line errors."""
import os

import pytest
import torch

from harness.errors import HarnessError
from harness.models import build_model
from harness.teacher import load_weights


def test_loads_state_dict_and_wrapped_dicts(tmp_path):
    src = build_model("lenet5")
    for i, obj in enumerate([src.state_dict(), {"state_dict": src.state_dict()},
                             {"model": {f"module.{k}": v for k, v in src.state_dict().items()}}]):
        path = tmp_path / f"t{i}.pt"
        torch.save(obj, path)
        dst = load_weights(build_model("lenet5"), path)
        for a, b in zip(src.parameters(), dst.parameters()):
            assert torch.equal(a, b)


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/dfad-pwned",))


@pytest.mark.parametrize("case,fragment", [
    ("missing", "does not exist"),
    ("text", "not a torch file"),
    ("pickle", "pickled code"),
    ("arch", "does not fit"),
    ("classes", "has shape"),
])
def test_bad_checkpoints(tmp_path, case, fragment):
    path = tmp_path / "t.pt"
    if case == "text":
        path.write_text("hello")
    elif case == "pickle":
        torch.save({"w": Evil()}, path)
    elif case == "arch":
        torch.save(build_model("resnet8").state_dict(), path)
    elif case == "classes":
        torch.save(build_model("lenet5", num_classes=100).state_dict(), path)
    with pytest.raises(HarnessError) as e:
        load_weights(build_model("lenet5"), path)
    assert fragment in str(e.value) and "\n" not in str(e.value)
    assert not os.path.exists("/tmp/dfad-pwned")
