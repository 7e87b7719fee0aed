"""harness.distill with a user's own teacher and dataset, of a shape and class count the suites never use."""
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

import harness
from harness.errors import HarnessError


class TinyNet(nn.Module):
    def __init__(self, c=2, k=7):
        super().__init__()
        self.conv = nn.Conv2d(c, 8, 3, padding=1)
        self.fc = nn.Linear(8, k)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def _data(n=64, shape=(2, 20, 24), k=7):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, *shape, generator=g), torch.randint(0, k, (n,), generator=g))


def test_distill_any_shape_and_classes():
    torch.manual_seed(0)
    teacher, student = TinyNet(), TinyNet()
    before = [p.clone() for p in student.parameters()]
    res = harness.distill(teacher, student, method="dfad", test_set=_data(), seed=0,
                          iterations=6, eval_every=3, batch_size=8, nz=16, ngf=4, precision="fp32")
    assert [r["iteration"] for r in res.history] == [3, 6]
    assert res.final_acc == res.history[-1]["test_acc"]
    assert res.best_acc == max(r["test_acc"] for r in res.history)
    assert all(0 <= r["test_acc"] <= 1 for r in res.history)
    assert res.student is student
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    # the teacher is frozen: no parameter of it may change or ask for gradients
    assert all(not p.requires_grad for p in teacher.parameters())


def test_distill_kd_with_user_train_set():
    torch.manual_seed(0)
    res = harness.distill(TinyNet(), TinyNet(), method="kd_ori", test_set=_data(), train_set=_data(128),
                          iterations=4, eval_every=2, batch_size=16, precision="fp32")
    assert len(res.history) == 2 and "loss_S" in res.history[0]


def test_distill_same_seed_same_result():
    def once():
        torch.manual_seed(123)
        t, s = TinyNet(), TinyNet()
        harness.distill(t, s, test_set=_data(), seed=1, iterations=4, eval_every=2, batch_size=8, nz=8, ngf=4,
                        precision="fp32", channels_last="off")
        return torch.cat([p.flatten() for p in s.parameters()])

    torch.testing.assert_close(once(), once())


def test_distill_rejects_bad_hyperparameters():
    import pytest

    with pytest.raises(HarnessError, match="batch_size"):
        harness.distill(TinyNet(), TinyNet(), test_set=_data(), batch_size=0)
    with pytest.raises(HarnessError, match="unknown key"):
        harness.distill(TinyNet(), TinyNet(), test_set=_data(), lr_s=0.1)
    with pytest.raises(HarnessError, match="did you mean 'dfad'"):
        harness.distill(TinyNet(), TinyNet(), method="dfda", test_set=_data())


def test_distill_names_a_model_that_does_not_fit():
    """Checked before anything is built or trained, with the argument that disagrees named."""
    cases = [
        (TinyNet(), TinyNet(k=5), {}, "student gives output (2, 5) for input_shape (2, 20, 24), not (batch, 7, ...)"),
        (TinyNet(), TinyNet(c=3), {}, "student cannot take input_shape (2, 20, 24): RuntimeError"),
        (TinyNet(), TinyNet(), {"num_classes": 9}, "teacher gives output (2, 7) for input_shape (2, 20, 24), not (batch, 9"),
    ]
    for teacher, student, kw, fragment in cases:
        student.train()
        try:
            harness.distill(teacher, student, method="dfad", test_set=_data(), iterations=2, batch_size=8, **kw)
        except HarnessError as e:
            assert fragment in str(e) and "\n" not in str(e), str(e)
        else:
            raise AssertionError(f"no error for {fragment!r}")
        assert student.training  # the check leaves the model's mode as it was


def test_test_set_as_pil_images_or_a_dataloader():
    """What users hand over: torchvision datasets without a transform (PIL images) and DataLoaders."""
    from PIL import Image
    from torch.utils.data import DataLoader

    from harness.data import materialize

    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (6, 3, 5, 4), dtype=torch.uint8, generator=g)
    pil = [(Image.fromarray(im.permute(1, 2, 0).numpy()), i % 3) for i, im in enumerate(imgs)]
    a = materialize(pil)
    assert torch.equal(a.x, imgs.float() / 255) and a.y.tolist() == [0, 1, 2, 0, 1, 2]  # as ToTensor gives them
    b = materialize(DataLoader([(im.float(), i) for i, im in enumerate(imgs)], batch_size=4))
    assert torch.equal(b.x, imgs.float()) and b.y.tolist() == list(range(6))
    res = harness.distill(TinyNet(c=3, k=3), TinyNet(c=3, k=3), method="kd_ori", test_set=pil, train_set=pil,
                          iterations=2, eval_every=2, batch_size=2, precision="fp32")
    assert [r["iteration"] for r in res.history] == [2]  # KD on a PIL train set
    seg = materialize([(torch.zeros(3, 4, 4), torch.ones(4, 4, dtype=torch.long))] * 3)  # label maps stay maps
    assert seg.metric == "miou" and tuple(seg.y.shape) == (3, 4, 4)
    for bad in ([("an image", 1)], [(torch.zeros(3, 8, 8), 0), (torch.zeros(3, 9, 9), 1)], [1, 2]):
        try:
            materialize(bad)
        except HarnessError as e:
            assert str(e).startswith("test_set: expected (image, label) pairs") and "\n" not in str(e)
        else:
            raise AssertionError(f"no error for {bad!r}")
