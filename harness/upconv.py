"""Nearest 2x upsampling followed by a 3x3 convolution (padding 1), computed without the upsampled tensor.

Each output pixel (2i+a, 2j+b) of conv(upsample(x)) sees only a 2x2 window of x: along each axis the three
kernel taps fall on two input rows, so phase a=0 uses rows (i-1, i) with weights (w0, w1+w2) and phase a=1
rows (i, i+1) with weights (w0+w1, w2). The four phases are one 2x2 convolution of the once-padded x with
4*Cout output channels, interleaved back into the 2x larger image: 4/9 of the multiply-adds, and neither
the upsampled input nor its gradient is ever written. Same function, same gradients (up to rounding);
GeneratorA uses it on the fast path (`runtime.fused_upsample`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _phase_taps(w: torch.Tensor, dim: int) -> torch.Tensor:
    """(.., 3, ..) -> (2 phases, .., 2, ..): the two effective taps of each phase along `dim`."""
    t0, t1, t2 = w.unbind(dim)
    return torch.stack([torch.stack([t0, t1 + t2], dim), torch.stack([t0 + t1, t2], dim)])


def phase_weight(w: torch.Tensor) -> torch.Tensor:
    """(Cout, Cin, 3, 3) -> (4*Cout, Cin, 2, 2), output channels ordered (row phase, column phase, Cout).

    Plain additions in the weight's dtype (fp32), so autocast rounds each summed tap once, in the convolution."""
    rows = _phase_taps(w, 2)                      # (2a, Cout, Cin, 2, 3)
    k = _phase_taps(rows, 4)                      # (2b, 2a, Cout, Cin, 2, 2)
    return k.transpose(0, 1).reshape(-1, *w.shape[1:2], 2, 2)


class _Interleave(torch.autograd.Function):
    """(N, 4*Cout, h+1, w+1) phase maps -> (N, Cout, 2h, 2w) image, channels-last in memory.

    Phase (a, b) of output pixel (i, j) sits at (i+a, j+b) of its map. Hand-written backward: autograd's
    would allocate and sum one full-size zero tensor per phase."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, h: int, w: int) -> torch.Tensor:
        n, c4 = y.shape[:2]
        co = c4 // 4
        y6 = y.permute(0, 2, 3, 1).unflatten(3, (2, 2, co))
        out = y.new_empty(n, h, 2, w, 2, co)
        for a in (0, 1):
            for b in (0, 1):
                out[:, :, a, :, b] = y6[:, a:a + h, b:b + w, a, b]
        ctx.y_shape, ctx.hw = y.shape, (h, w)
        return out.view(n, 2 * h, 2 * w, co).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        h, w = ctx.hw
        n, c4, hp, wp = ctx.y_shape
        co = c4 // 4
        g6 = g.permute(0, 2, 3, 1).reshape(n, h, 2, w, 2, co)
        gy = g.new_zeros(n, hp, wp, 2, 2, co)
        for a in (0, 1):
            for b in (0, 1):
                gy[:, a:a + h, b:b + w, a, b] = g6[:, :, a, :, b]
        return gy.view(n, hp, wp, c4).permute(0, 3, 1, 2), None, None


def upsample_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """conv(F.interpolate(x, scale_factor=2)) for a 3x3, stride-1, padding-1, ungrouped conv."""
    n, _, h, w = x.shape
    bias = conv.bias.repeat(4) if conv.bias is not None else None
    y = F.conv2d(x, phase_weight(conv.weight), bias, padding=1)
    out = _Interleave.apply(y, h, w)
    return out if x.is_contiguous(memory_format=torch.channels_last) else out.contiguous()


def fusable(conv: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")
