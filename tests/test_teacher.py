"""Teacher checkpoints: weights only, never code; wrong files are one-line errors."""
import os

import pytest
import torch

from harness.errors import HarnessError
from harness.models import build_model
from harness.teacher import load_weights


def test_loads_state_dict_and_wrapped_dicts(tmp_path):
    src = build_model("lenet5")
    for i, obj in enumerate([src.state_dict(), {"state_dict": src.state_dict()},
                             {"model": {f"module.{k}": v for k, v in src.state_dict().items()}},
                             {f"_orig_mod.{k}": v for k, v in src.state_dict().items()}]):  # torch.compile's
        path = tmp_path / f"t{i}.pt"
        torch.save(obj, path)
        dst = load_weights(build_model("lenet5"), path)
        for a, b in zip(src.parameters(), dst.parameters()):
            assert torch.equal(a, b)


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/dfad-pwned",))


@pytest.mark.parametrize("case,fragment", [
    ("missing", "does not exist"),
    ("text", "not a torch file"),
    # torch's weights-only reader calls every failure "Weights only load failed": damage is not a refusal of code
    ("junk", "not a torch file (neither a zip archive nor a pickle)"),
    ("truncated", "not a torch file (a truncated pickle)"),
    ("plain pickle", "not a torch file (UnpicklingError: Unsupported operand"),
    ("pickle", "pickled code"),
    ("arch", "does not fit"),
    ("classes", "has shape"),
    ("dir", "is a directory, not a checkpoint file"),
    ("torchscript", "is a TorchScript archive; save the weights instead"),
    ("prefixed", "10 missing keys (e.g. conv1.bias); 10 unexpected keys (e.g. model.conv1.bias)"),  # Lightning's
])
def test_bad_checkpoints(tmp_path, case, fragment):
    path = tmp_path / "t.pt"
    if case == "text":
        path.write_text("hello")
    elif case == "junk":
        path.write_bytes(b"not a checkpoint at all" * 10)
    elif case == "truncated":
        torch.save(build_model("lenet5").state_dict(), path, _use_new_zipfile_serialization=False)
        path.write_bytes(path.read_bytes()[:1000])
    elif case == "plain pickle":
        import pickle

        path.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=4))
    elif case == "pickle":
        torch.save({"w": Evil()}, path)
    elif case == "arch":
        torch.save(build_model("resnet8").state_dict(), path)
    elif case == "classes":
        torch.save(build_model("lenet5", num_classes=100).state_dict(), path)
    elif case == "dir":
        path.mkdir()
    elif case == "torchscript":
        torch.jit.save(torch.jit.trace(build_model("lenet5").eval(), torch.randn(1, 1, 32, 32)), str(path))
    elif case == "prefixed":
        torch.save({f"model.{k}": v for k, v in build_model("lenet5").state_dict().items()}, path)
    with pytest.raises(HarnessError) as e:
        load_weights(build_model("lenet5"), path)
    assert fragment in str(e.value) and "\n" not in str(e.value)
    assert not os.path.exists("/tmp/dfad-pwned")


# --- teacher recipes with a time budget (#8: the 5-minute GPU teacher) ---

def _tiny_spec(n=64):
    from harness.data import DatasetSpec

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 3, (n,), generator=g)
    return DatasetSpec("tiny", (1, 8, 8), 3, (0.5,), (0.25,), lambda root, split: (x, y))


def _tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 36, 3))


def test_time_budget_leaves_existing_teacher_keys_alone():
    from harness.config import config_hash, load_suite
    from harness.teacher import teacher_key

    s = load_suite("mnist", "smoke")
    key = teacher_key(s)
    assert "time_budget_s" not in key["recipe"]  # the hash of every teacher trained before the field existed
    budgeted = teacher_key(load_suite("mnist", "smoke", ["teacher.recipe.time_budget_s=60"]))
    assert budgeted["recipe"]["time_budget_s"] == 60
    assert config_hash(budgeted, ignore=()) != config_hash(key, ignore=())


