"""Networks of the paper's Caltech101 and segmentation rows, and mIoU.

The torchvision-based ones live in `tvnets.py` and are registered here by name: that module (and torchvision,
~1.4 s to import) loads only when one of them is built, so CLI commands that build none start faster.

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

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import MODELS, lazy

for _name in ("deeplabv3_resnet50", "deeplabv3_mobilenetv2", "resnet34_tv", "resnet18_tv"):
    MODELS.register(_name)(lazy(f"harness.tvnets:{_name}"))


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
def generator_b(nz=256, ngf=64, input_shape=(3, 128, 128)):
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
