"""A suite's own dataset: `datasets:` in the suite file, the ImageFolder layout, real images (MNIST digits
written as PNG files), through the real CLI."""
import json
import os

import pytest
import torch
import yaml

import cliproc
from conftest import REPO
from harness.errors import HarnessError


def digits_folder(root, mnist_root, n_train=12, n_test=4, classes=(3, 5, 7)):
    """<root>/{train,test}/digit<c>/<i>.png from MNIST's test digits; one train image 40x40 (resized on load)."""
    from conftest import save_image

    from harness.data import get_dataset, resize

    mnist = get_dataset("mnist").load("test", mnist_root)
    for c in classes:
        idx = (mnist.y == c).nonzero().flatten()
        for split, sel in (("train", idx[:n_train]), ("test", idx[n_train:n_train + n_test])):
            d = root / split / f"digit{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i, j in enumerate(sel.tolist()):
                img = mnist.x[j]
                save_image(resize(img[None], (40, 40))[0] if (split, i) == ("train", 0) else img, str(d / f"{i}.png"))
    return root


def suite_file(tmp_path, folder, **extra):
    doc = {"datasets": {"digits": {"folder": str(folder), "size": [32, 32], "channels": 1, **extra}},
           "dataset": "digits",
           "teacher": {"model": {"name": "lenet5"}, "recipe": {"epochs": 2, "batch_size": 16, "lr": 0.05}},
           "student": {"name": "lenet5_half"}, "budget": {"iterations": 10, "eval_every": 5}, "seeds": [0],
           "methods": {"kd_ori": {"batch_size": 16}, "dfad": {"batch_size": 16, "nz": 16, "ngf": 8}}}
    p = tmp_path / "own.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def cli(*args, data):
    return cliproc.run(args, cwd=REPO, env={"PATH": "/usr/bin:/bin", "DFAD_DATA": str(data), "WANDB_MODE": "disabled",
                                            "OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"], "HOME": str(data)})


def test_own_folder_dataset_through_the_cli(tmp_path, mnist_data):
    folder = digits_folder(tmp_path / "digits", mnist_data)
    suite, runs = suite_file(tmp_path, folder), tmp_path / "runs"
    r = cli("run", str(suite), "--runs-dir", str(runs), data=tmp_path / "cache")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "profile: paper" in r.stdout  # the suite has no quick profile: paper, and said so
    for method in ("kd_ori", "dfad"):
        rd = runs / "own" / method / "seed-0"
        assert '"status": "done"' in (rd / "summary.json").read_text()
        cfg = yaml.safe_load((rd / "config.yaml").read_text())
        assert cfg["dataset_def"]["folder"] == str(folder) and cfg["dataset_def"]["files"].startswith("digits-")
    assert len(list((runs / "teachers").glob("digits-lenet5-*/teacher.pt"))) == 1
    table = (runs / "own" / "report" / "table.md").read_text()
    assert "digits Acc." in table and "*paper*" not in table  # no paper numbers: no empty paper rows
    teacher_row = next(line for line in table.splitlines() if line.startswith("| Teacher"))
    # decoded once: 3 classes x 12 train images, 32x32, one channel, labels from the sorted class folders
    x = torch.load(next((tmp_path / "cache" / ".dfad-cache").glob("digits-*-train.pt")), weights_only=True)
    assert tuple(x["x"].shape) == (36, 1, 32, 32) and x["y"].bincount().tolist() == [12, 12, 12]

    again = cli("run", str(suite), "--runs-dir", str(runs), "--no-report", data=tmp_path / "cache")
    assert again.returncode == 0 and again.stdout.count("already done") == 2, again.stdout
    v = cli("validate", str(suite), "--runs-dir", str(runs), data=tmp_path / "cache")  # says where it read the data
    assert v.returncode == 0 and f"data: digits test found under {folder.resolve()}" in v.stdout, v.stdout + v.stderr
    # other files are other data: the finished runs are not passed off as runs on them
    (folder / "train" / "digit3" / "0.png").unlink()
    changed = cli("run", str(suite), "--runs-dir", str(runs), "--no-report", data=tmp_path / "cache")
    assert changed.returncode == 2 and "finished with a different config" in changed.stderr, changed.stderr
    # a report reads the run store: the dataset folder may be gone by then (archived, another machine)
    folder.rename(tmp_path / "archived")
    rep = cli("report", str(suite), "--runs-dir", str(runs), data=tmp_path / "cache")
    assert rep.returncode == 0 and "| DFAD |" in rep.stdout, rep.stderr
    # the teacher's MACs are recorded with it (3 classes): the report needs neither the folder nor its classes
    from harness.models import build_model, count_macs, human_macs

    macs = json.loads((runs / "own" / "teacher" / "summary.json").read_text())["macs"]
    assert macs == count_macs(build_model("lenet5", num_classes=3, in_channels=1), (1, 32, 32))
    assert f"| {human_macs(macs)} |" in teacher_row and teacher_row in rep.stdout, (teacher_row, rep.stdout)
    gone = cli("validate", str(suite), data=tmp_path / "cache")  # where the data is needed, it is still an error
    assert gone.returncode == 2 and "no folder" in gone.stderr, gone.stderr


