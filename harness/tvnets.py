"""torchvision-based networks (registered by name in `seg.py`, imported only when one is built).

See `seg.py` for what each is and which suite uses it.
"""
from __future__ import annotations

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabHead, DeepLabV3

from .models import Features


class DeepLab(DeepLabV3):
    """torchvision's DeepLabV3 (same state_dict keys, no aux head) returning the upsampled logits tensor."""

    def forward(self, x, return_features: bool = False):
        f = self.backbone(x)
        f = f["out"] if isinstance(f, dict) else f
        *body, last = self.classifier  # up to the last 1x1 conv: DAFL's "penultimate features"
        feat = f
        for m in body:
            feat = m(feat)
        out = F.interpolate(last(feat), size=x.shape[-2:], mode="bilinear", align_corners=False)
        if return_features:
            return out, Features(penultimate=feat, stages=[])
        return out


_said_scratch = False


def _local_imagenet_weights(weights) -> bool:
    """True when torchvision's weight file is already in the torch hub cache (never downloads)."""
    from pathlib import Path

    return (Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name).is_file()


def deeplabv3_resnet50(num_classes=11, in_channels=3, pretrained_backbone=True):
    global _said_scratch
    from torchvision.models import ResNet50_Weights

    w = ResNet50_Weights.IMAGENET1K_V1
    use = pretrained_backbone and _local_imagenet_weights(w)
    if pretrained_backbone and not use and not _said_scratch:
        _said_scratch = True
        print(f"note: ImageNet weights for ResNet-50 are not in {torch.hub.get_dir()}/checkpoints; "
              f"DeepLabV3-ResNet50 trains from scratch", file=sys.stderr)
    tv = torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=w if use else None, num_classes=num_classes, aux_loss=False)
    model = DeepLab(tv.backbone, tv.classifier)
    model.summary_info = {"teacher_backbone": "imagenet" if use else "scratch"}  # the runner records it
    return model


def dilate(features: nn.Sequential, output_stride: int) -> nn.Sequential:
    """Trade the strides past `output_stride` for dilation (DeepLab's atrous backbone), in place."""
    stride, rate = 1, 1
    for m in features.modules():  # Sequential order is forward order
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
            if m.stride == (2, 2):
                if stride >= output_stride:
                    m.stride, rate = (1, 1), rate * 2
                else:
                    stride *= 2
            if rate > 1:
                m.dilation, m.padding = (rate, rate), (rate, rate)
    return features


def deeplabv3_mobilenetv2(num_classes=11, in_channels=3, width=1.0, head_channels=256, output_stride=8):
    features = torchvision.models.mobilenet_v2(width_mult=width).features[:-1]  # ends at 320 (x width) channels
    c = features[-1].out_channels
    rates = (12, 24, 36) if output_stride == 8 else (6, 12, 18)
    if head_channels == 256:
        head = DeepLabHead(c, num_classes, rates)
    else:  # DeepLabHead's layers with a narrower ASPP (smoke profiles)
        k = head_channels
        head = nn.Sequential(ASPP(c, rates, k), nn.Conv2d(k, k, 3, padding=1, bias=False), nn.BatchNorm2d(k),
                             nn.ReLU(), nn.Conv2d(k, num_classes, 1))
    return DeepLab(dilate(features, output_stride), head)


class TVResNet(torchvision.models.ResNet):
    """torchvision's ResNet with `return_features` (penultimate features and stage outputs)."""

    def forward(self, x, return_features: bool = False):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        stages = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            stages.append(x)
        feat = torch.flatten(self.avgpool(x), 1)
        out = self.fc(feat)
        return (out, Features(penultimate=feat, stages=stages)) if return_features else out


def tv_resnet(blocks, num_classes, width=64, in_channels=3) -> TVResNet:
    """torchvision's ResNet; `width` != 64 rebuilds it with stages width x (1, 2, 4, 8) (CPU and smoke profiles),
    and `in_channels` != 3 its first convolution."""
    from torchvision.models.resnet import BasicBlock

    m = TVResNet(BasicBlock, blocks, num_classes=num_classes)
    if width != 64:
        m.inplanes = width
        m.conv1, m.bn1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width)
        for i, n in enumerate(blocks):
            setattr(m, f"layer{i + 1}", m._make_layer(BasicBlock, width * 2 ** i, n, stride=1 if i == 0 else 2))
        m.fc = nn.Linear(width * 8, num_classes)
        for mod in m.modules():  # torchvision's initialisation for the rebuilt layers
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
    elif in_channels != 3:
        m.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        nn.init.kaiming_normal_(m.conv1.weight, mode="fan_out", nonlinearity="relu")
    return m


def resnet34_tv(num_classes=101, in_channels=3, width=64):
    return tv_resnet([3, 4, 6, 3], num_classes, width, in_channels)


def resnet18_tv(num_classes=101, in_channels=3, width=64):
    return tv_resnet([2, 2, 2, 2], num_classes, width, in_channels)
