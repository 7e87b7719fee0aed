"""harness.distill with a user's own teacher and dataset, of a shape and class count the suites never use."""
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

import harness
from harness.errors import HarnessError


class TinyNet(nn.Module):
    def __init__(self, c=2, k=7):
        super().__init__()
        self.conv = nn.Conv2d(c, 8, 3, padding=1)
        self.fc = nn.Linear(8, k)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def _data(n=64, shape=(2, 20, 24), k=7):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, *shape, generator=g), torch.randint(0, k, (n,), generator=g))


def test_distill_any_shape_and_classes():
    torch.manual_seed(0)
    teacher, student = TinyNet(), TinyNet()
    before = [p.clone() for p in student.parameters()]
    teacher_before = [p.clone() for p in teacher.parameters()]
    res = harness.distill(teacher, student, method="dfad", test_set=_data(), seed=0,
                          iterations=6, eval_every=3, batch_size=8, nz=16, ngf=4, precision="fp32")
    assert [r["iteration"] for r in res.history] == [3, 6]
    assert res.final_acc == res.history[-1]["test_acc"]
    assert res.best_acc == max(r["test_acc"] for r in res.history)
    assert all(0 <= r["test_acc"] <= 1 for r in res.history)
    assert res.student is student
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    # the teacher was frozen for the run (its weights are unchanged) and is given back as it came: in train
    # mode, asking for gradients, in its own layout; the student comes back ready for inference
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, teacher.parameters()))
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())
    assert teacher.conv.weight.is_contiguous()
    assert not student.training and student.conv.weight.is_contiguous()


def test_distill_kd_with_user_train_set():
    torch.manual_seed(0)
    res = harness.distill(TinyNet(), TinyNet(), method="kd_ori", test_set=_data(), train_set=_data(128),
                          iterations=4, eval_every=2, batch_size=16, precision="fp32")
    assert len(res.history) == 2 and "loss_S" in res.history[0]


def test_distill_same_seed_same_result():
    def once():
        torch.manual_seed(123)
        t, s = TinyNet(), TinyNet()
        harness.distill(t, s, test_set=_data(), seed=1, iterations=4, eval_every=2, batch_size=8, nz=8, ngf=4,
                        precision="fp32", channels_last="off")
        return torch.cat([p.flatten() for p in s.parameters()])

    torch.testing.assert_close(once(), once())


def test_distill_rejects_bad_hyperparameters():
    import pytest

    with pytest.raises(HarnessError, match="batch_size"):
        harness.distill(TinyNet(), TinyNet(), test_set=_data(), batch_size=0)
    with pytest.raises(HarnessError, match="unknown key"):
        harness.distill(TinyNet(), TinyNet(), test_set=_data(), lr_s=0.1)
    with pytest.raises(HarnessError, match="did you mean 'dfad'"):
        harness.distill(TinyNet(), TinyNet(), method="dfda", test_set=_data())
    with pytest.raises(HarnessError, match="eval_precision"):
        harness.distill(TinyNet(), TinyNet(), test_set=_data(), eval_precision="bf16")


def test_distill_names_a_model_that_does_not_fit():
    """Checked before anything is built or trained, with the argument that disagrees named."""
    cases = [
        (TinyNet(), TinyNet(k=5), {}, "student gives output (2, 5) for input_shape (2, 20, 24), not (batch, 7, ...)"),
        (TinyNet(), TinyNet(c=3), {}, "student cannot take input_shape (2, 20, 24): RuntimeError"),
        (TinyNet(), TinyNet(), {"num_classes": 9}, "teacher gives output (2, 7) for input_shape (2, 20, 24), not (batch, 9"),
    ]
    for teacher, student, kw, fragment in cases:
        student.train()
        try:
            harness.distill(teacher, student, method="dfad", test_set=_data(), iterations=2, batch_size=8, **kw)
        except HarnessError as e:
            assert fragment in str(e) and "\n" not in str(e), str(e)
        else:
            raise AssertionError(f"no error for {fragment!r}")
        assert student.training  # the check leaves the model's mode as it was