@pytest.mark.parametrize("edit, fragment", [
    (lambda doc, f: doc["datasets"]["digits"].update(folder=str(f / "nope")), "no folder"),
    (lambda doc, f: doc.update(datasets={"mnist": doc["datasets"]["digits"]}, dataset="mnist"), "built-in dataset"),
    (lambda doc, f: doc["datasets"]["digits"].update(mean=[0.5, 0.5]), "mean needs one value per channel (1)"),
    (lambda doc, f: doc.update(datasets={"my data": doc["datasets"]["digits"]}, dataset="my data"), "letters, digits"),
])
def test_own_dataset_errors_are_one_line(tmp_path, mnist_data, edit, fragment):
    from harness.config import load_suite

    folder = digits_folder(tmp_path / "digits", mnist_data, n_train=1, n_test=1)
    p = suite_file(tmp_path, folder)
    doc = yaml.safe_load(p.read_text())
    edit(doc, folder)
    p.write_text(yaml.safe_dump(doc))
    with pytest.raises(HarnessError) as e:
        load_suite(str(p))
    assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_test_class_the_train_split_lacks_is_named(tmp_path, mnist_data):
    from harness.config import load_suite
    from harness.data import get_dataset

    folder = digits_folder(tmp_path / "digits", mnist_data, n_train=1, n_test=1)
    (folder / "test" / "digit9").mkdir()
    # found when the suite is read (so by `validate` too), before anything is decoded
    with pytest.raises(HarnessError, match="class folder.s. digit9 under .*test are not among the training"):
        load_suite(str(suite_file(tmp_path, folder)))
    # and when the folder changes after that, before it is decoded
    (folder / "test" / "digit9").rmdir()
    load_suite(str(suite_file(tmp_path, folder)))
    (folder / "test" / "digit9").mkdir()
    with pytest.raises(HarnessError, match="changed .images or classes added or removed. since the suite was read"):
        get_dataset("digits").load("test", tmp_path / "cache")


def test_folder_mistakes_are_found_when_the_suite_is_read(tmp_path, mnist_data):
    import shutil

    from harness.config import load_suite
    from harness.data import get_dataset

    folder = digits_folder(tmp_path / "digits", mnist_data, n_train=2, n_test=1)
    suite = suite_file(tmp_path, folder)
    # a class folder with nothing but the OS's clutter in it would be a class with no images (an extra output)
    (folder / "train" / "digit8").mkdir()
    (folder / "train" / "digit8" / "Thumbs.db").write_bytes(b"thumbnails")
    with pytest.raises(HarnessError, match="class folder.s. digit8 under .*train have no images"):
        load_suite(str(suite))
    shutil.rmtree(folder / "train" / "digit8")
    shutil.move(folder / "test", tmp_path / "test-aside")
    with pytest.raises(HarnessError, match="no folder .*digits/test "):
        load_suite(str(suite))
    shutil.move(tmp_path / "test-aside", folder / "test")
    # beside images the clutter is skipped, not decoded
    (folder / "train" / "digit3" / "Thumbs.db").write_bytes(b"thumbnails")
    (folder / "train" / "digit3" / "desktop.ini").write_text("[.ShellClassInfo]")
    load_suite(str(suite))
    assert get_dataset("digits").load("train", tmp_path / "cache").y.bincount().tolist() == [2, 2, 2]


