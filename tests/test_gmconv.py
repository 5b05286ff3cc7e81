"""GMConv2d, the layer: limits of σ, the mask's closed form, gradients, bad input, serialisation,
memory formats, autocast and torch.compile, and GMConvOptions' checks. (Conversion/folding:
test_gmconv_convert.py; DynamicGMConv2d: test_gmconv_dynamic.py.)"""

from __future__ import annotations

import copy
import io
import math
import pickle
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from gmconv import DynamicGMConv2d, GMConv2d, GMConvOptions, convert_to_gmconv, gmconv_from_conv, reuse_masked_weights
from gmconv.options import CONVERSION_OPTIONS, option_names
from models.registry import create_backbone

GRANULARITIES = ["layer", "channel", "kernel"]
PADDING_MODES = ["zeros", "reflect", "replicate", "circular"]


# torch warns that padding="same" with an even kernel copies the input; that case is tested on purpose
pytestmark = [
    pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths"),
    pytest.mark.usefixtures("one_thread"),
]


def randomize_sigma(layer: GMConv2d, low: float = 0.4, high: float = 3.0, seed: int = 0) -> None:
    """Give every σ of a static layer a different value in [low, high]."""
    g = torch.Generator().manual_seed(seed)
    sigma = low + (high - low) * torch.rand(layer.sigma_raw.shape, generator=g, dtype=torch.float64)
    target = sigma - layer.sigma_min
    raw = target.log() if layer.sigma_parametrization == "exp" else target + torch.log(-torch.expm1(-target))
    with torch.no_grad():
        layer.sigma_raw.copy_(raw)


# Conv2d configurations: (in, out, kernel, extra nn.Conv2d kwargs). Input is 2×C×9×8 (non-square).
CONV_CASES = {
    "k3_p1": (4, 6, 3, dict(padding=1)),
    "k3_stride2_p0": (4, 6, 3, dict(stride=2)),
    "k3_stride_tuple": (4, 6, 3, dict(stride=(2, 1), padding=1)),
    "k3x5_pad_tuple": (4, 6, (3, 5), dict(padding=(1, 2))),
    "k3_same": (4, 6, 3, dict(padding="same")),
    "k4_even_same": (4, 6, 4, dict(padding="same")),
    "k3_same_dil2": (4, 6, 3, dict(padding="same", dilation=2)),
    "k3_valid": (4, 6, 3, dict(padding="valid")),
    "k3_dil_tuple": (4, 6, 3, dict(padding=2, dilation=(2, 1))),
    "k2x3_nonsquare_even": (4, 6, (2, 3), dict(padding=(1, 1))),
    "k5_p2_nobias": (4, 6, 5, dict(padding=2, bias=False)),
    "k3_groups2": (4, 6, 3, dict(padding=1, groups=2)),
    "k3_depthwise": (4, 4, 3, dict(padding=1, groups=4)),
    "k3_depthwise_x2": (4, 8, 3, dict(padding=1, groups=4, stride=2, bias=False)),
}


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_huge_sigma_equals_conv2d(case, padding_mode):
    cin, cout, k, kwargs = CONV_CASES[case]
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, padding_mode=padding_mode, **kwargs)
    gm = gmconv_from_conv(conv, sigma_init=1e6)
    x = torch.randn(2, cin, 9, 8)
    expected = conv(x)
    got = gm(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("parametrization", ["softplus", "exp"])
def test_huge_sigma_every_granularity_and_parametrization(granularity, parametrization):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 5, padding=2, groups=2)
    gm = gmconv_from_conv(conv, sigma_init=1e6, sigma_granularity=granularity, sigma_parametrization=parametrization)
    x = torch.randn(2, 4, 9, 8)
    torch.testing.assert_close(gm(x), conv(x), atol=1e-6, rtol=0)


