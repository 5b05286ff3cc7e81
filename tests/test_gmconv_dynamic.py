"""DynamicGMConv2d (σ predicted per sample from the input): an extension beyond the paper."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from gmconv import DynamicGMConv2d, GMConv2d

GRANULARITIES = ["layer", "channel", "kernel"]
pytestmark = pytest.mark.usefixtures("one_thread")


# (in, out, kernel, extra kwargs)
DYNAMIC_CASES = {
    "plain": (4, 6, 3, dict(padding=1)),
    "stride2_nobias": (4, 6, 3, dict(stride=2, padding=1, bias=False)),
    "groups2": (4, 6, 3, dict(padding=1, groups=2)),
    "depthwise": (4, 4, 5, dict(padding=2, groups=4)),
    "reflect": (4, 6, 3, dict(padding=1, padding_mode="reflect")),
    "depthwise_circular_same": (4, 8, (3, 5), dict(padding="same", groups=4, padding_mode="circular")),
    "replicate_dilated_valid": (4, 6, 3, dict(dilation=2, padding_mode="replicate", padding="valid")),
}


def dynamic_layer(case: str, granularity: str = "channel", dtype=torch.float32) -> DynamicGMConv2d:
    cin, cout, k, kwargs = DYNAMIC_CASES[case]
    torch.manual_seed(0)
    layer = DynamicGMConv2d(cin, cout, k, sigma_granularity=granularity, dtype=dtype, **kwargs)
    with torch.no_grad():  # a stronger predictor than the near-constant init, so samples differ clearly
        layer.sigma_predictor[2].weight.normal_(0, 0.5)
    return layer


def varied_batch(batch: int = 4, channels: int = 4, dtype=torch.float32) -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.randn(batch, channels, 9, 10, dtype=dtype)
    return x + torch.randn(batch, channels, 1, 1, dtype=dtype) * 2  # per-sample channel means


def test_dynamic_layer_is_its_own_conv2d_class():
    layer = DynamicGMConv2d(4, 6, 3, padding=1)
    assert isinstance(layer, nn.Conv2d) and not isinstance(layer, GMConv2d)
    assert {k for k in layer.state_dict() if not k.startswith("sigma_predictor.")} == {"weight", "bias"}
    assert "dynamic_reduction=16" in repr(layer)


def test_dynamic_sigma_starts_near_sigma_init_and_differs_between_samples():
    layer = DynamicGMConv2d(4, 6, 3, padding=1, sigma_init=1.5)
    assert not hasattr(layer, "sigma_raw") and "sigma_raw" not in layer.state_dict()
    with pytest.raises(RuntimeError, match="no σ until"):
        layer.sigma
    assert not hasattr(layer, "mask")  # one mask per sample: there is no single mask()
    layer(varied_batch())
    sigma = layer.sigma
    assert sigma.shape == (4, 6)
    torch.testing.assert_close(sigma, torch.full_like(sigma, 1.5), rtol=0.05, atol=0)
    assert (sigma[0] - sigma[1:]).abs().amax() > 0  # already at init, σ depends on the sample


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("case", list(DYNAMIC_CASES))
def test_dynamic_samples_are_independent_and_match_the_definition(case, granularity):
    layer = dynamic_layer(case, granularity)
    x = varied_batch()
    out = layer(x)
    sigma = layer.sigma
    assert sigma.shape[0] == 4
    assert (sigma[0] - sigma[1:]).abs().amax() > 1e-2
    for b in range(4):
        alone = layer(x[b : b + 1])
        torch.testing.assert_close(out[b : b + 1], alone, atol=1e-5, rtol=1e-5)
        # definition: sample b convolved (same padding/stride/groups) with W ⊙ M(σ_b)
        weight = layer.weight * layer.mask_for(sigma[b])
        reference = layer._conv_forward(x[b : b + 1], weight, layer.bias)
        torch.testing.assert_close(out[b : b + 1], reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_dynamic_gradcheck_float64(granularity):
    layer = dynamic_layer("groups2", granularity, dtype=torch.float64)
    params = {k: v.detach().clone().requires_grad_() for k, v in layer.named_parameters()}
    names = list(params)
    assert {"weight", "bias", "sigma_predictor.0.weight", "sigma_predictor.2.bias"} <= set(names)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)

    def f(x, *tensors):
        return functional_call(layer, dict(zip(names, tensors)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params.values()))


def test_dynamic_predictor_receives_gradients():
    layer = dynamic_layer("depthwise")
    layer(varied_batch()).square().sum().backward()
    for name, p in layer.sigma_predictor.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_dynamic_in_a_network_trains_a_step():
    torch.manual_seed(0)
    net = nn.Sequential(
        DynamicGMConv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)
    )
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 0, 1])
    before = net[0].sigma_predictor[2].bias.clone()
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    assert not torch.equal(net[0].sigma_predictor[2].bias, before)