def test_a_bf16_teacher_records_its_fp32_accuracy(tmp_path, monkeypatch):
    """Its epochs are scored in the recipe's precision (the log, the time-budget probe); the accuracy it records
    is fp32, as a checkpoint teacher's and the students' are."""
    from harness.config import TeacherRecipe
    from harness.loop import evaluate
    from harness.teacher import train_teacher

    monkeypatch.setenv("DFAD_DATA", str(tmp_path))
    spec, net, seen = _tiny_spec(), _tiny_net(), []
    net.register_forward_pre_hook(lambda mod, _: seen.append((mod.training, torch.is_autocast_enabled("cpu"))))
    recipe = TeacherRecipe(epochs=2, batch_size=16, lr=0.05, precision="bf16")
    model, acc, _, _ = train_teacher(net, spec, recipe, torch.device("cpu"), log=lambda *_: None)
    assert [a for training, a in seen if not training] == [True, True, False]  # epoch 1, epoch 2, the record
    assert acc == evaluate(model, spec.load("test"), "cpu")


@pytest.mark.parametrize("budget,expect", [(1e6, 7), (1e-3, 1)])
def test_time_budget_picks_epochs_and_leaves_the_model_untouched(tmp_path, budget, expect):
    import copy

    from harness.config import TeacherRecipe
    from harness.data import TensorBatches
    from harness.loop import evaluate
    from harness.teacher import fit_epochs, train_teacher

    spec = _tiny_spec()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DFAD_DATA", str(tmp_path))
        model = _tiny_net()
        before = copy.deepcopy(model.state_dict())
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        batches = TensorBatches(spec.load("train"), 16, "cpu")
        state = copy.deepcopy(batches.state_dict())

        def step(net, o, x, y):
            loss = torch.nn.functional.cross_entropy(net(x), y)
            o.zero_grad()
            loss.backward()
            o.step()
            return loss

        n = fit_epochs(model, opt, batches, step, 4, lambda net: evaluate(net, spec.load("test"), "cpu"),
                       budget, 7, log=lambda *_: None, probe_steps=2)
        assert n == expect  # capped by the recipe's epochs, at least one
        for k, v in model.state_dict().items():  # the probe trained a copy
            assert torch.equal(v, before[k]), k
        assert not opt.state  # and used its own optimiser
        assert batches.state_dict()["pos"] == state["pos"]  # the real run's batch order is untouched

        recipe = TeacherRecipe(epochs=5, batch_size=16, lr=0.05, schedule="onecycle", time_budget_s=1e6,
                               precision="fp32")
        _, acc, seconds, epochs = train_teacher(_tiny_net(), spec, recipe, torch.device("cpu"), log=lambda *_: None,
                                                channels_last=True)
        assert epochs == 5 and 0 <= acc <= 1 and seconds > 0


def test_teacher_training_is_reproducible_across_processes(tmp_path, mnist_data):
    """Same recipe, two fresh processes: the same teacher, bit for bit. PyTorch seeds every process at random,
    so the initial weights must come from the recipe's seed too (they once did not: 0.20 vs 0.40 accuracy)."""
    import subprocess
    import sys

    from conftest import REPO

    got = []
    for i in range(2):
        r = subprocess.run([sys.executable, "-m", "harness.cli", "teacher", "mnist", "--profile", "smoke",
                            "--runs-dir", str(tmp_path / str(i))], cwd=REPO, capture_output=True, text=True,
                           timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "DFAD_DATA": str(mnist_data)})
        assert r.returncode == 0, r.stderr
        got.append(torch.load(next((tmp_path / str(i) / "teachers").glob("*/teacher.pt")), weights_only=True))
    assert all(torch.equal(v, got[1][k]) for k, v in got[0].items())


