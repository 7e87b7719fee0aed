"""Golden values for ZSKT's attention-transfer loss and DFQ-style's BatchNorm-statistics loss.

Expected numbers come from tests/fixtures/make_golden_zskt_dfq.py (plain numpy from the formulas)."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from harness.api import build_context, make_method
from methods.dfq import bn_stat_distance
from methods.zskt import at_loss

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "golden_zskt_dfq.json").read_text())
t64 = lambda v: torch.tensor(v, dtype=torch.float64)


def test_attention_transfer_by_hand():
    g = GOLDEN["at_hand"]
    assert at_loss([t64(g["s"])], [t64(g["t"])]).item() == pytest.approx(g["expected"], abs=1e-7)


def test_attention_transfer_golden():
    g = GOLDEN["at"]
    s, t = [t64(a) for a in g["s"]], [t64(a) for a in g["t"]]
    assert at_loss(s, t).item() == pytest.approx(g["expected"], rel=1e-6)
    for si, ti, e in zip(s, t, g["expected_per_stage"]):
        assert at_loss([si], [ti]).item() == pytest.approx(e, rel=1e-6)
    # channel-free: the channel mean makes repeating a stage's channels change nothing
    assert at_loss([s[0].repeat(1, 3, 1, 1)], [t[0]]).item() == pytest.approx(g["expected_per_stage"][0], rel=1e-6)


def _bn(p, eps):
    bn = nn.BatchNorm2d(len(p["weight"]), eps=eps)
    for k, v in p.items():
        getattr(bn, k).data.copy_(torch.tensor(v))
    return bn.eval()


def test_bn_statistics_single_layer_golden():
    g = GOLDEN["bn"]
    got = bn_stat_distance(torch.tensor(g["x"]), _bn(g["bn1"], g["eps"]))
    assert got.item() == pytest.approx(g["expected_layer1"], rel=1e-5)


class TwoBN(nn.Module):
    """BN -> BN -> logits: layer 2's input is layer 1's eval-mode output, as in the fixture."""

    def __init__(self, g):
        super().__init__()
        self.bn1, self.bn2 = _bn(g["bn1"], g["eps"]), _bn(g["bn2"], g["eps"])
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        return self.fc(self.bn2(self.bn1(x)).mean((2, 3)))


def test_dfq_generator_loss_sums_every_teacher_bn_layer():
    g = GOLDEN["bn"]
    torch.manual_seed(0)
    teacher, student = TwoBN(g), TwoBN(g)
    ctx = build_context(teacher, student, (2, 3, 3), 3, 0, 10, "cpu", "fp32", "off")
    m = make_method("dfq", ctx, {"batch_size": 4, "nz": 8, "ngf": 4, "bn_weight": 0.5})
    m.setup()
    x = torch.tensor(g["x"])
    loss = m.generator_loss(x)
    assert m.last_bn.item() == pytest.approx(g["expected_total"], rel=1e-5)
    d = (student(x) - teacher(x)).abs().mean()  # DFAD's mae discrepancy; the objective is -D
    assert loss.item() == pytest.approx(-d.item() + 0.5 * g["expected_total"], rel=1e-5)
    # the hooks are removed after the generator's loss: the teacher is shared with other runs
    assert all(not bn._forward_hooks for bn in (teacher.bn1, teacher.bn2))