def test_test_set_as_pil_images_or_a_dataloader():
    """What users hand over: torchvision datasets without a transform (PIL images) and DataLoaders."""
    from PIL import Image
    from torch.utils.data import DataLoader

    from harness.data import materialize

    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (6, 3, 5, 4), dtype=torch.uint8, generator=g)
    pil = [(Image.fromarray(im.permute(1, 2, 0).numpy()), i % 3) for i, im in enumerate(imgs)]
    a = materialize(pil)
    assert torch.equal(a.x, imgs.float() / 255) and a.y.tolist() == [0, 1, 2, 0, 1, 2]  # as ToTensor gives them
    b = materialize(DataLoader([(im.float(), i) for i, im in enumerate(imgs)], batch_size=4))
    assert torch.equal(b.x, imgs.float()) and b.y.tolist() == list(range(6))
    res = harness.distill(TinyNet(c=3, k=3), TinyNet(c=3, k=3), method="kd_ori", test_set=pil, train_set=pil,
                          iterations=2, eval_every=2, batch_size=2, precision="fp32")
    assert [r["iteration"] for r in res.history] == [2]  # KD on a PIL train set
    seg = materialize([(torch.zeros(3, 4, 4), torch.ones(4, 4, dtype=torch.long))] * 3)  # label maps stay maps
    assert seg.metric == "miou" and tuple(seg.y.shape) == (3, 4, 4)
    for bad in ([("an image", 1)], [(torch.zeros(3, 8, 8), 0), (torch.zeros(3, 9, 9), 1)], [1, 2]):
        try:
            materialize(bad)
        except HarnessError as e:
            assert str(e).startswith("test_set: expected (image, label) pairs") and "\n" not in str(e)
        else:
            raise AssertionError(f"no error for {bad!r}")


