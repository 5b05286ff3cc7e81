"""convert_to_gmconv, enlarge_kernel, fold_gmconv, sigma_stats and sigma_parameters on torchvision / timm models."""

from __future__ import annotations

import copy
import fnmatch

import pytest
import timm
import torch
import torchvision
from torch import nn

from gmconv import (
    ConversionReport,
    DynamicGMConv2d,
    GMConv2d,
    GMConvOptions,
    convert_to_gmconv,
    enlarge_kernel,
    fold_gmconv,
    fold_layer,
    sigma_parameters,
    sigma_stats,
)

# torch warns that padding="same" with an even kernel copies the input; that case is tested on purpose
pytestmark = [
    pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths"),
    pytest.mark.usefixtures("one_thread"),
]


def randomize_sigmas(model: nn.Module, seed: int = 0) -> None:
    """Move every static σ away from its init (uniform in [0.4, 3] taps) so the mask matters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, GMConv2d):
            with torch.no_grad():
                m.sigma_raw.uniform_(-1.0, 3.0, generator=g)


def gm_layers(model: nn.Module) -> dict[str, GMConv2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, GMConv2d)}


RESNET50_SPATIAL = ["conv1"] + [
    f"layer{i}.{b}.conv2" for i, blocks in zip(range(1, 5), (3, 4, 6, 3)) for b in range(blocks)
]


@pytest.fixture(scope="module")
def resnet50_pair():
    torch.manual_seed(0)
    original = torchvision.models.resnet50(weights=None).eval()
    return original, copy.deepcopy(original)


def test_resnet50_converts_its_17_spatial_convs_bit_exactly(resnet50_pair):
    original, model = resnet50_pair
    model = copy.deepcopy(model)
    report = ConversionReport()
    converted = convert_to_gmconv(model, report=report)
    assert converted is model  # in place
    layers = gm_layers(model)
    assert sorted(layers) == sorted(RESNET50_SPATIAL) and len(layers) == 17
    assert layers["conv1"].kernel_size == (7, 7)
    assert all(layers[n].kernel_size == (3, 3) for n in RESNET50_SPATIAL[1:])
    assert sorted(report.converted) == sorted(RESNET50_SPATIAL)
    plain = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and not isinstance(m, GMConv2d)}
    assert len(plain) == 36 and all(type(m) is nn.Conv2d and m.kernel_size == (1, 1) for m in plain.values())
    assert set(report.skipped) == set(plain)
    assert all("min_kernel_size" in r for r in report.skipped.values())
    assert "converted 17" in report.summary()
    # every original tensor survives bit for bit; the only new keys are the σ parameters
    before, after = original.state_dict(), model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert set(after) - set(before) == {f"{n}.sigma_raw" for n in RESNET50_SPATIAL}
    assert not model.training and not any(m.training for m in layers.values())


def test_resnet50_converted_with_huge_sigma_computes_the_same_function(resnet50_pair):
    original, model = resnet50_pair
    model = convert_to_gmconv(copy.deepcopy(model), sigma_init=1e6)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        (dict(exclude=["conv1"]), RESNET50_SPATIAL[1:]),
        (dict(include=["layer4.*"]), [n for n in RESNET50_SPATIAL if n.startswith("layer4")]),
        (
            dict(include=["layer[12].*", "conv1"], exclude=["layer2.*"]),
            [n for n in RESNET50_SPATIAL if n == "conv1" or n.startswith("layer1")],
        ),
        (dict(min_kernel_size=5), ["conv1"]),
        (
            dict(min_kernel_size=1, include=["layer1.0.*"]),
            ["layer1.0.conv1", "layer1.0.conv2", "layer1.0.conv3", "layer1.0.downsample.0"],
        ),
    ],
)
def test_include_exclude_min_kernel_size(resnet50_pair, kwargs, expected):
    report = ConversionReport()
    model = convert_to_gmconv(copy.deepcopy(resnet50_pair[1]), report=report, **kwargs)
    assert report.unmatched == []
    assert sorted(gm_layers(model)) == sorted(expected)
    if "exclude" in kwargs:
        excluded = [n for n in report.skipped if any(fnmatch.fnmatch(n, p) for p in kwargs["exclude"])]
        assert excluded and all(
            report.skipped[n] in ("matched by exclude", "kernel smaller than min_kernel_size=3") for n in excluded
        )
    if "conv1" not in expected and "exclude" in kwargs:
        assert type(model.conv1) is nn.Conv2d and report.skipped["conv1"] == "matched by exclude"


def test_timm_depthwise_model_converts_and_runs():
    torch.manual_seed(0)
    original = timm.create_model("mobilenetv3_small_050", pretrained=False).eval()
    model = convert_to_gmconv(copy.deepcopy(original), sigma_init=1e6)
    layers = gm_layers(model)
    depthwise = [m for m in layers.values() if m.groups == m.in_channels == m.out_channels > 1]
    assert len(depthwise) >= 5
    assert {m.kernel_size for m in depthwise} >= {(3, 3), (5, 5)}
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), atol=1e-5, rtol=1e-4)
    randomize_sigmas(model)
    out = model.train()(x)
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(m.sigma_raw.grad is not None for m in depthwise)


def test_timm_conv2d_subclasses_are_skipped_with_a_reason():
    from timm.layers import Conv2dSame, StdConv2d

    torch.manual_seed(0)
    model = nn.Sequential(Conv2dSame(3, 4, 3, stride=2), StdConv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1))
    x = torch.randn(1, 3, 9, 9)
    before = model[1](model[0](x))
    report = ConversionReport()
    model = convert_to_gmconv(model, report=report)
    assert type(model[0]) is Conv2dSame and type(model[1]) is StdConv2d
    assert isinstance(model[2], GMConv2d) and report.converted == ["2"]
    assert "Conv2dSame" in report.skipped["0"] and "StdConv2d" in report.skipped["1"]
    assert "subclass" in report.skipped["0"]
    summary = report.summary()
    assert "Conv2dSame" in summary and "StdConv2d" in summary
    torch.testing.assert_close(model[1](model[0](x)), before)


def test_model_without_convolutions_warns_and_is_returned_unchanged():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    report = ConversionReport()
    with pytest.warns(UserWarning, match="no nn.Conv2d"):
        out = convert_to_gmconv(model, report=report)
    assert out is model and report.converted == [] and report.skipped == {}


def test_a_bare_conv_is_converted_and_returned():
    conv = nn.Conv2d(3, 4, 3).eval()
    gm = convert_to_gmconv(conv)
    assert isinstance(gm, GMConv2d) and not gm.training
    assert torch.equal(gm.weight, conv.weight) and torch.equal(gm.bias, conv.bias)


def test_a_shared_convolution_stays_shared():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), nn.Sequential(conv))  # one conv used twice
    x = torch.randn(1, 4, 8, 8)
    expected = model(x)
    report = ConversionReport()
    convert_to_gmconv(model, report=report, sigma_init=1e6)
    assert isinstance(model[0], GMConv2d) and model[2][0] is model[0]
    assert report.converted == ["0"]
    torch.testing.assert_close(model(x), expected, atol=1e-6, rtol=0)
    fold_gmconv(model)
    assert type(model[0]) is nn.Conv2d and model[2][0] is model[0]


def test_convert_and_fold_keep_the_device():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, device="meta"), nn.Conv2d(4, 4, 3, device="meta"))
    convert_to_gmconv(model, enlarge_by=2)
    assert all(t.device.type == "meta" for t in list(model.parameters()) + list(model.buffers()))
    assert model(torch.empty(1, 3, 9, 9, device="meta")).shape == (1, 4, 5, 5)
    fold_gmconv(model)
    assert all(type(m) is nn.Conv2d and m.weight.device.type == "meta" for m in model)


def test_conversion_keeps_frozen_weights_frozen_and_is_idempotent():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3))
    model[0].requires_grad_(False)
    convert_to_gmconv(model)
    assert not model[0].weight.requires_grad and not model[0].bias.requires_grad
    assert model[0].sigma_raw.requires_grad and model[1].weight.requires_grad
    report = ConversionReport()
    convert_to_gmconv(model, report=report)
    assert report.converted == [] and report.skipped == {"0": "already GMConv2d", "1": "already GMConv2d"}
    folded = fold_gmconv(model)
    assert not folded[0].weight.requires_grad and folded[1].weight.requires_grad


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(enlarge_by=1), "enlarge_by=1"),
        (dict(enlarge_by=-2), "enlarge_by=-2"),
        (dict(min_kernel_size=0), "min_kernel_size=0"),
        (dict(sigma_init=-1.0), "sigma_init=-1.0"),
        (dict(sigma_granularity="pixel"), "sigma_granularity"),
        (dict(dynamic=True, learnable_sigma=False), "learnable_sigma"),
    ],
)
def test_convert_bad_options_raise_before_touching_the_model(kwargs, match):
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match=match):
        convert_to_gmconv(model, **kwargs)
    with pytest.raises(ValueError, match=match):
        convert_to_gmconv(model, GMConvOptions(**kwargs))
    assert type(model[0]) is nn.Conv2d


def test_convert_unknown_option_lists_the_valid_ones():
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(TypeError, match=r"unknown option\(s\) sigma_inti; valid options: sigma_init, .*enlarge_by"):
        convert_to_gmconv(model, sigma_inti=3.0)
    assert type(model[0]) is nn.Conv2d


def test_convert_takes_options_and_overrides_replace_fields():
    options = GMConvOptions(sigma_init=1.5, sigma_granularity="layer", exclude=["0"])
    model = convert_to_gmconv(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)), options, sigma_init=3.0)
    assert type(model[0]) is nn.Conv2d and model[1].sigma_init == 3.0 and model[1].sigma_granularity == "layer"
    assert options.sigma_init == 1.5  # the caller's options are not modified


def test_report_lists_patterns_that_match_no_convolution():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.Conv2d(4, 4, 1)))
    report = ConversionReport()
    convert_to_gmconv(model, report=report, include=["0", "stem*", "1.*"], exclude=["1.0", "head"])
    assert report.unmatched == ["stem*", "head"]  # "1.0" matched a (1×1, skipped) convolution: not unmatched
    assert report.converted == ["0"]
    assert "patterns matching no convolution: stem*, head" in report.summary()


def test_dynamic_option_builds_dynamic_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    report = ConversionReport()
    convert_to_gmconv(model, report=report, dynamic=True, dynamic_reduction=2, sigma_init=1e6)
    assert all(type(model[i]) is DynamicGMConv2d for i in (0, 2)) and model[0].dynamic_reduction == 2
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    again = ConversionReport()
    convert_to_gmconv(model, report=again)
    assert again.converted == [] and again.skipped == {"0": "already DynamicGMConv2d", "2": "already DynamicGMConv2d"}


# ---------------------------------------------------------------- kernel enlargement

ENLARGE_CASES = [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, stride=2, padding=0),
    dict(kernel_size=3, padding="same", dilation=2),
    dict(kernel_size=4, padding="same"),
    dict(kernel_size=3, padding="valid"),
    dict(kernel_size=(3, 5), padding=(1, 2), padding_mode="reflect"),
    dict(kernel_size=3, padding=1, groups=4, padding_mode="circular", bias=False),
]


@pytest.mark.parametrize("case", ENLARGE_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_enlarge_kernel_keeps_the_function(case):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, **case)
    kh, kw = conv.kernel_size
    bigger = enlarge_kernel(conv, (kh + 2, kw + 2))
    assert bigger.kernel_size == (kh + 2, kw + 2) and type(bigger) is nn.Conv2d
    x = torch.randn(2, 4, 12, 11)
    torch.testing.assert_close(bigger(x), conv(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("case", ENLARGE_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_convert_enlarge_by_2_gives_the_same_outputs_at_init(case):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 4, **case))
    plain = convert_to_gmconv(copy.deepcopy(model))  # same σ, original kernel size
    enlarged = convert_to_gmconv(copy.deepcopy(model), enlarge_by=2)
    huge = convert_to_gmconv(copy.deepcopy(model), enlarge_by=2, sigma_init=1e6)
    kh, kw = model[0].kernel_size
    assert enlarged[0].kernel_size == (kh + 2, kw + 2)
    x = torch.randn(2, 4, 12, 11)
    torch.testing.assert_close(enlarged(x), plain(x), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(huge(x), model(x), atol=1e-6, rtol=1e-5)


def test_resnet18_enlarge_by_2():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    reference = convert_to_gmconv(copy.deepcopy(model))
    convert_to_gmconv(model, enlarge_by=2)
    sizes = {n: m.kernel_size for n, m in gm_layers(model).items()}
    assert sizes.pop("conv1") == (9, 9)
    assert len(sizes) == 16 and set(sizes.values()) == {(5, 5)}
    assert not any(m.training for m in model.modules())  # eval mode survives the enlargement
    assert type(model.layer2[0].downsample[0]) is nn.Conv2d and model.layer2[0].downsample[0].kernel_size == (1, 1)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-5)


def test_enlarge_kernel_bad_sizes():
    conv = nn.Conv2d(3, 4, 5)
    with pytest.raises(ValueError, match="kernel_size=3x3 is smaller"):
        enlarge_kernel(conv, 3)
    with pytest.raises(ValueError, match="kernel_size=7x5 is smaller|kernel_size=5x3"):
        enlarge_kernel(conv, (5, 3))
    with pytest.raises(ValueError, match="even number"):
        enlarge_kernel(conv, 6)
    assert enlarge_kernel(conv, 5).kernel_size == (5, 5)


# ---------------------------------------------------------------- folding


@pytest.mark.parametrize("arch", ["resnet18", pytest.param("alexnet", marks=pytest.mark.slow)])  # alexnet: biases
def test_fold_matches_converted_model_and_loads_into_torchvision(arch):
    torch.manual_seed(0)
    model = convert_to_gmconv(getattr(torchvision.models, arch)(weights=None))
    x = torch.randn(2, 3, 64, 64)
    # one training step moves σ (and the weights) away from their init...
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = {n: m.sigma.clone() for n, m in gm_layers(model).items()}
    model(x).logsumexp(1).mean().backward()
    opt.step()
    assert all(not torch.equal(m.sigma, before[n]) for n, m in gm_layers(model).items())
    # ... and random σ make the mask clearly matter
    randomize_sigmas(model)
    model.eval()
    with torch.no_grad():
        expected = model(x)
        folded = fold_gmconv(copy.deepcopy(model))
        assert not any(isinstance(m, GMConv2d) for m in folded.modules())
        assert not folded.training
        assert (folded(x) - expected).abs().max() <= 1e-5
        fresh = getattr(torchvision.models, arch)(weights=None).eval()
        fresh.load_state_dict(folded.state_dict(), strict=True)
        assert (fresh(x) - expected).abs().max() <= 1e-5
        # the masks were not the identity: undoing them changes the outputs
        unmasked = copy.deepcopy(model)
        for m in gm_layers(unmasked).values():
            m.sigma_raw.fill_(1e6)
        assert (unmasked(x) - expected).abs().max() > 1e-3


def test_fold_layer_and_root_layer():
    torch.manual_seed(0)
    gm = GMConv2d(
        4,
        6,
        (3, 5),
        stride=2,
        padding="valid",
        dilation=(1, 2),
        groups=2,
        padding_mode="reflect",
        sigma_granularity="kernel",
        sigma_init=1.2,
    )
    conv = fold_gmconv(gm)
    assert type(conv) is nn.Conv2d
    assert (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups, conv.padding_mode) == (
        gm.kernel_size,
        gm.stride,
        gm.padding,
        gm.dilation,
        gm.groups,
        gm.padding_mode,
    )
    x = torch.randn(2, 4, 11, 13)
    torch.testing.assert_close(conv(x), gm(x), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(conv.weight, gm.weight * gm.mask())
    assert type(fold_layer(gm)) is nn.Conv2d


def test_folding_a_dynamic_layer_raises():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(DynamicGMConv2d(4, 4, 3)), GMConv2d(4, 4, 3))
    with pytest.raises(ValueError, match=r"cannot fold DynamicGMConv2d layers \(1\.0\)"):
        fold_gmconv(model)
    assert isinstance(model[2], GMConv2d)  # nothing was folded halfway
    with pytest.raises(ValueError, match="dynamic=False"):
        fold_layer(model[1][0])
    with pytest.raises(ValueError, match="cannot fold a DynamicGMConv2d"):
        fold_gmconv(model[1][0])


# ---------------------------------------------------------------- σ statistics


def test_sigma_stats_per_layer():
    torch.manual_seed(0)
    model = nn.Sequential(
        GMConv2d(3, 4, 3, sigma_granularity="kernel"),
        nn.Conv2d(4, 4, 3),
        GMConv2d(4, 5, 3, sigma_granularity="layer"),
        DynamicGMConv2d(5, 6, 1),
    )
    randomize_sigmas(model)
    stats = sigma_stats(model)
    assert set(stats) == {"0", "2"}  # plain conv never, dynamic only after an input
    s0 = model[0].sigma
    assert stats["0"]["mean"] == pytest.approx(s0.mean().item())
    assert stats["0"]["min"] == pytest.approx(s0.min().item()) and stats["0"]["max"] == pytest.approx(s0.max().item())
    assert stats["0"]["count"] == 12 and stats["0"]["min"] < stats["0"]["max"]
    assert stats["2"]["count"] == 1 and stats["2"]["min"] == stats["2"]["max"] == pytest.approx(model[2].sigma.item())
    model(torch.randn(3, 3, 9, 9))
    stats = sigma_stats(model)
    assert stats["3"]["count"] == 3 * 6
    assert stats["3"]["mean"] == pytest.approx(model[3].sigma.mean().item())


# ---------------------------------------------------------------- σ parameters


def test_sigma_parameters_are_the_learnable_sigmas_and_dynamic_predictors_each_once():
    shared = GMConv2d(4, 4, 3)
    dynamic = DynamicGMConv2d(4, 4, 3)
    model = nn.Sequential(
        GMConv2d(3, 4, 3),
        nn.Conv2d(4, 4, 3),
        GMConv2d(4, 4, 3, learnable_sigma=False),
        shared,
        shared,
        dynamic,
        nn.BatchNorm2d(4),
    )
    found = sigma_parameters(model)
    expected = [model[0].sigma_raw, shared.sigma_raw, *dynamic.sigma_predictor.parameters()]
    assert len(found) == len(expected) == 6
    assert all(a is b for a, b in zip(found, expected))
    assert sigma_parameters(nn.Sequential(nn.Conv2d(3, 4, 3))) == []
    assert not any(p is dynamic.weight or p is shared.weight for p in found)