def _centre_tap_reference(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Only the centre taps of an odd kernel: pad as the conv does, crop to where the centre tap
    reads, then a 1×1 convolution with the same stride."""
    (kh, kw), (dh, dw) = conv.kernel_size, conv.dilation
    ph, pw = conv.padding
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    xp = F.pad(x, (pw, pw, ph, ph), mode=mode)
    oh, ow = dh * (kh - 1) // 2, dw * (kw - 1) // 2
    xp = xp[..., oh : xp.shape[-2] - oh, ow : xp.shape[-1] - ow]
    centre = conv.weight[:, :, (kh - 1) // 2, (kw - 1) // 2, None, None]
    return F.conv2d(xp, centre, conv.bias, conv.stride, 0, 1, conv.groups)


@pytest.mark.parametrize(
    "kernel,kwargs",
    [
        (3, dict(padding=1)),
        (3, dict(padding=0, stride=2)),
        (5, dict(padding=1, dilation=2, padding_mode="reflect")),
        ((3, 5), dict(padding=(1, 2), padding_mode="circular")),
        (3, dict(padding=2, groups=2, padding_mode="replicate")),
        (7, dict(padding=3, stride=2, groups=4, bias=False)),
    ],
)
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_tiny_sigma_keeps_only_centre_tap(kernel, kwargs, granularity):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, kernel, **kwargs)
    gm = gmconv_from_conv(conv, sigma_init=1e-3, sigma_min=1e-4, sigma_granularity=granularity)
    x = torch.randn(2, 4, 11, 10)
    expected = _centre_tap_reference(conv, x)
    assert not torch.allclose(conv(x), expected, atol=1e-3)  # the outer taps did matter
    torch.testing.assert_close(gm(x), expected, atol=1e-6, rtol=1e-6)


def test_tiny_sigma_even_kernel_has_no_centre_tap():
    """A 4×4 kernel's centre lies between taps: every tap is ≥ 0.5 taps away, so tiny σ masks it all."""
    torch.manual_seed(0)
    gm = GMConv2d(3, 5, 4, padding="same", sigma_init=1e-3, sigma_min=1e-4)
    assert gm.mask().abs().max() == 0
    out = gm(torch.randn(2, 3, 8, 8))
    torch.testing.assert_close(out, gm.bias[None, :, None, None].expand_as(out))


@pytest.mark.parametrize(
    "granularity,expected_shape",
    [("layer", (1, 1, 5, 3)), ("channel", (6, 1, 5, 3)), ("kernel", (6, 2, 5, 3))],
)
@pytest.mark.parametrize("parametrization", ["softplus", "exp"])
def test_mask_closed_form(granularity, expected_shape, parametrization):
    gm = GMConv2d(
        4,
        6,
        (5, 3),
        padding=(2, 1),
        dilation=2,
        groups=2,
        sigma_granularity=granularity,
        sigma_parametrization=parametrization,
    )
    randomize_sigma(gm)
    mask, sigma = gm.mask(), gm.sigma
    assert mask.shape == expected_shape
    assert sigma.shape == {"layer": (1,), "channel": (6,), "kernel": (6, 2)}[granularity]
    assert not sigma.requires_grad
    ci, cj = 2.0, 1.0  # (kh-1)/2, (kw-1)/2: dilation does not change the units (kernel taps)
    for o, g, i, j in [(0, 0, 0, 0), (5, 1, 4, 2), (3, 0, 1, 2), (2, 1, 2, 0), (4, 1, 3, 1)]:
        s = sigma.reshape(-1)[0] if granularity == "layer" else sigma[o] if granularity == "channel" else sigma[o, g]
        expected = math.exp(-((i - ci) ** 2 + (j - cj) ** 2) / (2 * float(s) ** 2))
        mo, mg = min(o, mask.shape[0] - 1), min(g, mask.shape[1] - 1)
        assert mask[mo, mg, i, j].item() == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(mask, mask.flip(-1))
    torch.testing.assert_close(mask, mask.flip(-2))
    assert torch.all(mask[:, :, 2, 1] == 1)
    assert torch.all((mask > 0) & (mask <= 1))
    torch.testing.assert_close(gm.masked_weight(), gm.weight * mask)


def test_mask_even_kernel_centre_between_taps():
    gm = GMConv2d(2, 3, 4, sigma_init=1.5, sigma_granularity="layer")
    mask = gm.mask()[0, 0]
    # the four middle taps are (0.5, 0.5) from the centre
    torch.testing.assert_close(mask[1:3, 1:3], torch.full((2, 2), math.exp(-0.5 / (2 * 1.5**2))))
    assert mask[0, 0].item() == pytest.approx(math.exp(-4.5 / (2 * 1.5**2)), rel=1e-6)
    torch.testing.assert_close(mask, mask.T)


@pytest.mark.parametrize("parametrization", ["softplus", "exp"])
@pytest.mark.parametrize("sigma_init", [0.3, 2.0, 7.5, 1e6])
def test_sigma_equals_sigma_init_at_init(parametrization, sigma_init):
    gm = GMConv2d(3, 4, 3, sigma_init=sigma_init, sigma_parametrization=parametrization)
    torch.testing.assert_close(gm.sigma, torch.full((4,), sigma_init), rtol=1e-6, atol=0)


def test_grid_is_a_non_persistent_buffer_and_mask_follows_weight_dtype():
    gm = GMConv2d(3, 4, (3, 5))
    assert "sq_dist" in dict(gm.named_buffers())
    assert "sq_dist" not in gm.state_dict()
    assert set(gm.state_dict()) == {"weight", "bias", "sigma_raw"}
    assert isinstance(gm, nn.Conv2d)
    for dtype in (torch.float64, torch.bfloat16):
        layer = GMConv2d(3, 4, 3, dtype=dtype)
        assert layer.weight.dtype == layer.sigma_raw.dtype == layer.mask().dtype == dtype
    assert gm.double().mask().dtype == torch.float64


@pytest.mark.parametrize(
    "layer_type, gm_kwargs",
    [
        (GMConv2d, {}),
        (GMConv2d, dict(learnable_sigma=False)),
        (DynamicGMConv2d, dict(sigma_granularity="kernel")),
    ],
)
def test_device_and_dtype_reach_every_tensor(layer_type, gm_kwargs):
    """device=/dtype= place the grid, σ and the dynamic predictor too (the meta device stands in
    for a GPU: a tensor left on the CPU makes the forward fail)."""
    gm = layer_type(3, 4, 3, padding=1, device="meta", dtype=torch.float64, **gm_kwargs)
    params, buffers = dict(gm.named_parameters()), dict(gm.named_buffers())
    assert "weight" in params and "sq_dist" in buffers
    assert all(t.device.type == "meta" for t in (params | buffers).values())
    assert all(t.dtype == torch.float64 for name, t in (params | buffers).items() if name != "sq_dist")
    out = gm(torch.empty(2, 3, 8, 8, device="meta", dtype=torch.float64))
    assert out.shape == (2, 4, 8, 8) and out.device.type == "meta"


def test_extra_repr_shows_gmconv_settings():
    text = repr(GMConv2d(3, 4, 3, sigma_init=1.5, sigma_granularity="kernel", learnable_sigma=False))
    assert "sigma_init=1.5" in text and "sigma_granularity=kernel" in text
    assert "sigma_parametrization=softplus" in text and "learnable_sigma=False" in text
    assert "kernel_size=(3, 3)" in text


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("parametrization", ["softplus", "exp"])
def test_gradcheck_input_weight_sigma(granularity, parametrization):
    torch.manual_seed(0)
    gm = GMConv2d(
        4,
        4,
        3,
        padding=1,
        groups=2,
        sigma_granularity=granularity,
        sigma_parametrization=parametrization,
        dtype=torch.float64,
    )
    randomize_sigma(gm, low=0.5, high=2.0)
    params = {k: v.detach().clone().requires_grad_() for k, v in gm.named_parameters()}
    names = list(params)
    assert set(names) == {"weight", "bias", "sigma_raw"}
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)

    def f(x, *tensors):
        return functional_call(gm, dict(zip(names, tensors)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params.values()))