def test_train_subset_is_drawn_from_every_class():
    """The first N of a class-sorted set (an ImageFolder's) would be its first classes only."""
    from harness.config import load_suite
    from harness.data import ImageTensors
    from harness.teacher import draw_subset, teacher_key

    y = torch.arange(5).repeat_interleave(20)
    data = ImageTensors(torch.arange(100).view(100, 1, 1, 1), y, (0.5,), (0.5,))
    a, b = draw_subset(data, 20, seed=0), draw_subset(data, 20, seed=0)
    assert len(a) == 20 and set(a.y.tolist()) == set(range(5)) and torch.equal(a.x, b.x)
    assert torch.equal(a.y, y[a.x.flatten()])  # images keep their labels
    assert not torch.equal(draw_subset(data, 20, seed=1).x, a.x)
    # a teacher cached when the subset was the first N is another teacher: the key says how it is drawn
    assert "train_subset_draw" in teacher_key(load_suite("mnist", "smoke"))
    assert "train_subset_draw" not in teacher_key(load_suite("mnist", "paper"))


def test_runs_from_a_teacher_checkpoint_record_its_contents(tmp_path):
    """The file's bytes, not its name, identify the teacher: a checkpoint replaced under one name is another
    teacher (finished runs are not passed off as its runs), a copy elsewhere is the same one."""
    import shutil

    from harness.config import load_suite
    from harness.runner import config_difference

    a = tmp_path / "lenet.pt"
    torch.save(build_model("lenet5").state_dict(), a)
    one = load_suite("mnist", "smoke", [f"teacher.checkpoint={a}"]).run_config("dfad", 0)
    shutil.copy(a, tmp_path / "copy.pt")
    copy = load_suite("mnist", "smoke", [f"teacher.checkpoint={tmp_path / 'copy.pt'}"]).run_config("dfad", 0)
    assert one["teacher_sha256"] == copy["teacher_sha256"] and len(one["teacher_sha256"]) == 16
    torch.save(build_model("lenet5").state_dict(), a)  # other weights, same name
    two = load_suite("mnist", "smoke", [f"teacher.checkpoint={a}"]).run_config("dfad", 0)
    assert config_difference(one, two) == "teacher_sha256"
    assert "teacher_sha256" not in load_suite("mnist", "smoke").run_config("dfad", 0)  # trained teachers: as before


@pytest.mark.parametrize("subset", [512, 256])  # 4 and 2 steps: one-cycle's warm-up of 0.25 x 4 steps is 1 step
def test_one_cycle_teacher_with_a_handful_of_steps(mnist_data, subset):
    from harness.config import TeacherRecipe
    from harness.data import get_dataset
    from harness.teacher import train_teacher

    recipe = TeacherRecipe(epochs=1, batch_size=128, lr=0.05, schedule="onecycle", train_subset=subset,
                           precision="fp32")
    _, acc, _, epochs = train_teacher(build_model("lenet5"), get_dataset("mnist"), recipe, torch.device("cpu"),
                                      log=lambda *_: None)
    assert epochs == 1 and 0 <= acc <= 1