def test_labels_and_shapes_that_would_broadcast_are_refused_before_training():
    """A label column (N, 1) is read as (N,) (it would compare as (B, B) with the predictions: accuracy > 1);
    one-hot labels, labels past the teacher's classes, an input_shape other than the data's, a train_set of
    other images, and two output shapes (a loss over every pair of samples) are one-line errors."""
    import pytest

    x, y = _data().tensors
    col = harness.distill(TinyNet(), TinyNet(), test_set=TensorDataset(x, y[:, None]), iterations=2, eval_every=2,
                          batch_size=8, nz=8, ngf=4, precision="fp32")
    assert 0 <= col.best_acc <= 1
    with torch.no_grad():
        assert col.best_acc == pytest.approx((col.student(x).argmax(1) == y).float().mean().item())

    class ConvHead(nn.Module):  # (batch, 7, 1, 1): a classifier ending in a 1x1 convolution
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 7, 1)

        def forward(self, x):
            return self.conv(x).mean((2, 3), keepdim=True)

    onehot = torch.nn.functional.one_hot(y, 7)
    cases = [
        (dict(test_set=TensorDataset(x, onehot)), "labels must be class indices, one per image"),
        (dict(test_set=TensorDataset(x, y + 5)), "test_set's labels run 5..11, but the teacher has 7 classes"),
        (dict(test_set=_data(), input_shape=(2, 16, 24)), "input_shape (2, 16, 24) but test_set's images are (2, 20, 24)"),
        (dict(test_set=_data(), method="kd_ori", train_set=_data(shape=(2, 16, 16))),
         "train_set's images are (2, 16, 16) but the test set's"),
        (dict(test_set=_data(), method="kd_ori", train_set=TensorDataset(x)), "train_set: expected (image, label) pairs"),
        (dict(test_set=_data(), teacher=ConvHead()), "teacher gives output (batch, 7, 1, 1) and the student (batch, 7)"),
        (dict(test_set=_data(), method="kd_unr", data="mnist"), "distill() does not know how your teacher's inputs"),
        # (no hint at `data=`, which distill() refuses just above)
        (dict(test_set=_data(), method="kd_rel"), "this method needs training data: pass train_set= (a Dataset of"),
        (dict(test_set=_data(), iterations=0), "distill: iterations: Input should be greater than 0"),
        (dict(test_set=_data(), eval_every=0), "distill: eval_every: Input should be greater than 0"),
        (dict(test_set=_data(), precision="fp16"), "distill: precision: Input should be 'auto', 'fp32' or 'bf16'"),
        (dict(test_set=_data(), channels_last="yes"), "distill: channels_last"),
        (dict(test_set=_data(), iterations=True), "distill: iterations: Value error, expected a number"),
        (dict(test_set=_data(), student=None), "distill: the student must be a torch.nn.Module, got NoneType"),
        (dict(test_set=_data(), teacher=lambda x: x), "distill: the teacher must be a torch.nn.Module, got function"),
        (dict(test_set=_data(), method="kd_ori", train_set=torch.utils.data.ConcatDataset(
            [_data(8), _data(8, shape=(2, 16, 16))])),  # the first sample is fine; a later batch mixes sizes
         "train_set: a batch could not be formed (RuntimeError: stack expects each tensor to be equal size"),
        (dict(test_set=_data(), batch_size=True), "batch_size: Value error, expected a number"),
        (dict(test_set=_data(), milestones=[50, 100], schedule="multistep"), "milestones.0: Input should be less than"),
    ]
    for kw, fragment in cases:
        kw = {"teacher": TinyNet(), "student": TinyNet(), "iterations": 2, "batch_size": 8, **kw}
        with pytest.raises(HarnessError) as e:
            harness.distill(**kw)
        assert fragment in str(e.value) and "\n" not in str(e.value), (fragment, str(e.value))
    class Buggy(torch.utils.data.Dataset):  # the user's own bug is theirs: raised as it is, not a data diagnosis
        def __len__(self):
            return 16

        def __getitem__(self, i):
            if i >= 8:
                raise TypeError("unsupported operand in my transform")
            return torch.randn(2, 20, 24), 0

    with pytest.raises(TypeError, match="unsupported operand in my transform"):
        harness.distill(TinyNet(), TinyNet(), method="kd_ori", test_set=_data(), train_set=Buggy(), iterations=2,
                        batch_size=16)
    with pytest.raises(HarnessError, match="its weights are float16: pass it as float32, e.g. model.float()"):
        harness.distill(TinyNet().half(), TinyNet(), test_set=_data(), iterations=2)
    empty = TensorDataset(torch.zeros(0, 2, 20, 24), torch.zeros(0, dtype=torch.long))
    with pytest.raises(HarnessError, match="^test_set is empty$"):
        harness.distill(TinyNet(), TinyNet(), test_set=empty, iterations=2)

    class Dicts(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"image": torch.zeros(2, 20, 24), "label": 0}

    with pytest.raises(HarnessError, match="samples are dicts .keys image, label.; give a Dataset whose items are"):
        harness.distill(TinyNet(), TinyNet(), test_set=Dicts(), iterations=2)
    same = TinyNet()
    with pytest.raises(HarnessError, match="the same module"):
        harness.distill(same, same, test_set=_data(), iterations=2)


def test_samples_may_carry_more_than_image_and_label():
    """(image, label, index) samples, as many datasets give: the extras are left out."""
    from harness.data import materialize

    class WithIndex(torch.utils.data.Dataset):
        def __init__(self):
            self.base = _data(10)

        def __len__(self):
            return len(self.base)

        def __getitem__(self, i):
            return (*self.base[i], i, f"img{i}.png")

    got, want = materialize(WithIndex()), materialize(_data(10))
    assert torch.equal(got.x, want.x) and torch.equal(got.y, want.y)