def test_sigma_receives_gradient_and_fixed_sigma_does_not():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    gm = GMConv2d(3, 5, 3, padding=1)
    gm(x).square().sum().backward()
    assert gm.sigma_raw.grad is not None
    assert torch.all(gm.sigma_raw.grad != 0)  # every channel's σ

    fixed = GMConv2d(3, 5, 3, padding=1, learnable_sigma=False, sigma_init=1.5)
    assert "sigma_raw" not in dict(fixed.named_parameters())
    assert "sigma_raw" in fixed.state_dict()  # still saved, as a buffer
    opt = torch.optim.SGD(fixed.parameters(), lr=1.0)
    fixed(x).square().sum().backward()
    opt.step()
    assert fixed.sigma_raw.grad is None and not fixed.sigma_raw.requires_grad
    assert fixed.weight.grad is not None
    torch.testing.assert_close(fixed.sigma, torch.full((5,), 1.5))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(sigma_init=0.0), r"sigma_init=0\.0"),
        (dict(sigma_init=-1.0), r"sigma_init=-1\.0"),
        (dict(sigma_init=0.05), r"sigma_init=0\.05 must be greater than sigma_min=0\.1"),
        (dict(sigma_init=0.1), r"sigma_init=0\.1 must be greater than sigma_min"),
        (dict(sigma_init=float("nan")), r"sigma_init=nan"),
        (dict(sigma_min=-0.1), r"sigma_min=-0\.1 must be > 0"),
        (dict(sigma_min=0.0), r"sigma_min=0\.0 must be > 0"),
        (dict(sigma_granularity="pixel"), r"sigma_granularity='pixel'.*layer, channel, kernel"),
        (dict(sigma_parametrization="relu"), r"sigma_parametrization='relu'.*softplus, exp"),
    ],
)
@pytest.mark.parametrize("layer_type", [GMConv2d, DynamicGMConv2d])
def test_bad_arguments_raise_value_error_naming_them(layer_type, kwargs, match):
    with pytest.raises(ValueError, match=match):
        layer_type(3, 4, 3, **kwargs)


