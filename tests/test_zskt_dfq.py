"""ZSKT and DFQ-style through the shared loop: they train the student, count teacher images, and fail
with one line where the models cannot support them (and the runner marks DFQ-style n/a on LeNet)."""
import json

import pytest
import torch

import harness
from conftest import FixedTeacher, random_test_set
from harness.config import load_suite
from harness.errors import HarnessError, NotApplicableError
from harness.models import build_model
from harness.progress import SuiteProgress
from harness.runner import execute_run
from harness.store import Store

CPU = dict(device="cpu", precision="fp32", channels_last="off", seed=0)


def _pair(t="resnet8", s="resnet8", shape=(3, 32, 32), **kw):
    torch.manual_seed(0)
    return (build_model(t, num_classes=10, in_channels=shape[0], **kw),
            build_model(s, num_classes=10, in_channels=shape[0], **kw))


def _changed(before, model):
    return any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("method,kw,per_iter", [
    ("zskt", {"n_s": 2}, 2),          # generator step + one teacher pass for the student steps
    ("dfq", {"k": 2, "bn_weight": 1.0}, 3),  # k imitation steps + the generator step
    ("dfad", {"k": 2}, 3),
])
def test_adversarial_methods_train_tiny_resnets(method, kw, per_iter):
    teacher, student = _pair(width=4)
    before = [p.clone() for p in student.parameters()]
    res = harness.distill(teacher, student, method=method, test_set=random_test_set((3, 32, 32)), iterations=2,
                          eval_every=2, batch_size=8, nz=16, ngf=4, **kw, **CPU)
    assert _changed(before, student)
    assert res.method.teacher_images == 2 * per_iter * 8
    row = res.history[-1]
    assert all(torch.isfinite(torch.tensor(v)) for k, v in row.items() if k.startswith("loss"))
    if method == "zskt":
        assert res.method.use_at and row["loss_at"] > 0
    if method == "dfq":
        assert row["loss_bn"] > 0


def test_zskt_on_lenet_runs_with_attention_transfer_off():
    teacher, student = _pair("lenet5", "lenet5_half", (1, 32, 32))
    before = [p.clone() for p in student.parameters()]
    res = harness.distill(teacher, student, method="zskt", test_set=random_test_set((1, 32, 32)), iterations=2,
                          eval_every=2, batch_size=8, nz=16, ngf=4, n_s=2, **CPU)
    assert _changed(before, student)
    assert not res.method.use_at and res.history[-1]["loss_at"] == 0


def test_zskt_needs_equal_stage_counts():
    teacher, student = _pair("resnet20", "resnet18_8x", width=4)  # 3 stages against 4
    with pytest.raises(HarnessError, match=r"^zskt: teacher has 3 residual stages, student 4;") as e:
        harness.distill(teacher, student, method="zskt", test_set=random_test_set((3, 32, 32)), iterations=1,
                        batch_size=4, nz=8, ngf=4, **CPU)
    assert "\n" not in str(e.value)
    # beta 0 turns attention transfer off, and the pair then runs
    harness.distill(teacher, student, method="zskt", test_set=random_test_set((3, 32, 32)), iterations=1,
                    eval_every=1, batch_size=4, nz=8, ngf=4, n_s=1, beta=0, **CPU)


def test_dfq_on_lenet_fails_with_one_line():
    teacher, student = _pair("lenet5", "lenet5_half", (1, 32, 32))
    with pytest.raises(NotApplicableError) as e:
        harness.distill(teacher, student, method="dfq", test_set=random_test_set((1, 32, 32)), iterations=1,
                        batch_size=4, **CPU)
    assert str(e.value) == "teacher has no BatchNorm layers: DFQ-style needs them"


@pytest.mark.parametrize("method", ["dfq", "zskt"])
def test_runner_records_dfq_unavailable_and_zskt_teacher_images(tmp_path, method):
    """Through the runner with the MNIST smoke suite (LeNet-5): no data files are read."""
    suite = load_suite("mnist", "smoke", ["budget.iterations=2", "budget.eval_every=2", "runtime.device=cpu",
                                          "runtime.precision=fp32", "runtime.channels_last='off'"])
    teacher = build_model("lenet5").eval()
    rd = Store(tmp_path, suite.name).run(method, 0)
    out = execute_run(suite, method, 0, rd, FixedTeacher(teacher), random_test_set((1, 32, 32)), torch.device("cpu"),
                      SuiteProgress(1, live=False))
    summary = json.loads((rd.path / "summary.json").read_text())
    if method == "dfq":
        assert out is None and summary["status"] == "failed" and summary["unavailable"] is True
        assert summary["reason"] == "teacher has no BatchNorm layers: DFQ-style needs them"
    else:
        batch = suite.method_params("zskt").batch_size
        assert summary["status"] == "done" and summary["teacher_forward_images"] == 2 * 2 * batch


def test_not_applicable_runs_are_reported_as_na_not_as_failures(tmp_path):
    """DFQ-style on LeNet-5: the end-of-suite lines say n/a with the reason, on the first pass and on a rerun
    (which skips it), and never "failed"."""
    from harness.runner import SuiteOutcome, _run_one

    suite = load_suite("mnist", "smoke", ["budget.iterations=2", "budget.eval_every=2", "runtime.device=cpu",
                                          "runtime.precision=fp32", "runtime.channels_last='off'"])
    teacher = FixedTeacher(build_model("lenet5").eval())
    test = random_test_set((1, 32, 32))
    rd = Store(tmp_path, suite.name).run("dfq", 0)
    for _ in range(2):
        outcome = SuiteOutcome()
        _run_one(suite, "dfq", 0, rd, lambda: (teacher, test), torch.device("cpu"),
                 SuiteProgress(1, live=False), (), False, outcome)
        assert not outcome.failed and [m for m, _, _ in outcome.not_applicable] == ["dfq"]
        assert outcome.messages() == ["1 run(s) not applicable here, shown as n/a "
                                      "(dfq: teacher has no BatchNorm layers: DFQ-style needs them)"]
