"""Datasets as cached uint8 tensors under the data root (`DFAD_DATA`), batched and augmented on the device.

Built-in datasets load once through torchvision (downloading where the network allows, or from the
ImageFolder layout `<root>/<name>/{train,test}/<class>/`), then live in memory as uint8 tensors.
"""
from __future__ import annotations

import contextvars
import functools
import hashlib
import json
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from .errors import HarnessError, MissingDataError, first_line
from .registry import DATASETS, normalize


def data_root() -> Path:
    return Path(os.environ.get("DFAD_DATA", "./data")).expanduser()


@dataclass
class ImageTensors:
    """Images (uint8 in [0,255], or float already normalised) and labels, plus how to normalise them."""

    x: torch.Tensor
    y: torch.Tensor
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    metric: str = "acc"  # "miou": labels are (N, H, W) maps, scored by mIoU (harness/seg.py)

    def __len__(self):
        return len(self.y)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            return x.float()
        x = x.float().div_(255)
        if self.mean is not None:
            m, s = _stats(tuple(self.mean), tuple(self.std), x.device)
            x = (x - m) / s
        return x

    def to(self, device) -> "ImageTensors":
        return ImageTensors(self.x.to(device), self.y.to(device), self.mean, self.std, self.metric)

    def adapt(self, input_shape) -> "ImageTensors":
        """Same images in another shape: channels repeated or averaged, resized to H x W."""
        c, h, w = input_shape
        x = self.x
        if x.shape[1] != c:
            xf = x.float()
            xf = xf.mean(1, keepdim=True) if c == 1 else xf[:, :1].expand(-1, c, -1, -1)
            x = xf.round().to(self.x.dtype) if self.x.dtype == torch.uint8 else xf
        if tuple(x.shape[-2:]) != (h, w):
            x = resize(x, (h, w))
        return ImageTensors(x, self.y, self.mean, self.std, self.metric)

    def with_stats(self, mean, std) -> "ImageTensors":
        return ImageTensors(self.x, self.y, mean, std, self.metric)


