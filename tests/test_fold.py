"""Folding the frozen teacher's BatchNorm into its convolutions: the same function, fewer kernels."""
import pytest
import torch
from torch import nn

from harness.fold import fold_batchnorm
from harness.models import build_model


def _teacher(name="resnet8", dtype=torch.float64):
    torch.manual_seed(0)
    m = build_model(name, num_classes=10)
    for mod in m.modules():  # BN statistics far from the identity, so a wrong fold shows
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.3, 3)
            nn.init.uniform_(mod.weight, 0.5, 1.5)
            nn.init.uniform_(mod.bias, -0.5, 0.5)
    return m.to(dtype).eval().requires_grad_(False)


def test_folded_teacher_is_the_same_function_with_no_batchnorm_left():
    m = _teacher()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    f, n = fold_batchnorm(m)
    assert n == sum(isinstance(x, nn.BatchNorm2d) for x in m.modules()) > 0
    assert not any(isinstance(x, nn.BatchNorm2d) for x in f.modules())
    assert not any(p.requires_grad for p in f.parameters())
    x = torch.randn(6, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(f(x), m(x), rtol=1e-10, atol=1e-10)
        (lo, fo), (lm, fm) = f(x, return_features=True), m(x, return_features=True)  # ZSKT / DAFL features
    torch.testing.assert_close(fo["penultimate"], fm["penultimate"], rtol=1e-10, atol=1e-10)
    for a, b in zip(fo["stages"], fm["stages"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # the generator's gradient flows through the teacher to its input: the same gradient
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    f(xa).square().sum().backward()
    m(xb).square().sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-9, atol=1e-10)
    for k, v in m.state_dict().items():  # the caller's model is untouched
        assert torch.equal(v, before[k]), k


class Shared(nn.Module):
    """conv1's output feeds its BN and a skip; bn2 is called twice: neither may be folded. conv3 -> bn3 may."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv3, self.bn3 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        a = self.conv1(x)
        y = self.bn1(a) + a
        y = self.bn2(self.bn2(self.conv2(y)))
        return self.bn3(self.conv3(y))


class Dynamic(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent: fx cannot trace it
            return self.bn(self.conv(x))
        return self.conv(x)


def test_only_safe_pairs_are_folded_and_untraceable_models_are_left_alone():
    m = Shared().eval()
    for bn in (m.bn1, m.bn2, m.bn3):
        bn.running_mean.uniform_(-1, 1)
    f, n = fold_batchnorm(m)
    assert n == 1 and isinstance(f.bn3, nn.Identity)
    assert isinstance(f.bn1, nn.BatchNorm2d) and isinstance(f.bn2, nn.BatchNorm2d)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(f(x), m(x), rtol=1e-5, atol=1e-5)
    d = Dynamic().eval()
    same, n = fold_batchnorm(d)
    assert same is d and n == 0
    # a BatchNorm that keeps no running statistics normalises with each batch's, in eval mode too
    batchwise = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    same, n = fold_batchnorm(batchwise)
    assert same is batchwise and n == 0


@pytest.mark.parametrize("method,fast,switch,folded", [("dfad", True, True, True), ("dfad", False, True, False),
                                                       ("dfad", True, False, False), ("dfq", True, True, False)])
def test_the_fast_path_folds_unless_the_method_reads_bn(method, fast, switch, folded):
    from harness.api import build_context, make_method

    t = _teacher(dtype=torch.float32)
    ctx = build_context(t, build_model("resnet8", num_classes=10), (3, 32, 32), 10, 0, 4, "cpu", "fp32", "off",
                        fast=fast, fold_teacher_bn=switch)
    m = make_method(method, ctx, {"batch_size": 4, "nz": 8, "ngf": 4})
    m.setup()
    m.step(0)
    has_bn = any(isinstance(x, nn.BatchNorm2d) for x in ctx.teacher.modules())
    assert (ctx.teacher_bn_folded > 0) == folded and has_bn == (not folded)
    assert any(isinstance(x, nn.BatchNorm2d) for x in t.modules())  # the caller's teacher keeps its layers


def test_with_compile_the_teacher_the_method_runs_is_compiled():
    """runtime.compile: the folded copy is what gets compiled (a copy of a compiled module is not compiled)."""
    from harness.api import build_context, make_method

    ctx = build_context(_teacher(dtype=torch.float32), build_model("resnet8", num_classes=10), (3, 32, 32), 10, 0,
                        4, "cpu", "fp32", "off", compile=True)
    make_method("dfad", ctx, {"batch_size": 4, "nz": 8, "ngf": 4})
    assert ctx.teacher_bn_folded > 0
    assert getattr(ctx.teacher, "_compiled_call_impl", None) is not None
    assert getattr(ctx.student, "_compiled_call_impl", None) is not None
