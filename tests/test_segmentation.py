"""Segmentation (CamVid, NYUv2) and Caltech101: mIoU on known inputs, dense losses, paired augmentation,
the networks' MACs against the paper's, and smoke runs of the three suites through the CLI on tiny
datasets this file writes in each dataset's public layout."""
import json
import os
from pathlib import Path

import pytest
import torch

import cliproc
from conftest import REPO
from harness.data import ImageTensors, get_dataset
from harness.losses import kd_loss, kld, mae
from harness.loop import evaluate
from harness.models import build_model, count_macs
from harness.seg import confusion, miou_from_confusion
from harness.segdata import caltech_split, seg_crop_flip
from methods.dafl import dafl_generator_terms


def test_miou_known_inputs_and_void_ignored():
    # K = 3; labels 3 (CamVid-style void, = K) and 255 (NYUv2-style) are ignored whatever is predicted
    target = torch.tensor([0, 0, 1, 1, 2, 2, 3, 255])
    pred = torch.tensor([0, 1, 1, 1, 2, 0, 2, 1])
    cm = confusion(pred, target, 3)
    assert cm.sum() == 6
    # IoU: class 0: 1 / (2 + 2 - 1) = 1/3; class 1: 2 / (2 + 3 - 2) = 2/3; class 2: 1 / (2 + 1 - 1) = 1/2
    assert miou_from_confusion(cm) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    # a class absent from truth and prediction is skipped, as the official StreamSegMetrics' nanmean
    assert miou_from_confusion(confusion(torch.tensor([0, 1]), torch.tensor([0, 1]), 5)) == 1.0


def test_miou_matches_torchmetrics():
    from torchmetrics.classification import MulticlassJaccardIndex

    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (2, 16, 16), generator=g)
    target[:, :3] = 255
    pred = torch.where(torch.rand(target.shape, generator=g) < 0.6, target.clamp(max=4),
                       torch.randint(0, 5, target.shape, generator=g))
    ours = miou_from_confusion(confusion(pred, target, 5))
    ref = MulticlassJaccardIndex(5, ignore_index=255, average="macro")(pred, target).item()
    assert ours == pytest.approx(ref, abs=1e-6)


def test_evaluate_dispatches_on_metric():
    y = torch.randint(0, 4, (3, 8, 10))
    y[0, 0] = 255  # void: whatever the model says there does not count

    class Oracle(torch.nn.Module):  # reads the label map back out of the image
        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, 0].round().long().clamp(0, 3), 4).permute(0, 3, 1, 2).float()

    data = ImageTensors(y[:, None].expand(-1, 3, -1, -1).float(), y.to(torch.uint8), metric="miou")
    assert evaluate(Oracle(), data, "cpu") == 1.0
    assert get_dataset("camvid").metric == "miou" and get_dataset("caltech101").metric == "acc"


def test_dense_losses_are_per_pixel():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 5, 4, 3, generator=g), torch.randn(2, 5, 4, 3, generator=g)
    flat = lambda z: z.movedim(1, -1).reshape(-1, 5)  # noqa: E731  every pixel a sample
    assert kd_loss(s, t, 4.0).item() == pytest.approx(kd_loss(flat(s), flat(t), 4.0).item(), rel=1e-5)
    assert kld(s, t).item() == pytest.approx(kld(flat(s), flat(t)).item(), rel=1e-5)
    assert mae(s, t).item() == pytest.approx((s - t).abs().mean().item())
    dense, pixels = dafl_generator_terms(t, s), dafl_generator_terms(flat(t), s)
    for k in ("oh", "ie", "a"):
        assert dense[k].item() == pytest.approx(pixels[k].item(), rel=1e-5), k