def resize(x: torch.Tensor, hw) -> torch.Tensor:
    out = []
    for chunk in x.split(4096):
        r = F.interpolate(chunk.float(), size=tuple(hw), mode="bilinear", align_corners=False, antialias=True)
        out.append(r.round().clamp(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else r)
    return torch.cat(out)


def image_grid(x: torch.Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 0.0) -> torch.Tensor:
    """(B, C, H, W) images tiled into one (C, H', W') image, `nrow` per row, `padding` pixels around each: the
    layout of torchvision.utils.make_grid (tested against it), without importing torchvision, which costs a
    process over a second (its ops import torch._dynamo)."""
    b, c, h, w = x.shape
    if b == 1:  # make_grid's one image: unpadded
        return x[0]
    cols = min(nrow, b)
    rows = -(-b // cols)
    grid = x.new_full((c, rows * (h + padding) + padding, cols * (w + padding) + padding), pad_value)
    for i, img in enumerate(x):
        top, left = (i // cols) * (h + padding) + padding, (i % cols) * (w + padding) + padding
        grid[:, top:top + h, left:left + w] = img
    return grid


def metric_word(metric: str) -> str:
    """How progress lines name a dataset's metric ("acc" or "miou", DatasetSpec.metric)."""
    return "mIoU" if metric == "miou" else "acc"


@dataclass
class DatasetSpec:
    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    loader: Callable[[Path, str], tuple[torch.Tensor, torch.Tensor]]
    augment: str = "none"  # "crop_flip": random 4-px-padded crop and horizontal flip (CIFAR)
    how_to_get: str = ""
    splits: tuple[str, ...] = field(default=("train", "test"))
    metric: str = "acc"  # "acc" | "miou" (segmentation: void labels ignored); the loop's evaluate dispatches on it
    cache_name: str = ""  # the decoded tensors' file name under <root>/.dfad-cache; default: the name
    downloads: bool = False  # torchvision fetches it when it is not under the root (and DFAD_DOWNLOAD allows)
    folder: Path | None = None  # a suite's own image folder (`datasets:`), read from there, not from the root

    def __post_init__(self):
        self.cache_name = self.cache_name or self.name

    def load(self, split: str, root: Path | None = None) -> ImageTensors:
        root = Path(root) if root is not None else data_root()
        try:
            x, y = cached(self.cache_name, split, root, lambda: self.loader(root, split))
        except MissingDataError as e:  # name the split: a root may hold train but not test
            raise MissingDataError(f"{e}; needed for its {split} split") from None
        return ImageTensors(x, y, self.mean, self.std, self.metric)


def cached(name: str, split: str, root: Path, load) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode once, then keep the tensors beside the data (when the root is writable)."""
    path = root / ".dfad-cache" / f"{name}-{split}.pt"
    if path.exists():
        try:
            d = torch.load(path, weights_only=True)
            return d["x"], d["y"]
        except Exception:
            path.unlink(missing_ok=True)
    x, y = load()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"x": x, "y": y}, tmp)
        os.replace(tmp, path)
    except OSError:
        pass
    return x, y


_reading_only = contextvars.ContextVar("dfad_reading_only", default=False)  # set while checking, not running


def download_allowed() -> bool:
    return not _reading_only.get() and os.environ.get("DFAD_DOWNLOAD", "1") not in ("0", "false", "no")


def missing_split(name: str, split: str) -> str | None:
    """Why a dataset's split cannot be read from the data root (None: it can). Decodes and caches it as a run
    would (once); never downloads."""
    spec = get_dataset(name)
    if (data_root() / ".dfad-cache" / f"{spec.cache_name}-{split}.pt").is_file():
        return None
    token = _reading_only.set(True)
    try:
        spec.load(split)
        return None
    except MissingDataError as e:
        return first_line(e)
    finally:
        _reading_only.reset(token)


def _torchvision(name: str, cls, root: Path, how: str, **kw):
    try:
        return cls(str(root), download=False, **kw)
    except (RuntimeError, FileNotFoundError):
        pass
    if download_allowed():
        try:
            return cls(str(root), download=True, **kw)
        except Exception:
            pass
    raise MissingDataError(f"dataset {name!r} not found under {root} ({how})")


def _stack_pil(ds) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.transforms.functional import pil_to_tensor

    xs, ys = zip(*((pil_to_tensor(img), int(t)) for img, t in ds))
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long)


def _image_folder(root: Path, classes: list[str] | None = None, hw: tuple[int, int] | None = None,
                  channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """`<root>/<class>/<image>` decoded: labels follow `classes` (default: root's subfolders, sorted; a
    subfolder not among them is an error), images resized to `hw` where given, 1 or 3 channels."""
    found = _class_dirs(root)
    classes = found if classes is None else classes
    extra = sorted(set(found) - set(classes))
    if extra:
        raise HarnessError(f"{root}: class folder(s) {', '.join(extra[:3])} not in the training classes")
    xs, ys, skipped, nested = [], [], [], 0
    for label, c in enumerate(classes):
        images, others = _class_files(root / c)
        skipped += others
        nested += sum(f.parent != root / c for f in images)
        for f in images:
            img = decode_file(f, channels)
            xs.append(img if hw is None or tuple(img.shape[-2:]) == hw else resize(img[None], hw)[0])
            ys.append(label)
    if nested:  # said: before, subfolders were skipped, and a user may keep rejects in one
        print(f"note: {root}: {nested} image(s) in subfolders of class folders read as their class's (as "
              f"ImageFolder reads them)", file=sys.stderr)
    if skipped:  # said, so that images under a name the list lacks are not lost unnoticed
        print(f"note: {root}: {len(skipped)} file(s) not named as images skipped (e.g. {skipped[0].name}; "
              f"read: {', '.join(IMAGE_SUFFIXES)})", file=sys.stderr)
    if not xs:
        raise MissingDataError(f"no images under {root}/<class>/")
    if hw is None and len({tuple(x.shape) for x in xs}) > 1:
        raise HarnessError(f"{root}: images of different sizes ({', '.join(sorted({str(tuple(x.shape)) for x in xs})[:3])}); "
                           f"give the dataset a size to resize them to")
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long)


# what torchvision's ImageFolder reads (and JPEG's other names); other files in a class folder are skipped
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff",
                  ".webp", ".gif")


def _pil_uint8(im) -> torch.Tensor:
    """A 16-bit, 32-bit integer or float PIL image (TIFF) as 1 x H x W uint8, scaled: PIL's own convert("L")
    clips at 255 instead. 16-bit ranges map 0..65535 to 0..255, floats 0..1 (or their own maximum)."""
    import numpy as np

    a = np.asarray(im, dtype=np.float64)
    top = a.max() if a.size else 1.0
    if im.mode == "F":
        scale = 1.0 if top <= 1 else top
    else:
        scale = 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
    return torch.from_numpy(np.clip(np.round(a / scale * 255), 0, 255).astype(np.uint8))[None]


def _os_file(f: Path) -> bool:
    """Hidden files and the OS's own (thumbnails, folder settings): skipped without a word."""
    return f.name.startswith(".") or f.name.lower() in ("thumbs.db", "desktop.ini")


def _image_name(name: str) -> bool:
    """Image files by name (hidden ones are not)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def _is_image_file(f: Path) -> bool:
    return _image_name(f.name) and f.is_file()


def _walk(d: Path) -> Iterator[tuple[Path, list[str]]]:
    """A folder and its subfolders as (folder, its file names sorted), in os.walk's order, following symlinks as
    ImageFolder does but entering each real folder once, and none of `d`'s own parents (a link to `.` or `..`
    would loop), hidden folders (e.g. Jupyter's .ipynb_checkpoints) left out."""
    above = set()
    for p in Path(d).resolve().parents:
        try:
            st = p.stat()
            above.add((st.st_dev, st.st_ino))
        except OSError:
            pass
    seen = set()
    for top, dirs, files in os.walk(d, followlinks=True):
        try:
            st = os.stat(top)
        except OSError:
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen or (st.st_dev, st.st_ino) in above:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        yield Path(top), sorted(files)


def _class_dirs(split: Path) -> list[str]:
    """The class folders of a split folder, sorted; hidden ones (.ipynb_checkpoints) are not classes."""
    return sorted(p.name for p in split.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_files(d: Path) -> tuple[list[Path], list[Path]]:
    """A class folder's image files, in its subfolders too, in ImageFolder's order (the folder's own files
    sorted, then each subfolder's), and the other files there (skipped)."""
    images, others = [], []
    for top, files in sorted(_walk(d), key=lambda t: str(t[0])):
        for f in (top / name for name in files):
            if _is_image_file(f):
                images.append(f)
            elif f.is_file() and not _os_file(f):
                others.append(f)
    return images, others


def _subfolder_stamps(class_dir: Path) -> list:
    """(relative path, mtime) of a class folder's subfolders, when any holds an image (adding or removing an
    image there changes them); [] when none does, as before subfolders were read."""
    subs = sorted(_walk(class_dir), key=lambda t: str(t[0]))[1:]
    if not any(_image_name(f) for _, files in subs for f in files):
        return []
    return [(str(top.relative_to(class_dir.parent)), top.stat().st_mtime_ns) for top, _ in subs]


def _has_image(d: Path) -> bool:
    """Whether a class folder holds an image file, its subfolders included: stops at the first one."""
    return any(_image_name(f) and (top / f).is_file() for top, files in _walk(d) for f in files)


def _torchvision_decode(f: Path, channels: int) -> torch.Tensor:
    """torchvision's decoders (libjpeg-turbo, libpng): fast, and the pixels every cache so far was made from. From
    0.29 they warn that TorchCodec supersedes them; where a torchvision drops them, the import fails and
    decode_file reads with PIL."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The image decoding and encoding capabilities of TorchVision are deprecated",
                                DeprecationWarning)
        return decode_image(read_file(str(f)), mode=ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB)


def decode_file(f: Path, channels: int) -> torch.Tensor:
    """One image file as uint8 (channels, H, W): torchvision's decoders, PIL for the formats they lack (BMP,
    TIFF); 16-bit images scaled to 8 bits, an animation's first frame, gray, RGB and alpha made `channels`."""
    import torchvision.transforms.v2.functional as TF

    try:
        img = _torchvision_decode(f, channels)
    except Exception:
        try:
            from PIL import Image

            with Image.open(f) as im:  # the first frame
                img = _pil_uint8(im) if im.mode.startswith("I") or im.mode == "F" else TF.pil_to_tensor(
                    im.convert("L" if channels == 1 else "RGB"))
        except Exception as e:
            why = "too large (PIL's decompression-bomb limit)" if "decompression bomb" in str(e).lower() else \
                "not an image torchvision or PIL can decode"
            raise HarnessError(f"{f}: {why}") from None
    if img.dim() == 4:  # an animated GIF: its first frame
        img = img[0]
    if img.dtype != torch.uint8:  # 16-bit PNGs: 0..65535 -> 0..255, as 8-bit images are stored
        img = TF.to_dtype(img, torch.uint8, scale=True)
    if img.shape[0] in (2, 4):  # gray or RGB with alpha, where a decoder kept it
        img = img[:-1]
    if img.shape[0] != channels:  # GIF and WebP decoders give RGB whatever mode is asked for
        img = TF.rgb_to_grayscale(img) if channels == 1 else TF.grayscale_to_rgb(img)
    return img.contiguous()


_OWN: set[str] = set()  # names registered from suites' `datasets:` sections


def is_builtin(name: str) -> bool:
    return name in DATASETS and normalize(name) not in _OWN


# True while stored runs are read (reports): a suite's own dataset folder need not be there any more, nor the
# data a method would train on (config.validate)
READING_STORED_RUNS: contextvars.ContextVar[bool] = contextvars.ContextVar("reading_stored_runs", default=False)


def register_folder(name: str, cfg) -> DatasetSpec:
    """A suite's own dataset (config.FolderDataCfg) registered under `name`. Its cache name carries a
    fingerprint of the folder, size, channels, classes and the class folders' modification times, so
    adding or removing images (or resizing) decodes afresh. Under READING_STORED_RUNS a folder that is gone
    or wrong registers a stand-in whose every load raises the error."""
    try:
        return _register_folder(name, cfg)
    except HarnessError as e:
        if not READING_STORED_RUNS.get():
            raise

        def unavailable(root, split, e=e):
            raise e

        _OWN.add(normalize(name))
        return DATASETS.replace(name, DatasetSpec(
            name, (cfg.channels, *cfg.size), 0, tuple(cfg.mean or [0.5] * cfg.channels),
            tuple(cfg.std or [0.5] * cfg.channels), unavailable, cfg.augment, cache_name=f"{name}-unavailable"))


def _register_folder(name: str, cfg) -> DatasetSpec:
    folder = Path(cfg.folder).expanduser().resolve()
    layout = f"expects {folder}/{{train,test}}/<class>/<image>"
    train = folder / "train"
    if not train.is_dir():
        raise MissingDataError(f"dataset {name!r}: no folder {train} ({layout})")
    classes = _class_dirs(train)
    if not classes:
        raise MissingDataError(f"dataset {name!r}: no class folders under {train} ({layout})")
    empty = [c for c in classes if not _has_image(train / c)]
    if empty:  # an extra output for a class with no images; often a copy still running
        raise HarnessError(f"dataset {name!r}: class folder(s) {', '.join(empty[:3])} under {train} have no images")
    test = folder / "test"
    if not test.is_dir():
        raise MissingDataError(f"dataset {name!r}: no folder {test} ({layout})")
    extra = sorted(set(_class_dirs(test)) - set(classes))
    if extra:
        raise HarnessError(f"dataset {name!r}: class folder(s) {', '.join(extra[:3])} under {test} "
                           f"are not among the training classes")
    h, w = cfg.size
    key = _fingerprint(folder, (h, w), cfg.channels)
    source = json.dumps([name, str(folder), [h, w], cfg.channels])  # the same decoding of the folder, any contents

    def load(root: Path, split: str):
        if _fingerprint(folder, (h, w), cfg.channels) != key:  # the runs' configs name the contents read at the start
            raise HarnessError(f"dataset {name!r}: {folder} changed (images or classes added or removed) since the "
                               f"suite was read; run it again")
        drop_stale_caches(root, f"{name}-{key}", source)
        out = _folder_split(folder, split, classes, (h, w), cfg.channels)
        note_source(root, f"{name}-{key}", source)  # only once decoded: a folder that fails to decode leaves nothing
        return out

    spec = DatasetSpec(name, (cfg.channels, h, w), len(classes), tuple(cfg.mean or [0.5] * cfg.channels),
                       tuple(cfg.std or [0.5] * cfg.channels), load, cfg.augment, how_to_get=layout,
                       cache_name=f"{name}-{key}", folder=folder)
    _OWN.add(normalize(name))
    return DATASETS.replace(name, spec)


def _fingerprint(folder: Path, hw: tuple[int, int], channels: int) -> str:
    """The folder's classes and their folders' modification times, with the decoding's size and channels."""
    classes = _class_dirs(folder / "train")
    dirs = [folder / split / c for split in ("train", "test") if (folder / split).is_dir()
            for c in _class_dirs(folder / split)]
    stamps = [(p.name, p.stat().st_mtime_ns) for p in dirs]
    nested = [s for p in dirs for s in _subfolder_stamps(p)]
    # only where class folders have subfolders: the fingerprint (and so cached copies, teachers and finished runs)
    # of every flat dataset stays what it was before subfolders were read
    key = [str(folder), list(hw), channels, classes, stamps] + ([nested] if nested else [])
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:12]


def drop_stale_caches(root: Path, cache_name: str, source: str) -> None:
    """Before a folder dataset is decoded afresh: the decoded copies of the folder's earlier contents (same
    name, folder, size and channels; another fingerprint) are deleted, so edits to a dataset do not pile up
    copies in the cache. A `.source` file beside each copy says what it was decoded from."""
    d = root / ".dfad-cache"
    for side in d.glob("*.source"):
        try:  # another process may be doing the same
            if side.stem != cache_name and side.read_text() == source:
                for f in d.glob(f"{side.stem}-*.pt"):
                    f.unlink(missing_ok=True)
                side.unlink(missing_ok=True)
        except OSError:
            pass


def note_source(root: Path, cache_name: str, source: str) -> None:
    """The `.source` file drop_stale_caches reads, beside a decoded copy."""
    try:
        d = root / ".dfad-cache"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{cache_name}.source").write_text(source)
    except OSError:  # a read-only data root keeps no cache at all
        pass


def _folder_split(folder: Path, split: str, classes: list[str], hw: tuple[int, int], channels: int):
    d = folder / split
    if not d.is_dir():
        raise MissingDataError(f"no folder {d} (expects {folder}/{{train,test}}/<class>/<image>)")
    return _image_folder(d, classes, hw, channels)


def _mnist(root: Path, split: str):
    from torchvision.datasets import MNIST

    ds = _torchvision("mnist", MNIST, root, f"expects {root}/MNIST/raw/*-ubyte; set DFAD_DATA", train=split == "train")
    x = ds.data.unsqueeze(1)
    return resize(x, (32, 32)), ds.targets.long()  # the official pipeline's Resize(32)


def _usps(root: Path, split: str):
    from torchvision.datasets import USPS

    ds = _torchvision("usps", USPS, root / "usps", f"expects {root}/usps/usps.bz2 and usps.t.bz2", train=split == "train")
    x, y = _stack_pil(ds)
    return resize(x, (32, 32)), y


def _usps_framed(root: Path, split: str):
    """USPS in MNIST's frame: USPS digits fill their 16x16 image, MNIST's sit in the central 20x20 of
    28x28 (their ink is 23 px tall on average in the 32x32 the models see; USPS resized to 32: 31.6 px),
    so scale to 23x23 and pad with background to 32x32 (ink 22.7 px tall)."""
    x, y = cached("usps", split, root, lambda: _usps(root, split))
    return F.pad(resize(x, (23, 23)), (5, 4, 5, 4)), y


def _cifar(name: str, cls_name: str):
    def load(root: Path, split: str):
        folder = root / name / split
        if folder.is_dir():
            return _image_folder(folder)
        import torchvision.datasets as tvd

        ds = _torchvision(name, getattr(tvd, cls_name), root,
                          f"expects {folder}/<class>/*.jpg or torchvision's {cls_name} files; set DFAD_DATA",
                          train=split == "train")
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return x, torch.tensor(ds.targets, dtype=torch.long)

    return load


MNIST_STATS = ((0.1307,), (0.3081,))
CIFAR_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))