def test_dynamic_layer_bad_reduction_and_static_layer_has_no_dynamic_options():
    with pytest.raises(ValueError, match=r"dynamic_reduction=0 must be >= 1"):
        DynamicGMConv2d(3, 4, 3, dynamic_reduction=0)
    with pytest.raises(TypeError, match="dynamic"):
        GMConv2d(3, 4, 3, dynamic=True)


@pytest.mark.parametrize(
    "changes,match",
    [
        (
            dict(sigma_granularity="pixel"),
            r"^sigma_granularity='pixel' is not valid; choose one of layer, channel, kernel",
        ),
        (
            dict(sigma_parametrization="relu"),
            r"^sigma_parametrization='relu' is not valid; choose one of softplus, exp",
        ),
        (dict(sigma_min=0.0), r"^sigma_min=0\.0 must be > 0"),
        (dict(sigma_init=0.1), r"^sigma_init=0\.1 must be greater than sigma_min=0\.1"),
        (dict(sigma_init=0.5, sigma_min=0.6), r"^sigma_init=0\.5 must be greater than sigma_min=0\.6"),
        (dict(dynamic=True, learnable_sigma=False), r"^dynamic=True .*learnable_sigma must stay True$"),
        (dict(dynamic_reduction=0), r"^dynamic_reduction=0 must be >= 1$"),
        (dict(min_kernel_size=0), r"^min_kernel_size=0 must be >= 1$"),
        (dict(enlarge_by=1), r"^enlarge_by=1 must be an even number >= 0"),
        (dict(enlarge_by=-2), r"^enlarge_by=-2 must be an even number >= 0"),
        (dict(sigma_mode="radius"), r"^sigma_mode='radius' is not valid; choose one of absolute, relative$"),
    ],
)
def test_options_validate_names_the_option_and_its_valid_values(changes, match):
    options = GMConvOptions(**changes)
    with pytest.raises(ValueError, match=match) as err:
        options.validate()
    assert "\n" not in str(err.value)


def test_options_defaults_are_valid_and_are_the_layers_defaults():
    GMConvOptions().validate()
    layer = GMConv2d(3, 4, 3)
    dynamic = DynamicGMConv2d(3, 4, 3)
    options = GMConvOptions()
    assert (
        layer.sigma_init,
        layer.sigma_granularity,
        layer.sigma_parametrization,
        layer.sigma_min,
        layer.learnable_sigma,
    ) == (
        options.sigma_init,
        options.sigma_granularity,
        options.sigma_parametrization,
        options.sigma_min,
        options.learnable_sigma,
    )
    assert dynamic.dynamic_reduction == options.dynamic_reduction
    assert options.layer_kwargs(GMConv2d) == dict(
        sigma_init=2.0,
        sigma_mode="absolute",
        sigma_granularity="channel",
        sigma_parametrization="softplus",
        sigma_min=0.1,
        learnable_sigma=True,
    )
    assert options.layer_kwargs(DynamicGMConv2d) == dict(
        sigma_init=2.0,
        sigma_mode="absolute",
        sigma_granularity="channel",
        sigma_parametrization="softplus",
        sigma_min=0.1,
        dynamic_reduction=16,
    )