@pytest.mark.parametrize("schedule", ["onecycle", "multistep"])
def test_interrupted_teacher_resumes_from_its_last_epoch_bit_for_bit(tmp_path, schedule):
    """Ctrl-C while a teacher trains once threw every finished epoch away; now the state after each epoch is
    kept (weights, optimiser, schedule, batch order and augmentation draws, dropout's RNG) and a rerun goes on
    from there to the very weights an uninterrupted training makes."""
    from harness.config import TeacherRecipe
    from harness.teacher import train_teacher

    spec = _tiny_spec()
    spec.augment = "crop_flip"
    recipe = TeacherRecipe(epochs=4, batch_size=16, lr=0.05, schedule=schedule, milestones=[2, 3],
                           precision="fp32", time_budget_s=1e6 if schedule == "onecycle" else None)

    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(_tiny_net(), torch.nn.Dropout(0.3), torch.nn.Linear(3, 3))

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DFAD_DATA", str(tmp_path))
        whole, acc, _, epochs = train_teacher(net(), spec, recipe, torch.device("cpu"), log=lambda *_: None)
        ckpt = tmp_path / "training.pt"

        def stop_at_epoch_3(line):
            if line.startswith("teacher epoch 3/"):
                raise KeyboardInterrupt

        torch.manual_seed(123)  # whatever the process's RNG did meanwhile
        with pytest.raises(KeyboardInterrupt):
            train_teacher(net(), spec, recipe, torch.device("cpu"), log=stop_at_epoch_3, checkpoint=ckpt)
        assert torch.load(ckpt, weights_only=True)["epoch"] == 3  # saved before the epoch is reported
        lines = []
        torch.manual_seed(7)
        resumed, acc2, seconds, epochs2 = train_teacher(net(), spec, recipe, torch.device("cpu"), log=lines.append,
                                                        checkpoint=ckpt)
    assert any("resuming after epoch 3/4" in line for line in lines)
    assert sum(line.startswith("teacher epoch") for line in lines) == 1  # epoch 4 only
    assert epochs2 == epochs == 4 and acc2 == acc and seconds > 0
    for k, v in whole.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


@pytest.mark.parametrize("damage", ["truncated", "keys missing", "another model", "past its end", "other data"])
def test_a_damaged_teacher_checkpoint_trains_from_the_start(tmp_path, damage):
    """A training.pt that cannot be resumed (truncated; loadable but lacking keys; another model's weights; an
    epoch past the planned ones) is named and set aside: the teacher trains from epoch 1, no traceback."""
    from harness.config import TeacherRecipe
    from harness.teacher import train_teacher

    ckpt = tmp_path / "training.pt"
    recipe = TeacherRecipe(epochs=2, batch_size=16, lr=0.05, precision="fp32")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DFAD_DATA", str(tmp_path))
        if damage == "truncated":
            ckpt.write_bytes(b"\x00" * 10)
        else:
            def stop(line):
                if line.startswith("teacher epoch 1/"):
                    raise KeyboardInterrupt
            with pytest.raises(KeyboardInterrupt):
                train_teacher(_tiny_net(), _tiny_spec(), recipe, torch.device("cpu"), log=stop, checkpoint=ckpt)
            state = torch.load(ckpt, weights_only=True)
            if damage == "keys missing":
                del state["elapsed_s"]
            elif damage == "another model":
                state["model"] = torch.nn.Linear(3, 3).state_dict()
            elif damage == "other data":  # the dataset's files replaced under its name: the batch order is another
                state["n_train"] += 10
            else:
                state["epoch"] = 5
            torch.save(state, ckpt)
        lines = []
        _, _, _, epochs = train_teacher(_tiny_net(), _tiny_spec(), recipe, torch.device("cpu"), log=lines.append,
                                        checkpoint=ckpt)
    assert epochs == 2 and any("cannot resume the teacher" in line for line in lines), lines
    assert sum(line.startswith("teacher epoch") for line in lines) == 2
    assert (tmp_path / "training.pt.bad").is_file()  # set aside, not read again