def test_user_train_sets_of_any_size_or_as_a_dataloader():
    """A train_set smaller than the batch gives batches of all of it; a DataLoader is used as it comes; uint8
    images are scaled to [0, 1] as PIL ones are."""
    from torch.utils.data import DataLoader

    from harness.data import LoaderBatches, materialize

    small = _data(5)
    assert next(LoaderBatches(small, 256, "cpu"))[0].shape[0] == 5  # drop_last with 256 would give no batch
    loader = DataLoader(_data(12), batch_size=4)
    batches = LoaderBatches(loader, 256, "cpu")
    assert [next(batches)[0].shape[0] for _ in range(4)] == [4, 4, 4, 4]  # its own batches, cycled
    res = harness.distill(TinyNet(), TinyNet(), method="kd_ori", test_set=_data(), train_set=loader,
                          iterations=2, eval_every=2, precision="fp32")
    assert len(res.history) == 1
    class Stream(torch.utils.data.IterableDataset):  # in its own order; labels KD never reads (40 attributes)
        def __iter__(self):
            g = torch.Generator().manual_seed(1)
            return iter([(torch.randn(2, 20, 24, generator=g), torch.zeros(40)) for _ in range(20)])

    res = harness.distill(TinyNet(), TinyNet(), method="kd_ori", test_set=_data(), train_set=Stream(),
                          iterations=3, eval_every=3, batch_size=8, precision="fp32")
    assert len(res.history) == 1
    u8 = torch.randint(0, 256, (3, 2, 4, 4), dtype=torch.uint8)
    assert torch.equal(materialize(TensorDataset(u8, torch.zeros(3, dtype=torch.long))).x, u8.float() / 255)


def test_distill_leaves_the_callers_random_numbers_alone():
    teacher, student, data = TinyNet(), TinyNet(), _data()
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    harness.distill(teacher, student, test_set=data, iterations=2, eval_every=2, batch_size=8, nz=8, ngf=4,
                    precision="fp32")
    assert torch.equal(torch.rand(3), expected)