# One value other than the default for every option: each must change what it configures.
NON_DEFAULT = {
    "sigma_init": 3.0,
    "sigma_mode": "relative",
    "sigma_granularity": "kernel",
    "sigma_parametrization": "exp",
    "sigma_min": 0.5,
    "learnable_sigma": False,
    "dynamic_reduction": 1,
    "dynamic": True,
    "min_kernel_size": 5,
    "convert_patchify": True,
    "include": ["b"],
    "exclude": ["b"],
    "enlarge_by": 2,
}


def test_every_option_is_read_by_a_layer_or_by_the_conversion():
    layers = set(GMConv2d.OPTIONS) | set(DynamicGMConv2d.OPTIONS)
    assert set(option_names()) == layers | set(CONVERSION_OPTIONS) == set(NON_DEFAULT)
    assert not layers & set(CONVERSION_OPTIONS)


def _fingerprint(layer: nn.Module) -> tuple:
    """What an option can change in a layer: its parameters, its state and what it computes."""
    torch.manual_seed(1)
    out = layer(torch.randn(2, layer.in_channels, 9, 9))
    return (
        sorted(n for n, _ in layer.named_parameters()),
        {k: (tuple(v.shape), v.flatten()[:4].tolist()) for k, v in layer.state_dict().items()},
        out.flatten()[:8],
    )


@pytest.mark.parametrize("layer_type, name", [(t, n) for t in (GMConv2d, DynamicGMConv2d) for n in t.OPTIONS])
def test_every_layer_option_changes_the_layer(layer_type, name):
    """An option a layer accepted, validated and recorded but ignored would fail here."""
    torch.manual_seed(0)
    default = _fingerprint(layer_type(32, 8, 5, padding=2))
    torch.manual_seed(0)
    changed = _fingerprint(layer_type(32, 8, 5, padding=2, **{name: NON_DEFAULT[name]}))
    assert default[:2] != changed[:2] or not torch.equal(default[2], changed[2]), name


@pytest.mark.parametrize("name", CONVERSION_OPTIONS)
def test_every_conversion_option_changes_the_conversion(name):
    def net() -> nn.Sequential:
        return nn.Sequential(OrderedDict(a=nn.Conv2d(3, 4, 3), b=nn.Conv2d(4, 4, 3), p=nn.Conv2d(4, 4, 4, stride=4)))

    def shape(model: nn.Module) -> list[tuple[str, str, tuple]]:
        return [(n, type(m).__name__, m.kernel_size) for n, m in model.named_children()]

    assert shape(convert_to_gmconv(net())) != shape(convert_to_gmconv(net(), **{name: NON_DEFAULT[name]})), name


def test_layers_refuse_an_option_they_do_not_read_and_an_unknown_parametrisation():
    with pytest.raises(TypeError, match="GMConv2d has no option dynamic_reduction"):
        GMConv2d(3, 4, 3, dynamic_reduction=4)
    with pytest.raises(ValueError, match="sigma_parametrization='sigmoid' is not valid; choose one of softplus, exp"):
        GMConv2d(3, 4, 3, sigma_parametrization="sigmoid")


def test_str_enum_arguments_are_accepted():
    import enum

    class Granularity(str, enum.Enum):
        kernel = "kernel"

    assert GMConv2d(3, 4, 3, sigma_granularity=Granularity.kernel).sigma.shape == (4, 3)


# ---------------------------------------------------------------- serialisation and runtime


def small_net(layer_type: type[nn.Conv2d] = GMConv2d, **gm_kwargs) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        layer_type(3, 8, 3, padding=1, **gm_kwargs),
        nn.ReLU(),
        layer_type(8, 8, 3, stride=2, padding=1, groups=8, padding_mode="reflect", **gm_kwargs),
        nn.ReLU(),
        layer_type(8, 4, (3, 5), padding="same", bias=False, **gm_kwargs),
    )
    for m in net:
        if isinstance(m, GMConv2d):
            randomize_sigma(m, seed=m.out_channels)
    return net


