"""RANDOM, DAFL, KD-REL and KD-UNR: each trains the student; RANDOM's generator stays fixed, DAFL's
learns; KD-REL/UNR pick their default data per suite dataset and fail in one line where it is absent."""
import copy
import json
import os
from pathlib import Path

import pytest
import torch

import cliproc
import methods  # noqa: F401  (registers every method)
from harness.api import build_context, distill, make_method
from harness.data import ImageTensors
from harness.errors import HarnessError, MissingDataError
from harness.models import build_model

REPO = Path(__file__).resolve().parent.parent
TINY = dict(device="cpu", precision="fp32", iterations=3, eval_every=3)


def tiny_images(n=32, c=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ImageTensors(torch.randn(n, c, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))


def models(c=1, seed=0):
    torch.manual_seed(seed)
    return build_model("lenet5", in_channels=c), build_model("lenet5_half", in_channels=c)


def weights(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def changed(before, module):
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items() if v.is_floating_point())


@pytest.mark.parametrize("method,hp", [
    ("random", dict(batch_size=16, k=2, source="noise")),
    ("random", dict(batch_size=16, k=2, source="generator", nz=16, ngf=8)),
    ("dafl", dict(batch_size=16, nz=16, ngf=8)),
    ("dafl", dict(batch_size=16, nz=16, ngf=8, optimizer_S="sgd", lr_S=0.1, schedule="cosine")),
    ("kd_rel", dict(batch_size=8)),  # no suite dataset: the train_set passed is the alternative data
    ("kd_unr", dict(batch_size=8)),
])
def test_method_trains_the_student_through_distill(method, hp):
    teacher, student = models()
    before = weights(student)
    r = distill(teacher, student, method=method, test_set=tiny_images(), train_set=tiny_images(seed=1), **TINY, **hp)
    assert changed(before, r.student)
    assert len(r.history) == 1 and 0 <= r.best_acc <= 1
    assert all(torch.isfinite(torch.tensor(v)) for k, v in r.history[0].items() if k.startswith("loss"))


def setup_method(name, hp, dataset="mnist", c=1, precision="fp32"):
    teacher, student = models(c)
    ctx = build_context(teacher, student, (c, 32, 32), 10, 0, 10, "cpu", precision, "off", dataset=dataset)
    m = make_method(name, ctx, hp)
    m.setup()
    return m


def test_random_generator_is_never_updated():
    m = setup_method("random", dict(batch_size=16, k=2, source="generator", nz=16, ngf=8))
    g0, s0 = weights(m.generator), weights(m.ctx.student)
    assert set(m.optimizers) == {"student"} and not any(p.requires_grad for p in m.generator.parameters())
    for i in range(3):
        m.step(i)
    assert not changed(g0, m.generator)  # weights and BN running statistics alike
    assert changed(s0, m.ctx.student)


def test_random_noise_source_has_no_generator():
    m = setup_method("random", dict(batch_size=16, k=1, source="noise"))
    assert "generator" not in m.modules and m.sample(4).shape == (4, 1, 32, 32)


def test_a_methods_version_is_part_of_its_runs_config():
    """DAFL's LeNet-5 features changed outside its Params: version 2 makes its runs another config than those made
    before (never reused or resumed as these); methods at version 1 keep the configs they had."""
    from harness.config import load_suite

    s = load_suite("mnist", "smoke")
    assert s.run_config("dafl", 0)["method_version"] == 2
    assert "method_version" not in s.run_config("dfad", 0)


def test_dafl_runs_dafls_generator_and_reads_the_features_entering_lenets_classifier():
    """DAFL's official generator has BatchNorm eps 0.8 after its two convolutions (DFAD's GeneratorA the default
    1e-5), and its activation term reads LeNet-5's 120 conv features that enter the classifier (lenet.py)."""
    m = setup_method("dafl", dict(batch_size=4, nz=16, ngf=8))
    bns = lambda g: [b.eps for b in g.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    assert bns(m.generator) == [1e-5, 0.8, 0.8, 1e-5]
    assert bns(setup_method("dfad", dict(batch_size=4, nz=16, ngf=8)).generator) == [1e-5] * 4
    logits, feats = m.teacher_forward(torch.randn(2, 1, 32, 32))
    assert logits.shape == (2, 10) and feats.shape == (2, 120)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_dafl_updates_generator_and_student_every_iteration(precision):
    m = setup_method("dafl", dict(batch_size=16, nz=16, ngf=8), precision=precision)
    assert isinstance(m.opt_S, torch.optim.Adam) and isinstance(m.opt_G, torch.optim.Adam)
    assert m.opt_G.param_groups[0]["lr"] == 0.2 and m.opt_S.param_groups[0]["lr"] == 2e-3
    for i in range(2):
        g0, s0 = weights(m.generator), weights(m.ctx.student)
        losses = m.step(i)
        m.count()  # the loop's host-side bookkeeping after each step
        assert changed(g0, m.generator) and changed(s0, m.ctx.student)
        assert all(torch.isfinite(v) for v in losses.values())
    assert m.teacher_images == 32


@pytest.mark.parametrize("name,hp,per_step", [
    ("dafl", dict(batch_size=16, nz=16, ngf=8), 16),
    ("random", dict(batch_size=16, k=2), 32),
    ("zskt", dict(batch_size=8, nz=16, ngf=8, n_s=1), 16),
    ("dfad", dict(batch_size=8, nz=16, ngf=8, k=1), 16),
])
def test_the_teacher_image_count_survives_a_resume(name, hp, per_step):
    """The count behind the summaries' teacher_forward_images (equal-cost reading) travels in the checkpoint for
    every method that counts, not only DFAD's: a resumed DAFL/RANDOM/ZSKT run counted from 0 again."""
    m = setup_method(name, hp, dataset=None)
    for i in range(2):
        m.step(i)
        m.count()
    state = m.state_dict()
    again = setup_method(name, hp, dataset=None)
    again.load_state_dict(state)
    assert again.teacher_images == m.teacher_images == 2 * per_step


def test_kd_counts_the_images_its_teacher_sees(tmp_path):
    """`speed` gives images/s, and the summaries teacher_forward_images, for KD as for the data-free methods."""
    from harness.api import distill

    teacher, student = models()
    r = distill(teacher, student, method="kd_ori", test_set=tiny_images(), train_set=tiny_images(seed=1), **TINY,
                batch_size=8)
    assert r.method.teacher_images == 8 * TINY["iterations"]


def test_dafl_defaults_are_the_official_mnist_ones():
    p = methods.dafl.DAFLParams()
    assert (p.batch_size, p.nz, p.lr_G, p.lr_S, p.optimizer_S, p.w_oh, p.w_ie, p.w_a) == \
        (512, 100, 0.2, 2e-3, "adam", 1.0, 5.0, 0.1)


@pytest.mark.parametrize("method,dataset,source", [
    ("kd_rel", "mnist", "usps"), ("kd_rel", "cifar10", "cifar100"), ("kd_rel", "cifar100", "cifar10"),
    ("kd_unr", "mnist", "cifar10"), ("kd_unr", "cifar10", "mnist"), ("kd_unr", "cifar100", "mnist"),
])
def test_default_data_source_follows_the_suite_dataset(method, dataset, source):
    teacher, student = models()
    ctx = build_context(teacher, student, (1, 32, 32), 10, 0, 10, "cpu", "fp32", "off", dataset=dataset)
    assert make_method(method, ctx, {}).data_source() == source
    assert make_method(method, ctx, {"data": "usps"}).data_source() == "usps"  # still a setting


def test_no_default_source_for_other_datasets_is_one_line():
    teacher, student = models()
    ctx = build_context(teacher, student, (1, 32, 32), 10, 0, 10, "cpu", "fp32", "off", dataset="usps")
    with pytest.raises(HarnessError, match="set methods.kd_unr.data") as e:
        make_method("kd_unr", ctx, {}).data_source()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("method,dataset,c,missing", [
    ("kd_rel", "cifar10", 3, "cifar100"), ("kd_unr", "mnist", 1, "cifar10"), ("kd_rel", "mnist", 1, "usps"),
])
def test_missing_source_is_the_one_line_missing_data_error(method, dataset, c, missing, tmp_path, monkeypatch):
    monkeypatch.setenv("DFAD_DATA", str(tmp_path))
    monkeypatch.setenv("DFAD_DOWNLOAD", "0")
    with pytest.raises(MissingDataError, match=repr(missing)) as e:
        setup_method(method, dict(batch_size=8), dataset=dataset, c=c)
    assert "\n" not in str(e.value)


def test_kd_unr_adapts_the_source_to_the_teacher_input(mnist_data):
    # CIFAR teacher, MNIST source: 1 -> 3 channels, normalised with the CIFAR statistics
    m = setup_method("kd_unr", dict(batch_size=8), dataset="cifar10", c=3)
    x, _ = next(m.batches)
    assert x.shape == (8, 3, 32, 32)
    from harness.data import CIFAR_STATS
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in CIFAR_STATS)
    raw = x * std + mean  # the same gray image in every channel
    torch.testing.assert_close(raw[:, 0], raw[:, 2], atol=1e-5, rtol=0)
    losses = m.step(0)
    assert torch.isfinite(losses["loss_S"])


def test_smoke_suite_records_missing_data_and_goes_on(mnist_data, tmp_path, runs):
    """`dfad-bench run mnist --profile smoke`: KD-UNR's CIFAR-10 is absent from this data root, so that
    run fails as unavailable and the suite goes on (KD-REL, on USPS, which is there)."""
    from conftest import SMOKE_TEACHER

    data = tmp_path / "data"
    (data / ".dfad-cache").mkdir(parents=True)
    for name in ("MNIST", "usps"):
        if (mnist_data / name).exists():
            (data / name).symlink_to(mnist_data / name)
    for f in (mnist_data / ".dfad-cache").glob("*.pt"):
        if f.name.startswith(("mnist", "usps")):
            (data / ".dfad-cache" / f.name).symlink_to(f)
    if not (data / "usps").exists():
        pytest.skip("USPS not under $DFAD_DATA")
    env = {**os.environ, "DFAD_DATA": str(data), "DFAD_DOWNLOAD": "0", "OMP_NUM_THREADS": "1"}
    cmd = ["run", "mnist", "--profile", "smoke", "--no-report", "--methods", "kd_unr,kd_rel", "--runs-dir", runs,
           *SMOKE_TEACHER]  # the teacher cached in runs
    out = cliproc.run(cmd, env=env, cwd=REPO, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = {m: json.loads((runs / "mnist" / m / "seed-0" / "summary.json").read_text()) for m in ("kd_rel", "kd_unr")}
    assert summary["kd_rel"]["status"] == "done", summary["kd_rel"]
    unr = summary["kd_unr"]
    assert unr["status"] == "failed" and unr["unavailable"] is True
    assert "cifar10" in unr["reason"] and "\n" not in unr["reason"]
    # the terminal says what the table will show: n/a (the data can still be added), not FAILED
    assert "kd_unr seed 0: n/a - " in out.stdout and "FAILED" not in out.stdout
    assert "1 run(s) without their data here, shown as n/a" in out.stdout + out.stderr
    assert "run(s) failed" not in out.stdout + out.stderr


@pytest.mark.parametrize("profile", ["paper", "quick", "smoke", "cifar10"])
def test_ablation_variants_differ_only_in_loss(profile):
    from harness.config import load_suite

    s = load_suite("ablation-loss", profile)
    params = {m: s.method_params(m).model_dump() for m in s.method_names()}
    assert {m: s.run_config(m, 0)["method_class"] for m in params} == dict.fromkeys(params, "dfad")
    assert {p.pop("loss") for p in params.values()} == {"mae", "mse", "kld"}
    assert all(p == params["dfad_mae"] for p in params.values())  # the rest identical, as are seeds and budget


def test_dfad_uses_one_discrepancy_for_both_stages():
    m = setup_method("dfad", dict(batch_size=8, nz=16, ngf=8, k=3, loss="mse"))
    calls = []
    inner = m.discrepancy
    m.discrepancy = lambda s, t: calls.append(1) or inner(s, t)
    m.step(0)
    assert inner.__name__ == "mse" and len(calls) == 3 + 1  # k student steps + the generator step


@pytest.mark.parametrize("suite,weights,opt_S,lr", [
    ("mnist", (1.0, 5.0, 0.1), "adam", (2e-3, 0.2)),
    ("cifar10", (0.05, 5.0, 0.01), "sgd", (0.1, 0.02)),
    ("cifar100", (0.5, 20.0, 0.1), "sgd", (0.1, 0.02)),
])
def test_paper_profiles_carry_dafl_official_settings(suite, weights, opt_S, lr):
    from harness.config import load_suite

    s = load_suite(suite, "paper")
    assert s.method_names()[:6] == ["kd_ori", "kd_rel", "kd_unr", "random", "dafl", "dfad"]  # Table 2's rows
    p = s.method_params("dafl")
    assert (p.w_oh, p.w_ie, p.w_a) == weights and p.optimizer_S == opt_S and (p.lr_S, p.lr_G) == lr
    if suite != "mnist":
        assert p.nz == 1000 and p.milestones == [0.4, 0.8] and p.weight_decay == 5e-4
    r, d = s.method_params("random"), s.method_params("dfad")
    # Table 2: "inputs from a fixed, untrained generator"; otherwise DFAD's budget and losses
    assert r.source == "generator" and r.model_dump(exclude={"source"}) == d.model_dump()


def test_usps_framed_matches_mnist_digit_size(mnist_data):
    """KD-REL's investigation source: USPS scaled into MNIST's frame. Its ink is about as tall as MNIST's
    (23 px of 32), where plain USPS resized to 32 fills the image."""
    from harness.data import get_dataset

    if not (mnist_data / "usps").exists():
        pytest.skip("USPS not under $DFAD_DATA")

    def ink_height(name):
        x = get_dataset(name).load("test", mnist_data).x[:500, 0] > 64
        rows = x.any(2).float()
        idx = torch.arange(32).float()
        top = torch.where(rows.bool(), idx, 99.0).min(1).values
        bottom = torch.where(rows.bool(), idx, -1.0).max(1).values
        return (bottom - top + 1).mean().item()

    framed, plain, mnist = ink_height("usps_framed"), ink_height("usps"), ink_height("mnist")
    assert abs(framed - mnist) < 2.0 < plain - mnist
    x = get_dataset("usps_framed").load("test", mnist_data).x
    assert x.shape[1:] == (1, 32, 32) and x[..., :4, :].max() == 0 and x[..., -4:].max() == 0


def test_a_resumed_run_keeps_its_own_optimiser_implementation():
    """A checkpoint's optimiser state carries how it computed (foreach on the CPU); a run resumed elsewhere
    keeps its own (fused Adam on a GPU: fused on the CPU here), with the step counters where that needs them."""
    hp = dict(batch_size=8, nz=16, ngf=8, k=1)
    m = setup_method("dfad", hp, dataset=None)
    m.step(0)
    state = copy.deepcopy(m.state_dict())
    assert state["optimizers"]["generator"]["param_groups"][0]["foreach"] is True
    again = setup_method("dfad", hp, dataset=None)
    for g in again.optimizers["generator"].param_groups:  # as adam() makes it on a GPU
        g.update(fused=True, foreach=None)
    again.load_state_dict(state)
    group = again.optimizers["generator"].param_groups[0]
    assert group["fused"] is True and group["foreach"] is None
    assert group["lr"] == state["optimizers"]["generator"]["param_groups"][0]["lr"]  # the hyperparameters: the checkpoint's
    steps = [s["step"] for s in again.optimizers["generator"].state.values()]
    assert steps and all(t.dtype == torch.float32 and float(t) == 1 for t in steps)
    out = again.step(1)  # the fused step runs on the loaded state
    assert all(torch.isfinite(v) for v in out.values())
    assert all(float(s["step"]) == 2 for s in again.optimizers["generator"].state.values())


def fixed_noise(m):
    """Every draw of the method's noise is one fixed batch, so each step's effect can be measured on it."""
    z = m.noise()
    m.noise = lambda: z
    return z


@pytest.mark.parametrize("hp", [dict(loss="mae"), dict(loss="mse"), dict(loss="kld", gen_objective="ada")])
def test_dfad_student_descends_and_generator_ascends_the_discrepancy(hp):
    """The game's two directions, measured: the imitation step lowers D on the images it trained on, and the
    generation step raises D against the updated student (each step small enough to move along its gradient)."""
    m = setup_method("dfad", dict(batch_size=16, nz=16, ngf=8, k=1, lr_S=0.01, **hp), dataset=None)
    z, T = fixed_noise(m), m.ctx.teacher

    @torch.no_grad()
    def D(S, G):
        x = G(z)
        return float(m.discrepancy(S(x), T(x)))

    S0, G0 = copy.deepcopy(m.ctx.student), copy.deepcopy(m.generator)
    out = m.step(0)
    S1, G1 = m.ctx.student, m.generator
    assert D(S1, G0) < D(S0, G0)  # the student's step, on x = G0(z)
    assert D(S1, G1) > D(S1, G0)  # the generator's step, against S1
    assert float(out["loss_S"]) == pytest.approx(D(S0, G0), rel=1e-5)
    assert float(out["loss_G"]) == pytest.approx(float(m.objective(torch.tensor(D(S1, G0)))), rel=1e-5)


def zskt_method(**hp):
    torch.manual_seed(0)
    teacher, student = (build_model("resnet8", in_channels=1, width=w) for w in (4, 2))
    ctx = build_context(teacher, student, (1, 32, 32), 10, 0, 10, "cpu", "fp32", "off")
    m = make_method("zskt", ctx, dict(batch_size=8, nz=16, ngf=8, n_s=1, **hp))
    m.setup()
    return m


def test_zskt_generator_ascends_the_kl_and_the_student_descends_kl_plus_attention():
    from methods.zskt import at_loss

    m = zskt_method(beta=250.0)
    z, T = fixed_noise(m), m.ctx.teacher
    assert m.use_at

    @torch.no_grad()
    def losses(S, G):
        x = G(z)
        (s, fs), (t, ft) = S(x, return_features=True), T(x, return_features=True)
        return float(m.kl(s, t)), float(at_loss(fs["stages"], ft["stages"]))

    S0, G0 = copy.deepcopy(m.ctx.student), copy.deepcopy(m.generator)
    S0.train(), G0.train()
    out = m.step(0)
    S1, G1 = m.ctx.student, m.generator
    assert losses(S0, G1)[0] > losses(S0, G0)[0]  # the generator's step, against the student before its steps
    kl0, at0 = losses(S0, G1)
    kl1, at1 = losses(S1, G1)
    assert kl1 + 250 * at1 < kl0 + 250 * at0  # the student's step, on x = G1(z)
    # the student's loss is both terms, with beta
    assert float(out["loss_S"]) == pytest.approx(float(out["loss_kl"]) + 250 * float(out["loss_at"]), rel=1e-5)
    assert float(out["loss_at"]) > 0 and float(out["loss_G"]) == pytest.approx(-losses(S0, G0)[0], rel=1e-4)


def test_dafl_generator_loss_is_its_three_weighted_terms():
    m = setup_method("dafl", dict(batch_size=16, nz=16, ngf=8, w_oh=1.0, w_ie=5.0, w_a=0.1), dataset=None)
    out = m.step(0)
    assert all(float(out[k]) != 0 for k in ("loss_oh", "loss_ie", "loss_a"))
    expected = out["loss_oh"] + 5.0 * out["loss_ie"] + 0.1 * out["loss_a"]
    assert float(out["loss_G"]) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_loss_uses_the_temperature(temperature):
    """KD-ORI's loss on its batch is T^2 KL(softmax(t/T) || softmax(s/T)) at the configured temperature."""
    from harness.losses import kd_loss

    teacher, student = models()
    ctx = build_context(teacher, student, (1, 32, 32), 10, 0, 10, "cpu", "fp32", "off", train_set=tiny_images(64))
    m = make_method("kd_ori", ctx, dict(batch_size=16, temperature=temperature))
    m.setup()
    x = tiny_images(16, seed=2).x  # the batch the step reads (normalised, as the batches come)
    m.batches = iter([(x, torch.zeros(16, dtype=torch.long))])
    S0 = copy.deepcopy(student)
    with torch.no_grad():
        s, t = S0(x), teacher(x)
    out = m.step(0)
    assert float(out["loss_S"]) == pytest.approx(float(kd_loss(s, t, temperature)), rel=1e-5)
    other = 4.0 if temperature == 1.0 else 1.0
    assert float(out["loss_S"]) != pytest.approx(float(kd_loss(s, t, other)), rel=1e-3)