def test_a_checkpoint_that_fails_while_loading_is_set_aside_with_a_one_line_error(tmp_path):
    from harness.config import TeacherRecipe
    from harness.teacher import train_teacher

    ckpt = tmp_path / "training.pt"
    recipe = TeacherRecipe(epochs=2, batch_size=16, lr=0.05, precision="fp32")

    def stop(line):
        if line.startswith("teacher epoch 1/"):
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DFAD_DATA", str(tmp_path))
        with pytest.raises(KeyboardInterrupt):
            train_teacher(_tiny_net(), _tiny_spec(), recipe, torch.device("cpu"), log=stop, checkpoint=ckpt)
        state = torch.load(ckpt, weights_only=True)
        state["batches"]["gen"] = torch.zeros(3, dtype=torch.uint8)  # not a generator's state
        torch.save(state, ckpt)
        with pytest.raises(HarnessError) as e:
            train_teacher(_tiny_net(), _tiny_spec(), recipe, torch.device("cpu"), log=lambda *_: None,
                          checkpoint=ckpt)
        assert "cannot resume the teacher from" in str(e.value) and "set aside as training.pt.bad" in str(e.value)
        assert "\n" not in str(e.value) and not ckpt.exists()
        _, _, _, epochs = train_teacher(_tiny_net(), _tiny_spec(), recipe, torch.device("cpu"), log=lambda *_: None,
                                        checkpoint=ckpt)
    assert epochs == 2


def test_crop_flip_is_each_images_own_crop_and_flip():
    """The batched augmentation equals a per-image crop of the zero-padded image and flip, with the offsets and
    flips drawn in this order from the generator (a teacher's recipe seed gives the same batches as before)."""
    import torch.nn.functional as F

    from harness.data import crop_flip

    n, pad = 8, 2
    x = torch.arange(n * 3 * 8 * 8, dtype=torch.float32).view(n, 3, 8, 8)
    out = crop_flip(x, torch.Generator().manual_seed(1), pad=pad)
    g = torch.Generator().manual_seed(1)
    dy, dx = (torch.randint(0, 2 * pad + 1, (n,), generator=g) for _ in range(2))
    flip = torch.rand(n, generator=g) < 0.5
    assert flip.any() and not flip.all() and len(set(dy.tolist())) > 1  # the draws vary in this batch
    padded = F.pad(x, (pad,) * 4)
    for i in range(n):
        ref = padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8]
        assert torch.equal(out[i], ref.flip(-1) if flip[i] else ref), i


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_crop_flip_on_a_gpu_equals_the_cpu_one():
    """On a GPU the draws travel in one pinned, non-blocking copy: the same crops and flips as on the CPU."""
    from harness.data import crop_flip

    x = torch.rand(64, 3, 32, 32)
    cpu = crop_flip(x, torch.Generator().manual_seed(5))
    gpu = crop_flip(x.cuda(), torch.Generator().manual_seed(5))
    assert torch.equal(gpu.cpu(), cpu)


def test_a_cached_teacher_brings_its_mac_count(tmp_path, mnist_data, monkeypatch):
    """The count is taken once, when the teacher is trained, and kept in its cache record: reusing it runs no
    FLOP counter (a forward pass of the teacher, and a torch._dynamo import). A cache from before that is counted."""
    import harness.teacher as teacher
    from conftest import SMOKE_TEACHER
    from harness.config import load_suite
    from harness.store import read_json, write_json

    suite, cpu = load_suite("mnist", "smoke", SMOKE_TEACHER), torch.device("cpu")
    record = tmp_path / "mnist" / "teacher" / "summary.json"
    assert teacher.ensure_teacher(suite, tmp_path, cpu, log=lambda *_: None).source == "trained"
    macs = read_json(record)["macs"]
    assert macs == read_json(teacher.teacher_cache(suite, tmp_path) / "summary.json")["macs"] > 0
    record.unlink()

    def no_counting(*_):
        raise AssertionError("counted again")

    monkeypatch.setattr(teacher, "count_macs", no_counting)
    assert teacher.ensure_teacher(suite, tmp_path, cpu, log=lambda *_: None).source == "cached"
    assert read_json(record)["macs"] == macs
    cache_record = teacher.teacher_cache(suite, tmp_path) / "summary.json"
    write_json(cache_record, {k: v for k, v in read_json(cache_record).items() if k != "macs"})
    monkeypatch.undo()
    record.unlink()
    assert teacher.ensure_teacher(suite, tmp_path, cpu, log=lambda *_: None).source == "cached"
    assert read_json(record)["macs"] == macs
