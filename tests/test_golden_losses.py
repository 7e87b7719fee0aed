"""Golden values for every discrepancy, kd_loss, the generator objectives and DAFL's generator terms.

tests/fixtures/golden_losses.json holds fixed inputs and values computed once with plain numpy
(float64), not with the harness:
  mae = mean|s-t|, mse = mean (s-t)^2, kld = mean_i sum_c q_ic (log q_ic - log p_ic) (q = softmax t, p = softmax s),
  kd_loss(T) = T^2 * kld(s/T, t/T), neg(d) = -d, ada(d) = -ln(1+d),
  DAFL: oh = mean_i -log softmax(t_i)[argmax t_i], ie = sum_c pbar_c log10 pbar_c (pbar = batch-mean softmax,
  0 log 0 = 0), a = -mean|f|.
"""
import json
from pathlib import Path

import pytest
import torch

from harness.losses import DISCREPANCIES, GENERATOR_OBJECTIVES, kd_loss
from methods.dafl import dafl_generator_terms

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "golden_losses.json").read_text())
IN, EXP = GOLDEN["inputs"], GOLDEN["expected"]
S, T, F = (torch.tensor(IN[k], dtype=torch.float32) for k in ("s", "t", "features"))


def close(got, want, rtol=1e-5):
    assert float(torch.as_tensor(got).detach()) == pytest.approx(want, rel=rtol, abs=1e-6)


@pytest.mark.parametrize("name", ["mae", "mse", "kld"])
def test_discrepancies(name):
    close(DISCREPANCIES.get(name)(S, T), EXP[name])


def test_discrepancy_aliases_are_the_same_functions():
    assert DISCREPANCIES.get("l1") is DISCREPANCIES.get("mae") and DISCREPANCIES.get("kl") is DISCREPANCIES.get("kld")


@pytest.mark.parametrize("temperature", [1, 2, 4])
def test_kd_loss(temperature):
    close(kd_loss(S, T, float(temperature)), EXP[f"kd_loss_T{temperature}"])


def test_kd_loss_default_temperature_is_4():
    close(kd_loss(S, T), EXP["kd_loss_T4"])


@pytest.mark.parametrize("name", ["neg", "ada"])
def test_generator_objectives(name):
    for d, want in zip(IN["d"], EXP[name]):
        close(GENERATOR_OBJECTIVES.get(name)(torch.tensor(d)), want)


def test_dafl_generator_terms():
    got = dafl_generator_terms(T, F)
    for k in ("oh", "ie", "a"):
        close(got[k], EXP["dafl"][k])


def test_dafl_terms_finite_when_a_class_has_no_mass():
    sat = torch.tensor(IN["saturated_t"])
    for dtype in (torch.float32, torch.bfloat16):  # bf16 logits, as under autocast
        x = sat.to(dtype).detach().clone().requires_grad_()
        got = dafl_generator_terms(x, F[:3].to(dtype))
        loss = got["oh"] + 5 * got["ie"] + 0.1 * got["a"]
        loss.backward()
        assert all(v.dtype == torch.float32 for v in got.values())
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
        if dtype == torch.float32:
            for k in ("oh", "ie", "a"):
                close(got[k], EXP["dafl_saturated"][k])
