"""The paper's networks (LeNet-5, CIFAR ResNet "8x", GeneratorA) and a MAC counter.

Classifiers take `return_features=True` to also return their penultimate features (DAFL) and the
outputs of their stages (attention transfer) from the same forward pass.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from .errors import HarnessError, first_line
from .registry import MODELS
from .upconv import fusable, upsample_conv


class Features(dict):
    """`penultimate`: the features entering the classifier (what DAFL's activation term reads: LeNet-5's 120
    conv features, as DAFL's lenet.py, a ResNet's pooled features); `stages`: list of stage outputs."""


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 1.0):
        super().__init__()
        c1, c2, c3, f1 = (max(1, round(c * width)) for c in (6, 16, 120, 84))
        self.conv1 = nn.Conv2d(in_channels, c1, 5)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.conv3 = nn.Conv2d(c2, c3, 5)
        self.fc1 = nn.Linear(c3, f1)
        self.fc2 = nn.Linear(f1, num_classes)

    def forward(self, x, return_features: bool = False):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.conv3(x))
        # Inputs larger than 32x32 leave a spatial map; pool it so any size works.
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1) if x.shape[-1] > 1 else x, 1)
        out = self.fc2(F.relu(self.fc1(x)))
        if return_features:  # DAFL's lenet.py: the features are the 120 entering the classifier (fc1, fc2)
            return out, Features(penultimate=x, stages=[])
        return out


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The DFAD repo's CIFAR ResNet: 3x3 stride-1 stem, no max-pool, global average pool."""

    def __init__(self, num_blocks, num_classes=10, in_channels=3, widths=(64, 128, 256, 512)):
        super().__init__()
        self.in_planes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers = []
        for i, (w, n) in enumerate(zip(widths, num_blocks)):
            layers.append(self._make_layer(w, n, 1 if i == 0 else 2))
        self.layers = nn.ModuleList(layers)
        self.linear = nn.Linear(widths[len(num_blocks) - 1], num_classes)

    def _make_layer(self, planes, n, stride):
        blocks = []
        for s in [stride] + [1] * (n - 1):
            blocks.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x, return_features: bool = False):
        out = F.relu(self.bn1(self.conv1(x)))
        stages = []
        for layer in self.layers:
            out = layer(out)
            stages.append(out)
        # adaptive pooling == the official 4x4 avg-pool at 32x32, and still works at other sizes
        feat = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        logits = self.linear(feat)
        if return_features:
            return logits, Features(penultimate=feat, stages=stages)
        return logits


class GeneratorA(nn.Module):
    """DFAD's GeneratorA; adapts to any (C, H, W): starts at ceil(H/4) x ceil(W/4), resizes at the end.
    bn_eps: of the two BatchNorms after the convolutions (DAFL's generator has 0.8 there)."""

    def __init__(self, nz=100, ngf=64, input_shape=(1, 32, 32), bn_eps: float = 1e-5):
        super().__init__()
        nc, h, w = input_shape
        self.nz, self.out_hw = nz, (h, w)
        self.init_hw = (math.ceil(h / 4), math.ceil(w / 4))
        self.l1 = nn.Linear(nz, ngf * 2 * self.init_hw[0] * self.init_hw[1])
        self.conv_blocks0 = nn.BatchNorm2d(ngf * 2)
        self.conv_blocks1 = nn.Sequential(
            nn.Conv2d(ngf * 2, ngf * 2, 3, 1, 1), nn.BatchNorm2d(ngf * 2, bn_eps), nn.LeakyReLU(0.2, inplace=True)
        )
        self.conv_blocks2 = nn.Sequential(
            nn.Conv2d(ngf * 2, ngf, 3, 1, 1), nn.BatchNorm2d(ngf, bn_eps), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ngf, nc, 3, 1, 1), nn.Tanh(), nn.BatchNorm2d(nc, affine=False),
        )

    # True on the fast path (runtime.fused_upsample): each nearest-upsample + conv pair runs as four 2x2
    # convolutions on the small input (harness/upconv.py), 4/9 of the multiply-adds; same function
    fused_upsample = False

    def _up(self, x: torch.Tensor, block: nn.Sequential) -> torch.Tensor:
        """block(upsample(x)): conv, BatchNorm, activation, ... after a nearest 2x upsampling."""
        if self.fused_upsample and fusable(block[0]):
            return block[1:](upsample_conv(x, block[0]))
        return block(F.interpolate(x, scale_factor=2))

    def forward(self, z):
        out = self.l1(z.flatten(1)).view(z.shape[0], -1, *self.init_hw)
        if self.conv_blocks1[0].weight.is_contiguous(memory_format=torch.channels_last):
            # channels-last mode (the fast path): the view above is NCHW, and every op after it would keep
            # NCHW, where nearest upsampling and BatchNorm are several times slower than in NHWC
            out = out.contiguous(memory_format=torch.channels_last)
        img = self._up(self.conv_blocks0(out), self.conv_blocks1)
        if (4 * self.init_hw[0], 4 * self.init_hw[1]) == self.out_hw:
            return self._up(img, self.conv_blocks2)
        img = F.interpolate(F.interpolate(img, scale_factor=2), size=self.out_hw, mode="bilinear", align_corners=False)
        return self.conv_blocks2(img)