def test_dafl_reads_any_teachers_penultimate_features_from_its_last_linear():
    """The harness's models give them with return_features=True; another teacher's are its last nn.Linear's input
    (DAFL's activation term), and a teacher with neither is a one-line error before training."""
    import pytest

    from methods.dafl import penultimate_source

    teacher = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 7))
    assert penultimate_source(teacher) is teacher[-1]
    res = harness.distill(teacher, TinyNet(), method="dafl", test_set=_data(), iterations=2, eval_every=2,
                          batch_size=8, nz=8, ngf=4, precision="fp32")
    assert torch.isfinite(torch.tensor(res.history[-1]["loss_a"]))
    assert not teacher[-1]._forward_hooks  # the hook lives for one forward only
    pooled = nn.Sequential(nn.Conv2d(2, 7, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(HarnessError, match="dafl needs the teacher's penultimate features"):
        harness.distill(pooled, TinyNet(), method="dafl", test_set=_data(), iterations=2, batch_size=8)


class Scripted(nn.Module):
    """A student whose answers follow a script: right (class 0, every label here) until iteration `wrong_from`."""

    def __init__(self, wrong_from):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.wrong_from, self.it = wrong_from, 0

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 3) + self.w
        logits[:, 0 if self.it < self.wrong_from else 1] += 1
        return logits


def scripted_loop(iterations, eval_every, wrong_from):
    from harness.api import build_context
    from harness.data import ImageTensors
    from harness.loop import run_loop
    from harness.method import Method

    class Follows(Method):
        name = "scripted"

        def setup(self):
            pass

        def step(self, it):
            self.ctx.student.it = it + 1  # the iterations done once this step is
            return {"loss_S": torch.zeros(())}

    ctx = build_context(TinyNet(1, 3), Scripted(wrong_from), (1, 4, 4), 3, 0, iterations, "cpu", "fp32", "off")
    m = Follows(ctx, Follows.Params())
    m.setup()
    test = ImageTensors(torch.zeros(6, 1, 4, 4), torch.zeros(6, dtype=torch.long))
    return run_loop(m, test, iterations, eval_every)


def test_best_is_the_best_evaluation_and_final_the_last():
    """The tables report the best evaluation; a student that gets worse at the end keeps its best."""
    r = scripted_loop(iterations=6, eval_every=2, wrong_from=5)
    assert [(h["iteration"], h["test_acc"]) for h in r.history] == [(2, 1.0), (4, 1.0), (6, 0.0)]
    assert r.best_acc == 1.0 and r.final_acc == 0.0


def test_the_last_iteration_is_always_evaluated():
    """A budget that is not a multiple of eval_every (or smaller than it) still ends with an evaluation of
    the final student."""
    assert [h["iteration"] for h in scripted_loop(5, 2, wrong_from=99).history] == [2, 4, 5]
    r = scripted_loop(3, 10, wrong_from=3)
    assert [h["iteration"] for h in r.history] == [3] and r.final_acc == 0.0


def test_distill_seeds_give_different_runs():
    """The seed reaches the method's noise: seeds 0, 1 and 2 of a suite are three runs, not one run three times."""
    def once(seed):
        torch.manual_seed(123)  # the same initial models for every seed
        t, s = TinyNet(), TinyNet()
        harness.distill(t, s, test_set=_data(), seed=seed, iterations=2, eval_every=2, batch_size=8, nz=8, ngf=4,
                        precision="fp32", channels_last="off")
        return torch.cat([p.flatten() for p in s.parameters()])

    a, b = once(0), once(1)
    assert not torch.allclose(a, b)


def test_a_train_mode_teacher_is_run_in_eval_mode():
    """A teacher handed over in train mode is frozen in eval mode for the run: its BatchNorm layers normalise
    with their running statistics and never update them (DFAD and DFQ-style, whose prior reads those layers)."""
    from harness.models import build_model

    for method in ("dfad", "dfq"):
        torch.manual_seed(0)
        teacher, student = (build_model("resnet8", in_channels=1, width=w) for w in (4, 2))
        teacher.train()
        stats = {k: v.clone() for k, v in teacher.state_dict().items() if "running" in k or "num_batches" in k}
        harness.distill(teacher, student, method=method, test_set=_data(8, (1, 32, 32), 10), iterations=2,
                        eval_every=2, batch_size=8, nz=8, ngf=4, precision="fp32", channels_last="off")
        assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in stats.items()), method
        assert teacher.training  # given back as it came


def test_a_bf16_run_is_scored_in_fp32_unless_asked():
    """The students' test accuracy is what their fp32 weights score wherever they are loaded, whatever precision
    trained them; eval_precision="run" scores them in the run's precision (faster on a CPU)."""
    for eval_precision, autocast_in_eval in (("fp32", False), ("run", True)):
        torch.manual_seed(0)
        seen, student = [], TinyNet()
        student.register_forward_pre_hook(lambda mod, _: seen.append((mod.training, torch.is_autocast_enabled("cpu"))))
        harness.distill(TinyNet(), student, test_set=_data(), iterations=2, eval_every=2, batch_size=8, nz=8, ngf=4,
                        precision="bf16", channels_last="off", eval_precision=eval_precision)
        evaluation = [a for training, a in seen if not training][-1]  # the one evaluation (earlier: shape checks)
        assert evaluation == autocast_in_eval, eval_precision
        assert {a for training, a in seen if training} == {True}  # trained in bf16 either way


