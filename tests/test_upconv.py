"""The fused nearest-upsample + 3x3 conv is the same function, with the same gradients, as the two ops."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from harness.models import GeneratorA
from harness.upconv import fusable, upsample_conv


def _grads(fn, x, conv, g):
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    params = [x, conv.weight] + ([conv.bias] if conv.bias is not None else [])
    return y, torch.autograd.grad(y, params, g)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape,cout,bias", [((2, 5, 4, 4), 3, True), ((3, 4, 5, 7), 6, False), ((1, 2, 1, 1), 2, True)])
def test_upsample_conv_matches_interpolate_then_conv(shape, cout, bias, channels_last):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(shape[1], cout, 3, 1, 1, bias=bias).double()
    x = torch.randn(*shape, dtype=torch.double)
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    y_ref = conv(F.interpolate(x, scale_factor=2))
    g = torch.randn_like(y_ref)
    y_ref, g_ref = _grads(lambda t: conv(F.interpolate(t, scale_factor=2)), x, conv, g)
    y, g_fused = _grads(lambda t: upsample_conv(t, conv), x, conv, g)
    torch.testing.assert_close(y, y_ref)
    for a, b in zip(g_fused, g_ref):
        torch.testing.assert_close(a, b)
    # keeps the input's layout, so the fast path stays channels-last and the plain one NCHW (1x1 is both)
    assert shape[2] * shape[3] == 1 or y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_fusable_only_for_3x3_stride1_pad1():
    assert fusable(torch.nn.Conv2d(4, 4, 3, 1, 1))
    assert not fusable(torch.nn.Conv2d(4, 4, 3, 2, 1))
    assert not fusable(torch.nn.Conv2d(4, 4, 5, 1, 2))
    assert not fusable(torch.nn.Conv2d(4, 4, 3, 1, 1, groups=2))
    assert not fusable(torch.nn.Conv2d(4, 4, 3, 1, 1, padding_mode="reflect"))


@pytest.mark.parametrize("input_shape", [(1, 32, 32), (3, 30, 26)])  # 30x26: the second pair is not fused
def test_fused_generator_same_output_and_grads(input_shape):
    torch.manual_seed(0)
    g = GeneratorA(nz=16, ngf=8, input_shape=input_shape).double()
    fused = copy.deepcopy(g)
    fused.fused_upsample = True
    z = torch.randn(4, 16, dtype=torch.double)
    a, b = g(z), fused(z)
    torch.testing.assert_close(b, a)
    a.square().sum().backward()
    b.square().sum().backward()
    for p, q in zip(g.parameters(), fused.parameters()):
        torch.testing.assert_close(q.grad, p.grad)


def test_fused_generator_executes_fewer_multiply_adds():
    g = GeneratorA(nz=16, ngf=16, input_shape=(1, 32, 32))
    z = torch.randn(2, 16)

    def flops(m):
        with FlopCounterMode(display=False) as fc:
            m(z)
        return fc.get_total_flops()

    plain = flops(g)
    g.fused_upsample = True
    # the two upsample+conv pairs run at 4/9 of the taps (plus a one-pixel border); the last conv is unchanged
    assert flops(g) < 0.7 * plain