def test_editing_a_dataset_replaces_its_decoded_copy(tmp_path, mnist_data, monkeypatch):
    """Adding images decodes the folder afresh (a new fingerprint); the copy of its earlier contents is deleted,
    while another decoding of the same folder (another size) is kept."""
    from harness.config import FolderDataCfg
    from harness.data import register_folder

    folder = digits_folder(tmp_path / "digits", mnist_data)
    monkeypatch.setenv("DFAD_DATA", str(tmp_path / "data"))
    cache = tmp_path / "data" / ".dfad-cache"
    cfg = FolderDataCfg(folder=str(folder), channels=1)
    first = register_folder("digits", cfg)
    first.load("train"), first.load("test")
    other = register_folder("digits", cfg.model_copy(update={"size": [28, 28]}))
    other.load("test")
    assert len(list(cache.glob("digits-*-*.pt"))) == 3
    new_image = folder / "train" / "digit3" / "new.png"
    new_image.write_bytes((folder / "train" / "digit3" / "1.png").read_bytes())
    second = register_folder("digits", cfg)
    assert second.cache_name != first.cache_name
    assert len(second.load("train")) == 3 * 12 + 1
    names = sorted(p.name for p in cache.glob("digits-*-*.pt"))
    assert names == sorted([f"{second.cache_name}-train.pt", f"{other.cache_name}-test.pt"])
    # a process that read the folder before the edit does not decode the new contents under the old fingerprint
    with pytest.raises(HarnessError, match="changed .* since the suite was read"):
        first.load("test")
    assert sorted(p.name for p in cache.glob("digits-*-*.pt")) == names


@pytest.mark.parametrize("decoders", ["torchvision", "PIL only"])
def test_awkward_image_files_decode_like_8_bit_ones(tmp_path, monkeypatch, recwarn, decoders):
    """16-bit PNG, GIF (RGB whatever mode is asked), an animated GIF, RGBA, palette, BMP and TIFF (PIL) all come
    out uint8 with the dataset's channels and the same pixels; a notes file in a class folder is skipped. The same
    where a torchvision has no decoders (0.29 deprecates them): PIL reads everything; and torchvision's deprecation
    notice does not reach the user."""
    import numpy as np
    from PIL import Image

    import harness.data
    from harness.data import _image_folder, decode_file

    if decoders == "PIL only":
        def gone(*_):
            raise ImportError("cannot import name 'decode_image' from 'torchvision.io'")
        monkeypatch.setattr(harness.data, "_torchvision_decode", gone)

    g = np.random.default_rng(0)
    rgb = g.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    d = tmp_path / "train" / "a"
    d.mkdir(parents=True)
    Image.fromarray(rgb).save(d / "rgb.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(d / "gray16.png")  # 16-bit: 0..65535
    Image.fromarray(gray.astype(np.uint16) * 257).save(d / "gray16.tiff")  # PIL's: convert("L") would clip it
    Image.fromarray(gray.astype(np.float32) / 255).save(d / "float.tif")  # 0..1
    Image.fromarray(rgb).save(d / "photo.jfif", format="JPEG", quality=100)
    Image.fromarray(rgb).save(d / "rgb.bmp")
    Image.fromarray(rgb).save(d / "rgb.tiff")
    Image.fromarray(np.dstack([rgb, np.full((12, 10, 1), 255, np.uint8)])).save(d / "rgba.png")
    frames = [Image.fromarray(gray).convert("P"), Image.fromarray(255 - gray).convert("P")]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:])
    (d / "labels.txt").write_text("not an image")
    for channels in (1, 3):
        for f in sorted(d.glob("*.*")):
            if f.suffix == ".txt":
                continue
            img = decode_file(f, channels)
            assert img.dtype == torch.uint8 and tuple(img.shape) == (channels, 12, 10), (f.name, img.shape)
            if f.name in ("gray16.png", "gray16.tiff", "float.tif", "anim.gif") or channels == 1:
                ref = torch.from_numpy(gray.astype(np.int16))  # same gray levels (codec rounding aside)
                tol = 12 if f.suffix == ".jfif" else 2
                assert (img[0].to(torch.int16) - ref).abs().max() <= tol, f.name
    x, y = _image_folder(tmp_path / "train", hw=None, channels=1)
    assert tuple(x.shape) == (9, 1, 12, 10) and x.dtype == torch.uint8  # labels.txt left out
    assert not [str(w.message) for w in recwarn if issubclass(w.category, DeprecationWarning)]


