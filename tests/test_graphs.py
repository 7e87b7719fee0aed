"""runtime.cuda_graph (harness/graphs.py): a graphable method's iteration captured once and replayed.

No GPU here, so the capture itself is tested with a CPU stand-in that has CUDA graphs' semantics (capture
runs the step's Python but changes no tensor; replay reruns the recorded work and rewrites the captured
outputs in place). That checks the wrapper's logic: warm-up, when it recaptures, the host-side counters,
what it falls back on. What a capture forbids, a read of a value on the host, is checked by running the graphable
steps on PyTorch's meta device. The real capture is checked by the CUDA test at the end, where a GPU is present.
"""
import copy

import pytest
import torch

import methods  # noqa: F401  (registers every method)
from harness.api import build_context, make_method
from harness.config import RuntimeCfg
from harness.data import ImageTensors
from harness.errors import HarnessError
from harness.graphs import GraphedStep, lr_key
from harness.loop import run_loop
from harness.models import build_model

HP = dict(batch_size=8, nz=16, ngf=8, k=2)


class StandInGraph:
    """torch.cuda.CUDAGraph's semantics on a CPU (see the module docstring)."""

    capturable_optimizers = False  # PyTorch refuses capturable optimisers on CPU tensors
    made = 0

    def __init__(self, method):
        self.method = method
        StandInGraph.made += 1

    @staticmethod
    def warm(method, fn):
        return fn()

    def capture(self, fn):
        m = self.method
        state, rng = copy.deepcopy(m.state_dict()), torch.get_rng_state()
        out = fn()  # the Python runs: hooks, zero_grad, ...; then every tensor goes back, as nothing ran
        m.load_state_dict(state)
        torch.set_rng_state(rng)
        self.fn, self.out = fn, {k: torch.full_like(v, float("nan")) for k, v in out.items()}
        self.lrs = [g["lr"] for g in self.groups()]  # a float lr is baked into the captured kernels
        return self.out  # before a replay its values are garbage, as a capture's are

    def groups(self):
        return [g for o in self.method.optimizers.values() for g in o.param_groups]

    def replay(self):
        now = [g["lr"] for g in self.groups()]
        for g, lr in zip(self.groups(), self.lrs):
            g["lr"] = lr
        try:
            out = self.fn()
        finally:
            for g, lr in zip(self.groups(), now):
                g["lr"] = lr
        for k, v in out.items():
            self.out[k].copy_(v)


def nets():
    """Small ResNets: BatchNorm in both (the student's running statistics are updated by replays; DFQ-style
    reads the teacher's)."""
    return build_model("resnet8", in_channels=1, width=4), build_model("resnet8", in_channels=1, width=2)


def setup(method="dfad", iterations=12, seed=0, **hp):
    torch.manual_seed(seed)
    teacher, student = nets()
    ctx = build_context(teacher, student, (1, 32, 32), 10, seed, iterations, "cpu", "fp32", "off", dataset="mnist")
    m = make_method(method, ctx, {**HP, **hp})
    m.setup()
    return m


def tiny_test(n=16):
    g = torch.Generator().manual_seed(3)
    return ImageTensors(torch.randn(n, 1, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))


def run(m, graphed, iterations=12, eval_every=4, resume_state=None):
    m.ctx.cuda_graph = graphed
    if graphed:  # the loop builds its stepper from the context: hand it the stand-in backend
        import harness.loop as loop

        orig = loop.stepper
        loop.stepper = lambda method, on: GraphedStep(method, warmup=2, graph_factory=StandInGraph)
        try:
            return run_loop(m, tiny_test(), iterations, eval_every, resume_state=resume_state)
        finally:
            loop.stepper = orig
    return run_loop(m, tiny_test(), iterations, eval_every, resume_state=resume_state)


def assert_same_run(a, b):
    assert [r["test_acc"] for r in a.history] == [r["test_acc"] for r in b.history]
    for ra, rb in zip(a.history, b.history):
        assert {k: v for k, v in ra.items() if k.startswith(("loss", "lr"))} == \
               {k: v for k, v in rb.items() if k.startswith(("loss", "lr"))}
    for (k, v), w in zip(a.student.state_dict().items(), b.student.state_dict().values()):
        assert torch.equal(v, w), k
    assert a.method.teacher_images == b.method.teacher_images


@pytest.mark.parametrize("method,hp", [
    ("dfad", dict(schedule="multistep", milestones=[0.5, 0.75])),  # two milestones: two recaptures
    ("dfad", dict(loss="kld", gen_objective="ada")),
    ("dfq", dict()),  # its BN-statistics hooks are registered and removed inside the captured step
])
def test_graphed_run_equals_eager_run(method, hp):
    eager = run(setup(method, **hp), graphed=False)
    graphed = run(setup(method, **hp), graphed=True)
    assert_same_run(graphed, eager)
    expected_captures = 1 + len(hp.get("milestones", []))
    assert graphed.cuda_graph == {"mode": "graph", "captures": expected_captures, "replays": 12 - 2, "warmup": 2}
    assert eager.cuda_graph is None