@MODELS.register("generator_dafl")
def generator_dafl(nz=100, ngf=64, input_shape=(1, 32, 32)):
    """DAFL's generator: GeneratorA whose two BatchNorms after the convolutions have eps 0.8 (DAFL's official
    `nn.BatchNorm2d(128, 0.8)`, `nn.BatchNorm2d(64, 0.8)`: the second argument is eps)."""
    return GeneratorA(nz, ngf, input_shape, bn_eps=0.8)


@MODELS.register("lenet5")
def lenet5(num_classes=10, in_channels=1, width=1.0):
    return LeNet5(num_classes, in_channels, width=width)


@MODELS.register("lenet5_half")
def lenet5_half(num_classes=10, in_channels=1):
    return LeNet5(num_classes, in_channels, width=0.5)


@MODELS.register("resnet18_8x")
def resnet18_8x(num_classes=10, in_channels=3, width=64):
    return CifarResNet([2, 2, 2, 2], num_classes, in_channels, tuple(width * m for m in (1, 2, 4, 8)))


@MODELS.register("resnet34_8x")
def resnet34_8x(num_classes=10, in_channels=3, width=64):
    return CifarResNet([3, 4, 6, 3], num_classes, in_channels, tuple(width * m for m in (1, 2, 4, 8)))


@MODELS.register("resnet8")
def resnet8(num_classes=10, in_channels=3, width=16):
    """CIFAR ResNet-8 (16-32-64): a student sized for CPU profiles."""
    return CifarResNet([1, 1, 1], num_classes, in_channels, (width, width * 2, width * 4))


@MODELS.register("resnet20")
def resnet20(num_classes=10, in_channels=3, width=16):
    """CIFAR ResNet-20 (16-32-64): a teacher sized for CPU profiles."""
    return CifarResNet([3, 3, 3], num_classes, in_channels, (width, width * 2, width * 4))


@MODELS.register("generator_a")
def generator_a(nz=100, ngf=64, input_shape=(1, 32, 32)):
    return GeneratorA(nz, ngf, tuple(input_shape))


def build_model(name: str, **kwargs) -> nn.Module:
    return MODELS.get(name)(**kwargs)


@torch.no_grad()
def check_fits(model: nn.Module, what: str, input_shape, num_classes: int | None, data: str = "the input") -> tuple:
    """A batch of 2 zeros through `model` (eval mode, on its device; its mode is restored): it must take
    `input_shape` and give (2, num_classes, ...), any number of classes when None. Returns the output's shape
    per sample, (classes, ...); otherwise a one-line HarnessError naming `what` is wrong."""
    was_training = model.training
    first = next(iter(model.parameters()), torch.empty(0))
    try:
        out = model.eval()(torch.zeros(2, *input_shape, device=first.device))
    except Exception as e:
        # half-precision weights fail on float32 input: the run autocasts, but weights must be float32
        hint = (f" (its weights are {str(first.dtype).replace('torch.', '')}: pass it as float32, e.g. model.float())"
                if first.dtype in (torch.float16, torch.bfloat16) else "")
        raise HarnessError(f"{what} cannot take {data} {tuple(input_shape)}: {type(e).__name__}: "
                           f"{first_line(e)}{hint}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() < 2 or out.shape[1] != (num_classes or out.shape[1]):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        want = f"(batch, {num_classes}, ...) for {num_classes} classes" if num_classes else "(batch, classes, ...)"
        raise HarnessError(f"{what} gives output {got} for {data} {tuple(input_shape)}, not {want}")
    return tuple(out.shape[1:])


def check_same_output(teacher_out: tuple, student_out: tuple, data: str) -> None:
    """Teacher and student must give one output shape: the losses compare them element by element (two shapes
    would broadcast into a loss over every pair of samples)."""
    if tuple(teacher_out) != tuple(student_out):
        raise HarnessError(f"teacher gives output (batch, {', '.join(map(str, teacher_out))}) and the student "
                           f"(batch, {', '.join(map(str, student_out))}) for {data}: the losses need one shape")


@torch.no_grad()
def count_macs(model: nn.Module, input_shape, batch: int = 1) -> int:
    """Multiply-accumulates of one forward pass per sample (the paper's "FLOPs" column)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.zeros(batch, *input_shape, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:  # forward only: no graph to keep
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops() // 2 // batch)


def human_macs(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            v = n / scale
            return f"{v:.2f}{unit}" if v < 10 else f"{v:.0f}{unit}" if v >= 100 else f"{v:.1f}{unit}"
    return str(int(n))


from . import seg  # noqa: E402,F401  (the Caltech101 and segmentation networks register themselves)