def test_images_in_subfolders_of_a_class_are_read_as_imagefolder_reads_them(tmp_path, mnist_data, capsys):
    """A class folder with subfolders (e.g. per session or per source): their images are the class's, in
    ImageFolder's order; hidden folders (Jupyter's .ipynb_checkpoints) are not. An image added in a subfolder
    changes the fingerprint (decoded afresh); a flat dataset's fingerprint is what it was before."""
    import hashlib
    import json
    import shutil

    from torchvision.datasets import ImageFolder

    from harness.data import _fingerprint, _image_folder, decode_file

    folder = digits_folder(tmp_path / "digits", mnist_data)
    flat = _fingerprint(folder, (32, 32), 1)
    classes = sorted(p.name for p in (folder / "train").iterdir())
    stamps = [(p.name, p.stat().st_mtime_ns) for split in ("train", "test") for p in sorted((folder / split).iterdir())]
    before = hashlib.sha256(json.dumps([str(folder), [32, 32], 1, classes, stamps]).encode()).hexdigest()[:12]
    assert flat == before  # the formula every earlier cache, teacher and run was keyed by
    (folder / "train" / "digit3" / "empty").mkdir()  # subfolders without images: the images read are the same
    (folder / "test" / "digit3" / "notes").mkdir()
    (folder / "test" / "digit3" / "notes" / "readme.txt").write_text("x")
    stamps = [(p.name, p.stat().st_mtime_ns) for split in ("train", "test") for p in sorted((folder / split).iterdir())]
    before = hashlib.sha256(json.dumps([str(folder), [32, 32], 1, classes, stamps]).encode()).hexdigest()[:12]
    assert _fingerprint(folder, (32, 32), 1) == before

    d = folder / "train" / "digit5"
    (d / "session b").mkdir()
    for i in (2, 3):
        shutil.move(d / f"{i}.png", d / "session b" / f"{i}.png")
    (d / ".ipynb_checkpoints").mkdir()
    shutil.copy(d / "4.png", d / ".ipynb_checkpoints" / "4-checkpoint.png")
    x, y = _image_folder(folder / "train", hw=(32, 32), channels=1)
    assert "2 image(s) in subfolders of class folders read as their class's" in capsys.readouterr().err
    ref = ImageFolder(str(folder / "train"), is_valid_file=lambda p: ".ipynb_checkpoints" not in p)
    assert len(x) == 3 * 12 == len(ref.samples)
    assert y.tolist() == [t for _, t in ref.samples]
    assert [p for p, _ in ref.samples][12 + 10:12 + 12] == [str(d / "session b" / "2.png"), str(d / "session b" / "3.png")]
    assert torch.equal(x[12 + 10], decode_file(d / "session b" / "2.png", 1)[:, :32, :32])
    nested = _fingerprint(folder, (32, 32), 1)
    shutil.copy(d / "4.png", d / "session b" / "9.png")
    assert _fingerprint(folder, (32, 32), 1) != nested
    # a link back up (to the class folder, to the split) is entered once, not looped through; a hidden folder
    # beside the classes is not a class
    (d / "loop").symlink_to(d)
    (d / "up").symlink_to(folder / "train")
    (folder / "train" / ".ipynb_checkpoints").mkdir()
    x, y = _image_folder(folder / "train", hw=(32, 32), channels=1)
    assert len(x) == 3 * 12 + 1 and sorted(set(y.tolist())) == [0, 1, 2]


def test_speed_on_an_own_dataset_measures_each_paths_memory(tmp_path, mnist_data):
    """`speed` on a suite with its own dataset: the per-path memory processes see that dataset too."""
    import json

    folder = digits_folder(tmp_path / "digits", mnist_data)
    r = cli("speed", str(suite_file(tmp_path, folder)), "--iters", "1", "--warmup", "0", "--repeats", "1",
            "--no-limits", data=tmp_path / "cache")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert "matmul_peak_tflops" not in out and "limit_tflops" not in out["default"]  # --no-limits: timings alone
    for path in ("default", "plain"):
        assert out[path]["peak_rss_mb"] > 0 and "peak_rss_error" not in out[path], out[path]