def test_paired_crop_flip_moves_label_with_image():
    y = torch.randint(0, 11, (6, 140, 150), dtype=torch.uint8)
    y[:, :, :5] = 255
    x = torch.stack([y, y // 2, y], 1)  # channel 0 carries the label
    xc, yc = seg_crop_flip(x, y, torch.Generator().manual_seed(0), size=128)
    assert xc.shape == (6, 3, 128, 128) and yc.shape == (6, 128, 128) and yc.dtype == torch.long
    void = xc[:, 0] == 255
    assert torch.equal(yc[~void], xc[:, 0][~void].long()) and (yc[void] == -100).all()
    small, ys = seg_crop_flip(x[:, :, :100], y[:, :100], torch.Generator().manual_seed(0), size=128)
    assert small.shape[-2:] == (128, 128) and (ys[:, 100:] == -100).all()  # padded, as ExtRandomCrop


def test_caltech_split_rule():
    files = [[Path(f"{c}/{i}.jpg") for i in range(n)] for c, n in enumerate((3, 10, 51))]
    test, train = caltech_split(files, "test"), caltech_split(files, "train")
    assert len(test) == 2 + 2 + 10 and len(train) == 1 + 8 + 41  # max(int(0.2 n), 2) held out per class
    assert not {f for f, _ in test} & {f for f, _ in train}
    assert test == caltech_split(files, "test")  # seeded


def within(value, paper, tol):
    return abs(value / paper - 1) <= tol


def test_macs_against_the_paper():
    # segmentation at 256x256 (the evaluation resize's shorter side, square); torchvision's DeepLabV3
    # heads; the student's 6% gap is the paper's counter also counting MobileNetV2's many BN/activation ops
    with torch.device("meta"):  # counted from shapes alone: no arithmetic is done
        macs = {name: count_macs(build_model(name, num_classes=k), (3, s, s)) for name, k, s in (
            ("deeplabv3_resnet50", 11, 256), ("deeplabv3_mobilenetv2", 11, 256), ("resnet34_tv", 101, 128),
            ("resnet18_tv", 101, 128))}
    assert within(macs["deeplabv3_resnet50"], 41.0e9, 0.02) and within(macs["deeplabv3_mobilenetv2"], 5.54e9, 0.08)
    # Caltech101 at 128x128
    assert within(macs["resnet34_tv"], 1.20e9, 0.02) and within(macs["resnet18_tv"], 595e6, 0.02)
    teacher = build_model("deeplabv3_resnet50", num_classes=11)
    out, feats = teacher.eval()(torch.randn(1, 3, 64, 64), return_features=True)
    assert out.shape == (1, 11, 64, 64) and feats["penultimate"].dim() == 4
    assert teacher.summary_info["teacher_backbone"] in ("imagenet", "scratch")


def test_generator_b_shapes():
    g = build_model("generator_b", nz=16, ngf=4, input_shape=(3, 128, 128))
    assert g(torch.randn(2, 16)).shape == (2, 3, 128, 128)
    assert build_model("generator_b", nz=16, ngf=4, input_shape=(1, 40, 50))(torch.randn(2, 16)).shape == (2, 1, 40, 50)
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in g.modules()) == 4


def write_tiny_datasets(root: Path) -> None:
    """CamVid in SegNet's layout, NYUv2 in the DFAD repo's, Caltech101 in torchvision's; tiny images."""
    from conftest import save_image

    g = torch.Generator().manual_seed(0)
    img = lambda h, w: torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)  # noqa: E731
    cam = root / "CamVid"
    for split, n in (("train", 6), ("test", 3)):
        (cam / split).mkdir(parents=True)
        (cam / f"{split}annot").mkdir()
        lines = []
        for i in range(n):
            save_image(img(96, 128), str(cam / split / f"f{i}.jpg"))
            save_image(torch.randint(0, 12, (1, 96, 128), dtype=torch.uint8, generator=g),
                      str(cam / f"{split}annot" / f"f{i}.png"))
            lines.append(f"/SegNet/CamVid/{split}/f{i}.jpg /SegNet/CamVid/{split}annot/f{i}.png")
        (cam / f"{split}.txt").write_text("\n".join(lines) + "\n")
    nyu = root / "NYUv2"
    (nyu / "480_640" / "IMAGE").mkdir(parents=True)
    for split, idxs in (("train", (1, 2, 4, 5, 7, 8)), ("test", (3, 6, 9))):
        (nyu / "nyuv2-meta-data" / f"{split}_labels_13").mkdir(parents=True)
        for i in idxs:
            save_image(img(120, 160), str(nyu / "480_640" / "IMAGE" / f"{i - 1}.png"))
            save_image(torch.randint(0, 14, (1, 120, 160), dtype=torch.uint8, generator=g),
                      str(nyu / "nyuv2-meta-data" / f"{split}_labels_13" / f"new_nyu_class13_{i:04d}.png"))
    for c in ("BACKGROUND_Google", "accordion", "airplanes", "anchor"):
        d = root / "caltech101" / "101_ObjectCategories" / c
        d.mkdir(parents=True)
        for i in range(1, 6):
            save_image(img(100, 140), str(d / f"image_{i:04d}.jpg"))


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("segdata")
    write_tiny_datasets(root)
    return root


def test_loaders_read_the_public_layouts(tiny_root):
    cam = get_dataset("camvid").load("train", tiny_root)
    assert cam.x.shape == (6, 3, 256, 341) and cam.y.shape == (6, 256, 341) and cam.metric == "miou"
    assert set(cam.y.unique().tolist()) <= set(range(11)) | {255}  # CamVid's 11 stored as void
    nyu = get_dataset("nyuv2").load("test", tiny_root)
    assert nyu.x.shape == (3, 3, 256, 341) and set(nyu.y.unique().tolist()) <= set(range(13)) | {255}
    cal = get_dataset("caltech101").load("test", tiny_root)
    assert cal.x.shape == (6, 3, 128, 128) and cal.y.tolist() == [0, 0, 1, 1, 2, 2]  # BACKGROUND_Google left out


@pytest.mark.parametrize("suite", ["camvid", "nyuv2", "caltech101"])
def test_smoke_suite_through_cli(tmp_path, tiny_root, suite):
    runs = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DFAD_DATA": str(tiny_root), "DFAD_DOWNLOAD": "0"}
    r = cliproc.run(["run", suite, "--profile", "smoke", "--runs-dir", runs], env=env, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    seg = suite != "caltech101"
    for method in ("kd_ori", "random", "dafl", "dfad"):
        rd = runs / suite / method / "seed-0"
        s = json.loads((rd / "summary.json").read_text())
        assert s["status"] == "done", s.get("reason")
        assert s["metric"] == ("miou" if seg else "acc") and 0 <= s["best_acc"] <= 1 and s["iterations"] == 2
        header = (rd / "metrics.csv").read_text().splitlines()[0]
        assert header.startswith("iteration,test_acc") and ("metric" in header) == seg
    assert ("mIoU" in (runs / suite / "report" / "table.md").read_text()) == seg


def real_root():
    root = Path(os.environ.get("DFAD_DATA", REPO / "data"))
    return root if (root / "CamVid" / "test.txt").is_file() and (root / "caltech101").is_dir() else None


@pytest.mark.skipif(real_root() is None, reason="CamVid and Caltech101 not under $DFAD_DATA")
def test_real_camvid_and_caltech_splits():
    cam = get_dataset("camvid").load("test", real_root())
    assert cam.x.shape == (233, 3, 256, 341) and set(cam.y.unique().tolist()) == set(range(11)) | {255}
    cal = get_dataset("caltech101").load("test", real_root())
    assert len(cal) == 1695 and cal.y.unique().numel() == 101  # the paper's 1,695 test images