def test_capture_is_keyed_by_learning_rates():
    m = setup(schedule="multistep", milestones=[0.5])
    step = GraphedStep(m, warmup=1, graph_factory=StandInGraph)
    made = StandInGraph.made
    step(0)  # warm-up: eager, no graph
    assert StandInGraph.made == made and step.captures == 0
    out = step(1)
    assert step.captures == 1 and torch.isfinite(out["loss_S"]) and lr_key(m) == (0.1, 1e-3)
    step(2)
    assert step.captures == 1 and step.replays == 2  # same rates: replayed, not recaptured
    for s in m.schedulers.values():
        s.last_epoch = 5  # past the milestone (6 of 12): the next step() lowers both rates
        s.step()
    assert lr_key(m) == pytest.approx((0.01, 1e-4))
    step(3)
    assert step.captures == 2


def test_not_graphable_runs_eagerly_and_says_why():
    m = setup("dfad", schedule="cosine")  # a new rate every iteration: nothing to replay
    r = run(m, graphed=True, iterations=4)
    assert r.cuda_graph["mode"] == "eager" and "not graphable" in r.cuda_graph["reason"]
    z = setup("random", source="generator")
    assert not z.graphable and GraphedStep(z, graph_factory=StandInGraph).status["mode"] == "eager"


def test_capture_failure_falls_back_to_eager_steps():
    class Refuses(StandInGraph):
        def capture(self, fn):
            raise RuntimeError("operation not permitted when stream is capturing")

    m = setup()
    step = GraphedStep(m, warmup=1, graph_factory=Refuses)
    step(0)
    before = copy.deepcopy(m.ctx.student.state_dict())
    with pytest.warns(UserWarning, match="capture failed"):
        out = step(1)
    assert torch.isfinite(out["loss_S"])  # the failed step still ran, eagerly
    assert any(not torch.equal(before[k], v) for k, v in m.ctx.student.state_dict().items())
    assert step.status["mode"] == "eager" and "not permitted" in step.status["reason"]
    step(2)
    assert step.captures == 0


def test_a_failed_capture_leaves_the_optimisers_as_they_were():
    """A capture makes Adam `capturable`; where it then fails (here: PyTorch refuses capturable Adam on a CPU, as
    on a GPU for a resumed CPU checkpoint's state), the eager steps that follow run with the flags as they were."""
    class Capturable(StandInGraph):
        capturable_optimizers = True

        def capture(self, fn):
            return fn()

    m = setup()
    step = GraphedStep(m, warmup=1, graph_factory=Capturable)
    step(0)
    flags = [g.get("capturable") for o in m.optimizers.values() for g in o.param_groups]
    assert False in flags  # Adam's (SGD has no such flag)
    with pytest.warns(UserWarning, match="capture failed"):
        step(1)
    assert [g.get("capturable") for o in m.optimizers.values() for g in o.param_groups] == flags
    for it in (2, 3):
        assert torch.isfinite(step(it)["loss_S"])
    assert step.status["mode"] == "eager" and step.captures == 0


def test_capture_and_replay_run_on_the_runs_gpu(monkeypatch):
    """On `cuda:1` the capture stream is one of cuda:1, with cuda:1 current: torch.cuda.graph's own stream
    belongs to the device current when it was made, and cuda:1's kernels issued there are not recorded."""
    import contextlib
    import types

    from harness.graphs import CudaGraph

    seen = []

    class Device:  # torch.cuda.device
        def __init__(self, d):
            self.d = d

        def __enter__(self):
            seen.append(("enter", self.d))

        def __exit__(self, *exc):
            seen.append(("exit", self.d))

    @contextlib.contextmanager
    def graph(g, stream=None, **kw):
        seen.append(("capture", stream))
        yield

    monkeypatch.setattr(torch.cuda, "device", Device)
    monkeypatch.setattr(torch.cuda, "Stream", lambda d=None: ("stream", d))
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: types.SimpleNamespace(replay=lambda: seen.append("replay")))
    gpu = torch.device("cuda", 1)
    g = CudaGraph(types.SimpleNamespace(ctx=types.SimpleNamespace(device=gpu)))
    assert g.capture(lambda: {"loss": 1}) == {"loss": 1}
    g.replay()
    assert seen == [("enter", gpu), ("capture", ("stream", gpu)), ("exit", gpu), ("enter", gpu), "replay",
                    ("exit", gpu)]


def test_graphed_run_resumes_to_the_uninterrupted_result():
    """A resumed run warms up and captures again, and ends where an uninterrupted one does."""
    whole = run(setup(), graphed=True, iterations=12, eval_every=3)
    half = run(setup(), graphed=True, iterations=6, eval_every=3)
    state = {"method": copy.deepcopy(half.method.state_dict()), "rng": {"cpu": torch.get_rng_state()},
             "history": half.history, "iteration": 6, "elapsed_s": 0.0, "train_time_s": 0.0}
    resumed = run(setup(), graphed=True, iterations=12, eval_every=3, resume_state=state)
    assert resumed.cuda_graph == {"mode": "graph", "captures": 1, "replays": 6 - 2, "warmup": 2}
    assert_same_run(resumed, whole)