@pytest.mark.parametrize("gm_kwargs", [{}, dict(sigma_granularity="kernel", learnable_sigma=False)])
def test_state_dict_round_trip(gm_kwargs):
    src = small_net(**gm_kwargs)
    torch.manual_seed(1)
    dst = nn.Sequential(
        GMConv2d(3, 8, 3, padding=1, **gm_kwargs),
        nn.ReLU(),
        GMConv2d(8, 8, 3, stride=2, padding=1, groups=8, padding_mode="reflect", **gm_kwargs),
        nn.ReLU(),
        GMConv2d(8, 4, (3, 5), padding="same", bias=False, **gm_kwargs),
    )
    x = torch.randn(2, 3, 10, 10)
    assert not torch.allclose(dst(x), src(x))
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    dst.load_state_dict(torch.load(buf), strict=True)
    torch.testing.assert_close(dst(x), src(x), atol=0, rtol=0)
    torch.testing.assert_close(dst[2].sigma, src[2].sigma)


def test_plain_conv_checkpoint_loads_with_strict_false():
    conv = nn.Conv2d(3, 4, 3)
    gm = GMConv2d(3, 4, 3)
    result = gm.load_state_dict(conv.state_dict(), strict=False)
    assert result.missing_keys == ["sigma_raw"] and result.unexpected_keys == []
    assert torch.equal(gm.weight, conv.weight)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("layer_type", [GMConv2d, DynamicGMConv2d])
def test_deepcopy_and_pickle(how, layer_type):
    net = small_net(layer_type)
    x = torch.randn(2, 3, 10, 10)
    expected = net(x)
    clone = copy.deepcopy(net) if how == "deepcopy" else pickle.loads(pickle.dumps(net))
    torch.testing.assert_close(clone(x), expected, atol=0, rtol=0)
    assert clone[0].weight.data_ptr() != net[0].weight.data_ptr()
    with torch.no_grad():
        clone[0].weight.zero_()
    assert net[0].weight.abs().sum() > 0


