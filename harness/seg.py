"""Networks of the paper's Caltech101 and segmentation rows, built from torchvision's parts, and mIoU.

- `deeplabv3_resnet50`: torchvision's DeepLabV3-ResNet50 (output stride 8), the segmentation teacher.
  Its ImageNet backbone is used only when torchvision's weight file is already in the local torch hub
  cache (nothing is downloaded); otherwise it trains from scratch, said once on stderr and recorded in
  run summaries as `teacher_backbone`.
- `deeplabv3_mobilenetv2`: torchvision's mobilenet_v2 features (without the final 1x1 conv to 1280,
  dilated to output stride 8, as the official student) + torchvision's DeepLabHead; `width` and
  `head_channels` make tiny copies for smoke profiles.
- `resnet34_tv` / `resnet18_tv`: torchvision's ImageNet ResNets (Caltech101 at 128x128).
- `generator_b`: DCGAN-style GeneratorB. Segmentation models return plain logits (N, K, H, W).
"""
from __future__ import annotations

import math
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabHead, DeepLabV3

from .models import Features
from .registry import MODELS


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


@MODELS.register("deeplabv3_resnet50")
def deeplabv3_resnet50(num_classes=11, in_channels=3, pretrained_backbone=True, **_):
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


@MODELS.register("deeplabv3_mobilenetv2")
def deeplabv3_mobilenetv2(num_classes=11, in_channels=3, width=1.0, head_channels=256, output_stride=8, **_):
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


def tv_resnet(blocks, num_classes, width=64) -> TVResNet:
    """torchvision's ResNet; `width` != 64 rebuilds it with stages width x (1, 2, 4, 8) (CPU and smoke profiles)."""
    from torchvision.models.resnet import BasicBlock

    m = TVResNet(BasicBlock, blocks, num_classes=num_classes)
    if width != 64:
        m.inplanes = width
        m.conv1, m.bn1 = nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width)
        for i, n in enumerate(blocks):
            setattr(m, f"layer{i + 1}", m._make_layer(BasicBlock, width * 2 ** i, n, stride=1 if i == 0 else 2))
        m.fc = nn.Linear(width * 8, num_classes)
        for mod in m.modules():  # torchvision's initialisation for the rebuilt layers
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
    return m


@MODELS.register("resnet34_tv")
def resnet34_tv(num_classes=101, in_channels=3, width=64, **_):
    return tv_resnet([3, 4, 6, 3], num_classes, width)


@MODELS.register("resnet18_tv")
def resnet18_tv(num_classes=101, in_channels=3, width=64, **_):
    return tv_resnet([2, 2, 2, 2], num_classes, width)


class GeneratorB(nn.Module):
    """DFAD's GeneratorB (DCGAN): Linear(nz -> 8ngf x H/16 x W/16), four stride-2 transposed convs
    (8ngf -> 4ngf -> 2ngf -> ngf -> ngf), conv -> tanh. Any (C, H, W): starts at ceil(H/16) x ceil(W/16),
    resizes at the end when H or W is not a multiple of 16."""

    def __init__(self, nz=256, ngf=64, input_shape=(3, 128, 128), slope=0.2):
        super().__init__()
        nc, h, w = input_shape
        self.out_hw, self.init_hw = (h, w), (math.ceil(h / 16), math.ceil(w / 16))
        self.project = nn.Linear(nz, ngf * 8 * self.init_hw[0] * self.init_hw[1])
        layers = [nn.BatchNorm2d(ngf * 8)]
        for cin, cout in ((8, 4), (4, 2), (2, 1), (1, 1)):
            layers += [nn.ConvTranspose2d(ngf * cin, ngf * cout, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * cout),
                       nn.LeakyReLU(slope, inplace=True)]
        self.main = nn.Sequential(*layers)
        self.out = nn.Sequential(nn.Conv2d(ngf, nc, 3, 1, 1), nn.Tanh())
        for m in self.modules():  # DCGAN initialisation, as the official GeneratorB
            if isinstance(m, (nn.ConvTranspose2d, nn.Linear, nn.Conv2d)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, z):
        img = self.main(self.project(z.flatten(1)).view(z.shape[0], -1, *self.init_hw))
        if tuple(img.shape[-2:]) != self.out_hw:
            img = F.interpolate(img, size=self.out_hw, mode="bilinear", align_corners=False)
        return self.out(img)


@MODELS.register("generator_b")
def generator_b(nz=256, ngf=64, input_shape=(3, 128, 128), **_):
    return GeneratorB(nz, ngf, tuple(input_shape))


def confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """K x K counts (rows: truth); pixels whose label is outside [0, K) (void: 11, 255) are left out."""
    keep = (target >= 0) & (target < num_classes)
    idx = target[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def miou_from_confusion(cm: torch.Tensor) -> float:
    """Mean over classes of TP / (TP + FP + FN); classes absent from both truth and prediction are skipped."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    present = union > 0
    return (tp[present] / union[present]).mean().item() if present.any() else 0.0


@torch.no_grad()
def evaluate_miou(model: nn.Module, data, device, autocast=None, batch_size: int = 1000,
                  channels_last: bool = False) -> float:
    """mIoU over the whole test set (one confusion matrix, as the official StreamSegMetrics)."""
    from .loop import predictions

    # as many pixels per batch as `batch_size` 32x32 images: 11 of CamVid's 256x341 images
    bs = max(1, batch_size * 1024 // (data.x.shape[-2] * data.x.shape[-1]))
    cm = None
    for out, y in predictions(model, data, device, autocast, bs, channels_last):
        c = confusion(out.argmax(1), y, out.shape[1])
        cm = c if cm is None else cm + c
    return miou_from_confusion(cm) if cm is not None else 0.0