def test_the_generator_does_not_start_as_a_copy_of_the_student():
    """The runner builds the student right after manual_seed(seed) (a user of distill may too): the method's own
    randomness comes from another stream, so the generator's first weights do not replay the student's draws."""
    from harness.api import build_context, make_method
    from harness.models import build_model

    teacher = build_model("lenet5", num_classes=10, in_channels=1)
    for seed in (0, 1):
        torch.manual_seed(seed)
        student = build_model("lenet5_half", num_classes=10, in_channels=1)
        first = student.state_dict()[next(iter(student.state_dict()))].flatten()
        ctx = build_context(teacher, student, (1, 32, 32), 10, seed, 10, "cpu", "fp32", "off")
        m = make_method("dfad", ctx, {"batch_size": 4, "nz": 8, "ngf": 4})
        m.setup()
        # both layers are initialised as (2U - 1) * bound: the same uniforms U would correlate perfectly
        g = m.modules["generator"].l1.weight.detach().flatten()[:first.numel()]
        r = torch.corrcoef(torch.stack([first.detach(), g]))[0, 1].item()
        assert abs(r) < 0.5, (seed, r)


class StridedPointwiseNet(nn.Module):
    """A 1x1 convolution with stride 2 on few channels: the shape oneDNN's channels-last weight gradient corrupts
    memory on (uxlfoundation/oneDNN#6035; on this project's AVX2 CPU: a segfault, a double free, or a hang)."""

    def __init__(self, c=4):
        super().__init__()
        self.stem = nn.Conv2d(2, c, 3, padding=1)
        self.down = nn.Conv2d(c, 8, 1, stride=2, bias=False)
        self.fc = nn.Linear(8, 7)

    def forward(self, x):
        return self.fc(torch.relu(self.down(torch.relu(self.stem(x)))).mean((2, 3)))


def test_channels_last_steps_aside_for_the_layer_onednn_corrupts():
    import warnings

    from harness.api import build_context
    from harness.env import channels_last_hazard

    cpu = torch.device("cpu")
    assert "down is a 1x1 convolution with stride 2 and 4 input channels" in channels_last_hazard(
        cpu, StridedPointwiseNet())
    assert channels_last_hazard(cpu, StridedPointwiseNet(c=16)) is None  # a full block of input channels
    assert channels_last_hazard(cpu, TinyNet()) is None
    assert channels_last_hazard(torch.device("cuda"), StridedPointwiseNet()) is None  # a CPU kernel's bug
    frozen = StridedPointwiseNet().requires_grad_(False)
    assert channels_last_hazard(cpu, frozen) is None  # no weight gradient, no bug

    def ctx(student, teacher, fast=True):
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            c = build_context(teacher, student, (2, 20, 24), 7, 0, 4, "cpu", "fp32", "auto", fast=fast)
        return c.channels_last, [str(w.message) for w in said]

    on, said = ctx(StridedPointwiseNet(), TinyNet())
    assert not on and any("running channels-first" in s and "oneDNN#6035" in s for s in said)
    assert ctx(TinyNet(), TinyNet()) == (True, [])
    assert ctx(TinyNet(), StridedPointwiseNet())[0]  # a frozen teacher takes no weight gradient
    assert not ctx(TinyNet(), StridedPointwiseNet(), fast=False)[0]  # the plain path's teacher does


def test_a_student_with_that_layer_distills_on_the_cpu():
    """Without the guard this run hangs or dies in the student's backward on AVX2 CPUs (and may get wrong gradients
    where the kernel neither crashes nor hangs): in its own process, with a time limit."""
    import subprocess
    import sys

    from conftest import REPO

    code = ("import torch, harness; from test_api import StridedPointwiseNet, TinyNet, _data; torch.manual_seed(0); "
            "s = StridedPointwiseNet(); r = harness.distill(TinyNet(), s, test_set=_data(shape=(2, 32, 32)), "
            "iterations=4, eval_every=2, batch_size=8, nz=8, ngf=4, precision='fp32'); "
            "print(r.iterations)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO / "tests", capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-1500:]
    assert r.stdout.split() == ["4"] and "running channels-first" in r.stderr