@pytest.mark.parametrize(
    "layer_type, gm_kwargs",
    [
        (GMConv2d, {}),
        (GMConv2d, dict(sigma_granularity="kernel")),
        (DynamicGMConv2d, {}),
    ],
)
def test_channels_last_matches_contiguous(layer_type, gm_kwargs):
    net = small_net(layer_type, **gm_kwargs)
    x = torch.randn(3, 3, 12, 12)
    expected = net(x)
    out_cl_input = net(x.to(memory_format=torch.channels_last))
    net_cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
    out_cl_both = net_cl(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out_cl_input, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_cl_both, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layer_type", [GMConv2d, DynamicGMConv2d])
def test_bf16_autocast_cpu_close_to_fp32(layer_type):
    net = small_net(layer_type)
    x = torch.randn(2, 3, 12, 12)
    expected = net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.dtype == torch.bfloat16
    scale = expected.abs().max()
    assert (out.float() - expected).abs().max() <= 3e-2 * scale
    out.float().square().sum().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert net[0].weight.dtype == torch.float32  # autocast does not touch the parameters


def _compiled_matches_eager(backend: str) -> None:
    torch._dynamo.reset()
    net = small_net()
    ref = copy.deepcopy(net)
    compiled = torch.compile(net, backend=backend, fullgraph=True)  # no graph break: CUDA graphs capture it whole
    x = torch.randn(2, 3, 12, 12)
    out, expected = compiled(x), ref(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    out.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(net[0].sigma_raw.grad, ref[0].sigma_raw.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(net[2].weight.grad, ref[2].weight.grad, atol=1e-4, rtol=1e-4)


def test_torch_compile_aot_eager_matches_eager():
    _compiled_matches_eager("aot_eager")


@pytest.mark.slow
def test_torch_compile_inductor_matches_eager():
    _compiled_matches_eager("inductor")


def _count_mask_builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times the layers build their masks (``mask``, which every eager forward goes through)."""
    calls = [0]
    original = GMConv2d.mask

    def counting(self: GMConv2d) -> torch.Tensor:
        calls[0] += 1
        return original(self)

    monkeypatch.setattr(GMConv2d, "mask", counting)
    return calls


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_reuse_masked_weights_builds_each_mask_once_and_matches(monkeypatch, mode):
    net = small_net().eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        expected = net(x)
    calls = _count_mask_builds(monkeypatch)
    with mode(), reuse_masked_weights(net):
        outs = [net(x) for _ in range(3)]
    layers = sum(isinstance(m, GMConv2d) for m in net.modules())
    assert calls[0] == layers  # once per layer, not once per forward
    for out in outs:
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert all(m._reused is None for m in net.modules() if isinstance(m, GMConv2d))  # the copies are freed


def test_reuse_masked_weights_follows_in_place_changes_and_replacements():
    net = small_net().eval()
    x = torch.randn(2, 3, 12, 12)
    layer = net[0]

    def recomputed() -> torch.Tensor:
        with torch.enable_grad():  # with gradients on, nothing is reused
            return net(x).detach()

    with torch.no_grad(), reuse_masked_weights(net):
        before = net(x)
        layer.sigma_raw.add_(-3.0)  # an in-place step on σ (bumps its version counter)
        after_sigma = net(x)
        assert not torch.allclose(after_sigma, before)
        torch.testing.assert_close(after_sigma, recomputed(), rtol=0, atol=0)
        net.load_state_dict({k: v * 2 for k, v in copy.deepcopy(net.state_dict()).items()})
        torch.testing.assert_close(net(x), recomputed(), rtol=0, atol=0)
        layer.weight = nn.Parameter(torch.zeros_like(layer.weight))
        torch.testing.assert_close(net(x), recomputed(), rtol=0, atol=0)


def test_reuse_masked_weights_never_reuses_with_gradients_or_in_graphs(monkeypatch):
    net = small_net()
    x = torch.randn(2, 3, 12, 12)
    calls = _count_mask_builds(monkeypatch)
    layers = sum(isinstance(m, GMConv2d) for m in net.modules())
    with reuse_masked_weights(net):
        net(x).sum().backward()  # training: the product must stay in the autograd graph
        net(x).sum().backward()
        assert calls[0] == 2 * layers
        assert net[0].sigma_raw.grad is not None
        net.eval()
        with torch.no_grad():
            traced = torch.jit.trace(net, x)
            graph = torch.fx.symbolic_trace(net)
    with torch.no_grad():
        net[0].sigma_raw.add_(-3.0)  # a traced graph holding a reused tensor would miss this change
        torch.testing.assert_close(traced(x), net(x))
        torch.testing.assert_close(graph(x), net(x))


def test_reuse_masked_weights_does_not_recompile_a_compiled_model():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    net = small_net().eval()
    compiled = torch.compile(net, backend="eager")
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        expected = net(x)
        for _ in range(3):  # three evaluation passes, each a new reuse block
            with reuse_masked_weights(net):
                torch.testing.assert_close(compiled(x), expected)
        torch.testing.assert_close(compiled(x), expected)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_a_sigma_changed_through_data_is_used_by_the_next_forward():
    """Each forward builds its masks from σ as it is then: a layer skipped in one pass and changed through
    ``.data`` (which moves no version counter) computes with its new σ."""
    torch.manual_seed(0)
    net = convert_to_gmconv(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1))
    )
    x, z = torch.randn(2, 3, 8, 8), torch.randn(2, 8, 8, 8)
    net[:2](x)
    net[2].sigma_raw.data.fill_(-3.0)
    fresh = copy.deepcopy(net[2])
    torch.testing.assert_close(net[2](z), fresh(z), rtol=0, atol=0)


def test_a_copied_or_pickled_layer_carries_only_itself():
    net = convert_to_gmconv(create_backbone("local", "resnet20", num_classes=10))
    layer = net.layer3[0].conv1
    plain = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, bias=layer.bias is not None)
    assert len(pickle.dumps(layer)) < 1.2 * len(pickle.dumps(plain))
    copied = copy.deepcopy(layer)
    assert sum(p.numel() for p in copied.parameters()) == layer.weight.numel() + layer.sigma_raw.numel()