DATASETS.register("mnist")(DatasetSpec("mnist", (1, 32, 32), 10, *MNIST_STATS, _mnist, downloads=True))
DATASETS.register("usps")(DatasetSpec("usps", (1, 32, 32), 10, *MNIST_STATS, _usps, downloads=True))
DATASETS.register("usps_framed")(DatasetSpec("usps_framed", (1, 32, 32), 10, *MNIST_STATS, _usps_framed, downloads=True))
DATASETS.register("cifar10")(DatasetSpec("cifar10", (3, 32, 32), 10, *CIFAR_STATS, _cifar("cifar10", "CIFAR10"), "crop_flip", downloads=True))
DATASETS.register("cifar100")(DatasetSpec("cifar100", (3, 32, 32), 100, *CIFAR_STATS, _cifar("cifar100", "CIFAR100"), "crop_flip", downloads=True))


def get_dataset(name: str) -> DatasetSpec:
    return DATASETS.get(name)


@functools.lru_cache(maxsize=64)
def _stats(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A dataset's mean and std as (1, C, 1, 1) tensors on the device, made once: a copy to a GPU per batch
    would wait for the GPU each time."""
    return (torch.tensor(mean, device=device).view(1, -1, 1, 1), torch.tensor(std, device=device).view(1, -1, 1, 1))


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor (the random draws of a batch's augmentation) on the device without waiting for it:
    from pinned memory, asynchronously, where the device is a GPU."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Batched random crop (zero padding) and horizontal flip, on whatever device x lives."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)  # drawn on the CPU (the generator's stream), then
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)  # one copy to the device for all three
    flip = torch.rand(n, generator=gen) < 0.5
    dy, dx, flip = to_device(torch.stack([dy, dx, flip.long()]), x.device)
    flip = flip.bool()
    iy = (dy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(n, c, h, padded.shape[3])
    rows = padded.gather(2, iy)
    ix = (dx.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w).expand(n, c, h, w)
    out = rows.gather(3, ix)
    return torch.where(flip.view(n, 1, 1, 1), out.flip(3), out)


# augment name -> fn(x, y, gen) -> (x, y), for datasets whose labels move with the image (harness/segdata.py)
PAIRED_AUGMENTS: dict[str, Callable] = {}


class TensorBatches:
    """Endless shuffled batches from ImageTensors, normalised (and augmented) on the device."""

    def __init__(self, data: ImageTensors, batch_size: int, device, seed: int = 0, augment: str = "none"):
        self.data = data.to(device)
        self.batch_size = min(batch_size, len(data))
        self.augment = augment
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        self._perm, self._pos = None, len(data)

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        if self._pos + self.batch_size > len(self.data):
            self._perm = torch.randperm(len(self.data), generator=self.gen).to(self.data.x.device)
            self._pos = 0
        idx = self._perm[self._pos: self._pos + self.batch_size]
        self._pos += self.batch_size
        x, y = self.data.x[idx], self.data.y[idx]
        if self.augment == "crop_flip":
            x = crop_flip(x, self.gen)
        elif self.augment in PAIRED_AUGMENTS:  # dense labels: the same crop/flip for image and label map
            x, y = PAIRED_AUGMENTS[self.augment](x, y, self.gen)
        return self.data.normalize(x), y

    def state_dict(self):
        return {"gen": self.gen.get_state(), "perm": self._perm, "pos": self._pos}

    def load_state_dict(self, s):
        self.gen.set_state(s["gen"].cpu())  # a CPU generator, whatever device the state was loaded onto
        self._perm = s["perm"].to(self.data.x.device) if s["perm"] is not None else None
        self._pos = s["pos"]


class LoaderBatches:
    """Endless batches from a user's torch Dataset (its own transforms kept), or from their DataLoader as it is."""

    def __init__(self, dataset: Dataset, batch_size: int, device, seed: int = 0, workers: int = 0):
        if isinstance(dataset, DataLoader):
            self.loader = dataset
        else:
            n = len(dataset) if hasattr(dataset, "__len__") else None
            if n == 0:
                raise HarnessError("train_set is empty")
            shuffle = not isinstance(dataset, IterableDataset)  # a stream comes in its own order
            g = torch.Generator().manual_seed(seed) if shuffle else None
            # a set smaller than the batch gives batches of all of it (drop_last would give none)
            self.loader = DataLoader(dataset, batch_size=min(batch_size, n or batch_size), shuffle=shuffle,
                                     drop_last=True, generator=g, num_workers=workers,
                                     pin_memory=torch.device(device).type == "cuda",
                                     collate_fn=checked_collate)  # PIL images as ToTensor makes them, as for test sets
        self.device = device
        self._it = iter(self.loader)

    def __iter__(self):
        return self

    def __next__(self):
        try:
            x, y = next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            try:
                x, y = next(self._it)
            except StopIteration:
                raise HarnessError("train_set gives no batches") from None
        if isinstance(y, torch.Tensor):  # labels as they come (KD reads only the teacher), a label column squeezed
            y = y.to(self.device, non_blocking=True)
            y = y[:, 0] if y.dim() == 2 and y.shape[1] == 1 else y
        return float_images(x.to(self.device, non_blocking=True)), y

    def state_dict(self):
        return {}

    def load_state_dict(self, s):
        pass


def materialize(dataset, batch_size: int = 512, what: str = "test_set") -> ImageTensors:
    """A user's (image, label) pairs as tensors, once, for fast repeated evaluation: from a Dataset or a
    DataLoader's batches. Images are float tensors (as the teacher takes them), uint8 tensors or PIL images,
    both scaled to [0, 1] as torchvision's ToTensor does; labels are class indices, (N,) or (N, 1), or label
    maps (N, H, W). Anything else is a one-line error."""
    batches = dataset if isinstance(dataset, DataLoader) else DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_pairs)
    xs, ys = [], []
    try:
        for x, y in batches:
            xs.append(float_images(torch.as_tensor(x)))
            ys.append(torch.as_tensor(y))
        if not xs:
            raise HarnessError(f"{what} is empty")
        x, y = torch.cat(xs), torch.cat(ys)
    except HarnessError:
        raise
    except (TypeError, ValueError, RuntimeError) as e:
        raise HarnessError(f"{what}: expected (image, label) pairs of tensors or PIL images of one size "
                           f"({type(e).__name__}: {first_line(e)[:160]})") from None
    y = class_labels(y, what)
    return ImageTensors(x, y, metric="miou" if y.dim() == 3 else "acc")