def test_cuda_graph_config_and_device_errors():
    with pytest.raises(Exception, match="cuda_graph and compile"):
        RuntimeCfg(cuda_graph=True, compile=True)
    teacher, student = nets()
    with pytest.raises(HarnessError, match="needs a CUDA device"):
        build_context(teacher, student, (1, 32, 32), 10, 0, 4, "cpu", "fp32", "off", cuda_graph=True)


def on_meta(method):
    """The method built on PyTorch's meta device: tensors with shapes and no values, so anything that reads a
    value on the host (`.item()`, a tensor in an `if`, a data-dependent shape) raises, as it breaks a capture."""
    torch.manual_seed(0)
    teacher, student = nets()
    ctx = build_context(teacher, student, (1, 32, 32), 10, 0, 10, torch.device("meta"), "fp32", "on", dataset="mnist")
    m = make_method(method, ctx, HP) if isinstance(method, str) else method(ctx, method.Params(**HP))
    m.setup()
    return m


@pytest.mark.parametrize("method", ["dfad", "dfq"])
def test_graphable_steps_never_read_a_value_on_the_host(method):
    m = on_meta(method)
    assert m.graphable
    for it in range(2):  # the second call runs with the optimisers' state in place, as captured steps do
        out = m.step(it)
    assert out and all(v.device.type == "meta" and v.shape == () for v in out.values())


def test_the_meta_check_catches_a_host_sync():
    from methods.dfad import DFAD

    class Syncs(DFAD):
        def step(self, it):
            out = super().step(it)
            if out["loss_S"] > 1e3:  # a host read: fine eagerly, fatal inside a CUDA graph capture
                raise AssertionError("unreachable")
            return out

    m = on_meta(Syncs)
    with pytest.raises((RuntimeError, NotImplementedError), match="meta"):
        m.step(0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_cuda_graph_trains_like_eager_steps():
    """On a GPU: the real capture replays DFAD without a host sync and trains as eager steps do."""
    results = {}
    for graphed in (False, True):
        torch.manual_seed(0)
        teacher, student = nets()
        ctx = build_context(teacher, student, (1, 32, 32), 10, 0, 20, "cuda", "bf16", "on", dataset="mnist",
                            cuda_graph=graphed)
        m = make_method("dfad", ctx, HP)
        m.setup()
        step = GraphedStep(m) if graphed else m.step
        losses = [step(i)["loss_S"].clone() for i in range(20)]
        torch.cuda.synchronize()
        if graphed:  # it really captured: no fallback to eager steps
            assert step.status == {"mode": "graph", "captures": 1, "replays": 17, "warmup": 3}, step.status
        results[graphed] = (torch.stack(losses).float(), m)
    (g, gm), (e, em) = results[True], results[False]
    assert torch.isfinite(g).all() and torch.isfinite(e).all()
    # the noise differs once captured (graph-safe RNG offsets), so the runs are close, not equal
    assert abs(float(g[-5:].mean()) - float(e[-5:].mean())) <= 0.5 * float(e[-5:].mean()) + 0.05


def test_a_stop_between_evaluations_resumes_with_whole_loss_means(tmp_path):
    """Ctrl-C between two evaluations checkpoints at once; the loss means of the first evaluation after the
    resume cover every iteration since the last evaluation (the running sums travel in the checkpoint), so the
    history equals an uninterrupted run's, loss columns included."""
    import os
    import signal

    whole = run(setup(), graphed=False, iterations=12, eval_every=4)
    ckpt = tmp_path / "checkpoint.pt"

    def stop_at_6(it, total, acc):
        if it == 6:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        run_loop(setup(), tiny_test(), 12, 4, checkpoint=ckpt, on_progress=stop_at_6)
    state = torch.load(ckpt, weights_only=True)
    assert state["iteration"] == 6 and len(state["history"]) == 1  # between the evaluations at 4 and 8
    resumed = run(setup(), graphed=False, iterations=12, eval_every=4, resume_state=state)
    assert_same_run(resumed, whole)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cpu_checkpoint_resumes_on_a_gpu_and_is_captured():
    """A run paused on a CPU (foreach Adam, step counters on the CPU) resumes on a GPU with fused Adam and its
    counters on the device, so its iteration captures as a CUDA graph instead of falling back."""
    cpu = setup()
    for it in range(2):
        cpu.step(it)
    state = copy.deepcopy(cpu.state_dict())
    torch.manual_seed(0)
    teacher, student = nets()
    dev = torch.device("cuda", torch.cuda.current_device())
    ctx = build_context(teacher, student, (1, 32, 32), 10, 0, 12, dev, "bf16", "on", dataset="mnist", cuda_graph=True)
    m = make_method("dfad", ctx, HP)
    m.setup()
    m.load_state_dict(state)
    assert m.optimizers["generator"].param_groups[0]["fused"] is True
    step = GraphedStep(m)
    losses = [step(i)["loss_S"].clone() for i in range(6)]
    torch.cuda.synchronize()
    assert step.status["mode"] == "graph", step.status
    assert all(torch.isfinite(v) for v in losses)
