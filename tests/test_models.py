import pytest
import torch

from harness.models import GeneratorA, build_model, count_macs, human_macs

# The paper's "FLOPs" column (multiply-accumulates). LeNet's published figure also counts
# pooling/activations, which conv+linear MACs leave out: hence the 5% tolerance.
PAPER_MACS = [
    ("lenet5", (1, 32, 32), 433e3),
    ("lenet5_half", (1, 32, 32), 139e3),
    ("resnet34_8x", (3, 32, 32), 1.16e9),
    ("resnet18_8x", (3, 32, 32), 557e6),
]


@pytest.mark.parametrize("name,shape,paper", PAPER_MACS)
def test_macs_match_paper(name, shape, paper):
    model = build_model(name, num_classes=10, in_channels=shape[0])
    macs = count_macs(model, shape)
    assert abs(macs - paper) / paper < 0.05, (name, macs, paper)


@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 32, 32), (3, 28, 28), (2, 20, 36)])
def test_generator_adapts_to_input_shape(shape):
    g = GeneratorA(nz=16, ngf=8, input_shape=shape)
    out = g(torch.randn(4, 16))
    assert out.shape == (4, *shape)


def test_channels_last_generator_keeps_nhwc_from_its_first_layer():
    """The fast path's generator: the linear layer's NCHW view must not drag the upsampling and BatchNorm
    layers onto their slow NCHW kernels; the output is the NCHW generator's."""
    torch.manual_seed(0)
    g = GeneratorA(nz=16, ngf=8, input_shape=(1, 32, 32))
    g_cl = GeneratorA(nz=16, ngf=8, input_shape=(1, 32, 32)).to(memory_format=torch.channels_last)
    g_cl.load_state_dict(g.state_dict())
    seen = {}
    g_cl.conv_blocks0.register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
    z = torch.randn(4, 16)
    out = g_cl(z)
    assert seen["x"].is_contiguous(memory_format=torch.channels_last) and not seen["x"].is_contiguous()
    torch.testing.assert_close(out, g(z))


@pytest.mark.parametrize("name", ["lenet5", "lenet5_half", "resnet8", "resnet18_8x"])
def test_features_come_from_the_same_forward(name):
    shape = (1, 32, 32) if name.startswith("lenet") else (3, 32, 32)
    model = build_model(name, num_classes=7, in_channels=shape[0]).eval()
    x = torch.randn(3, *shape)
    logits, feats = model(x, return_features=True)
    assert logits.shape == (3, 7)
    torch.testing.assert_close(logits, model(x))
    assert feats["penultimate"].shape[0] == 3
    if name.startswith("resnet"):
        assert len(feats["stages"]) >= 3


def test_every_built_in_model_takes_its_kwargs_and_no_others():
    """A kwarg is used or refused: LeNet-5 takes `width` (it once dropped it and built the full model)."""
    from harness.registry import MODELS

    assert sum(p.numel() for p in build_model("lenet5", width=0.5).parameters()) == \
        sum(p.numel() for p in build_model("lenet5_half").parameters())
    built_in = [name for name, factory in MODELS.items() if factory.__module__.startswith("harness.")]
    assert len(built_in) >= 13
    for name in built_in:
        with pytest.raises(TypeError, match="unexpected keyword argument 'no_such_option'"):
            build_model(name, no_such_option=1)


def test_human_macs():
    assert human_macs(139_000) == "139K"
    assert human_macs(557e6) == "557M"
    assert human_macs(1.16e9) == "1.16G"


@pytest.mark.parametrize("overrides, fragment", [
    (["student.name=resnet20", "student.kwargs.width=-2"], "student resnet20 (width=-2) cannot be built: RuntimeError"),
    # the meta device's message is terse ("Invalid channel dimensions"): the CPU's names the channels
    (["student.name=deeplabv3_mobilenetv2", "student.kwargs.width=0.25"],
     "student deeplabv3_mobilenetv2 (width=0.25) cannot take mnist's input (1, 32, 32): RuntimeError: Given groups=1"),
    (["teacher.model.name=test_three_logits"], "teacher test_three_logits gives output (2, 3) for mnist's input (1, 32, 32), not (batch, 10, ...)"),
    # a misspelt or foreign kwarg is refused, not dropped (every built-in factory once ended with **_)
    (["student.name=resnet8", "student.kwargs.widht=8"], "cannot be built: TypeError: resnet8() got an unexpected keyword argument 'widht'"),
    (["student.kwargs.foo=1"], "student lenet5_half (foo=1) cannot be built: TypeError"),
    (["teacher.model.name=deeplabv3_mobilenetv2", "teacher.model.kwargs.depth=3"], "unexpected keyword argument 'depth'"),
])
def test_check_models_names_a_model_that_does_not_fit_the_dataset(overrides, fragment):
    from harness.config import load_suite
    from harness.errors import HarnessError
    from harness.registry import MODELS
    from harness.runner import check_models

    if "test_three_logits" not in MODELS:  # a user's model that ignores num_classes
        MODELS.register("test_three_logits")(lambda in_channels=1, **_: torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.LazyLinear(3)))

    with pytest.raises(HarnessError) as e:
        check_models(load_suite("mnist", "smoke", overrides))
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_torchvision_resnet_takes_the_datasets_channels():
    """resnet18_tv / resnet34_tv used to ignore in_channels (always 3): a grayscale dataset failed mid-run."""
    from harness.config import load_suite
    from harness.runner import check_models

    for width in (64, 8):
        m = build_model("resnet18_tv", num_classes=10, in_channels=1, width=width)
        assert m.conv1.in_channels == 1 and m.conv1.out_channels == width
        assert m(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    check_models(load_suite("mnist", "smoke", ["student.name=resnet18_tv", "student.kwargs.width=8"]))
    assert torch.equal(torch.rand(3), expected)  # the check drew no numbers a run would see