def float_images(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (torchvision.io, PIL arrays) scaled to [0, 1] as ToTensor does; other tensors as floats."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def class_labels(y: torch.Tensor, what: str = "test_set") -> torch.Tensor:
    """Labels as the loop compares them: (N,) class indices (an (N, 1) column squeezed) or (N, H, W) maps.
    Others, one-hot (N, K) above all, are refused: compared with (N,) predictions they would broadcast."""
    if y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dim() not in (1, 3) or y.is_floating_point() and not torch.equal(y, y.round()):
        hint = " (one-hot? pass labels.argmax(1))" if y.dim() == 2 else ""
        raise HarnessError(f"{what}: labels must be class indices, one per image (or (H, W) label maps), "
                           f"got shape {tuple(y.shape[1:])} per image{hint}")
    return y.long()


def checked_collate(batch):
    """collate_pairs for training batches: samples that cannot join one batch (another image size or mode than
    the first's, which check_train_set read) are a one-line error, not a collate traceback mid-training."""
    try:
        return collate_pairs(batch)
    except (RuntimeError, TypeError, ValueError) as e:
        raise HarnessError(f"train_set: a batch could not be formed ({type(e).__name__}: {first_line(e)[:160]}); "
                           f"every image must have the same shape, as the first one read") from None


def collate_pairs(batch):
    """DataLoader's collate for materialize: PIL images become tensors in [0, 1]. A sample is (image, label),
    and may carry more after them (an index, a path), which is left out."""
    if batch and isinstance(batch[0], dict):
        raise HarnessError(f"samples are dicts (keys {', '.join(map(str, list(batch[0])[:4]))}); give a Dataset "
                           f"whose items are (image, label) pairs")
    xs, ys = [], []
    for sample in batch:
        x, y = sample[:2] if isinstance(sample, (tuple, list)) and len(sample) > 2 else sample
        if hasattr(x, "getbands"):  # a PIL image
            from torchvision.transforms.functional import pil_to_tensor

            x = float_images(pil_to_tensor(x))
        xs.append(x)
        ys.append(y)
    return default_collate(xs), default_collate(ys)


from . import segdata  # noqa: E402,F401  (CamVid, NYUv2, Caltech101 register themselves)
