"""GMConv's training path in few operations (gmconv/shared_masks.py, gmconv/masked_weight.py): the same numbers
as the plain product, gradients ready at their layer, masks computed once per forward, any σ change seen."""

from __future__ import annotations

import copy
import itertools
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import gmconv.shared_masks as shared_masks_module
from gmconv import GMConv2d, convert_to_gmconv, share_masks
from models.registry import create_backbone
from scripts.bench_gmconv import ops_per_call

OPTION_CASES = [
    dict(sigma_granularity=granularity, sigma_parametrization=parametrization)
    for granularity, parametrization in itertools.product(("layer", "channel", "kernel"), ("softplus", "exp"))
] + [dict(learnable_sigma=False)]


def mixed_net(dtype: torch.dtype = torch.float32, **options) -> nn.Module:
    """Two kernel sizes (two mask batches), groups, no bias, a non-square kernel, σ spread out."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 5, padding=2, groups=4, bias=False), nn.ReLU(),
        nn.Conv2d(8, 6, (3, 5), padding="same"), nn.ReLU(),
        nn.Conv2d(6, 4, 3, padding=1),
    ).to(dtype)
    net = convert_to_gmconv(net, **options)
    with torch.no_grad():
        for i, layer in enumerate(m for m in net.modules() if isinstance(m, GMConv2d)):
            layer.sigma_raw.add_(torch.linspace(-1.0, 1.0, layer.sigma_raw.numel(), dtype=dtype)
                                 .reshape(layer.sigma_raw.shape) * (i + 1) / 4)
    return net


@pytest.mark.parametrize("options", OPTION_CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_training_gives_the_plain_products_outputs_and_gradients(options):
    net = mixed_net(torch.float64, **options)
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    params = dict(net.named_parameters())

    def loss(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(net, tensors, (x,)).square().mean()

    expected = torch.func.grad(loss)(params)  # under a torch.func transform each layer takes the plain product
    loss(params).backward()
    for name, p in params.items():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("granularity", ["layer", "channel", "kernel"])
def test_higher_derivatives_stay_exact(granularity):
    torch.manual_seed(0)
    layer = GMConv2d(4, 4, 3, padding=1, groups=2, sigma_granularity=granularity, dtype=torch.float64)
    names = ["weight", "sigma_raw"]
    tensors = [getattr(layer, n).detach().clone().requires_grad_() for n in names]
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)

    def f(*t):
        return functional_call(layer, dict(zip(names, t)), (x,))

    assert torch.autograd.gradgradcheck(f, tensors)


def _ready_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    order: list[str] = []
    handles = [p.register_post_accumulate_grad_hook(lambda _p, name=name: order.append(name))
               for name, p in model.named_parameters()]
    F.cross_entropy(model(x), torch.zeros(x.shape[0], dtype=torch.long)).backward()
    for handle in handles:
        handle.remove()
    return order


@pytest.mark.parametrize("granularity", ["layer", "channel", "kernel"])
def test_gradients_become_ready_at_their_layer_as_a_plain_convolutions_do(granularity):
    """DDP all-reduces a gradient bucket as soon as it fills: σ's gradient must not wait for the end of backward."""
    torch.manual_seed(0)
    standard = create_backbone("local", "resnet20", num_classes=10)
    gm = convert_to_gmconv(copy.deepcopy(standard), sigma_granularity=granularity)
    x = torch.randn(2, 3, 16, 16)
    plain, masked = _ready_order(standard, x), _ready_order(gm, x)
    assert [n for n in masked if not n.endswith(".sigma_raw")] == plain
    sigmas = [n for n in masked if n.endswith(".sigma_raw")]
    assert len(sigmas) == 19
    for name in sigmas:  # next to its own layer's weight, with nothing of another layer between them
        at = masked.index(name)
        assert name.replace("sigma_raw", "weight") in masked[at - 1:at + 2], (name, masked[at - 2:at + 3])


def test_masks_are_computed_once_per_forward_for_all_layers(monkeypatch):
    calls = []
    original = shared_masks_module.masks_and_derivatives
    monkeypatch.setattr(shared_masks_module, "masks_and_derivatives",
                        lambda raw, *args: calls.append(raw.numel()) or original(raw, *args))
    net = mixed_net()
    x = torch.randn(2, 3, 9, 8)
    net(x).sum().backward()
    assert len(calls) == 3  # one batch per kernel size: 3×3 (two layers), 5×5, 3×5
    assert sorted(calls) == sorted([8 + 4, 8, 6])
    net(x).sum().backward()
    with torch.no_grad():
        net(x)
    assert len(calls) == 9


def test_a_sigma_changed_in_any_way_is_used_by_the_next_forward():
    net = mixed_net()
    x = torch.randn(2, 3, 9, 8)
    layer = net[4]
    net(x)
    layer.sigma_raw.data.fill_(-2.0)  # through .data: no version counter moves
    torch.testing.assert_close(net(x), copy.deepcopy(net)(x), rtol=0, atol=0)
    with torch.no_grad():
        layer.sigma_raw.add_(1.0)
    torch.testing.assert_close(net(x), copy.deepcopy(net)(x), rtol=0, atol=0)


def test_a_layer_skipped_in_a_pass_still_sees_a_step_of_its_sigma():
    net = mixed_net()
    net[:4](torch.randn(2, 3, 9, 8))  # a pass through the first layers: the last layer's masks are computed, unused
    with torch.no_grad():
        net[6].sigma_raw.sub_(1.5)  # an optimizer-like in-place step
    z = torch.randn(2, 6, 9, 8)
    torch.testing.assert_close(net[6](z), copy.deepcopy(net)[6](z), rtol=0, atol=0)


def test_copies_and_pickles_compute_their_own_masks():
    net = mixed_net()
    x = torch.randn(2, 3, 9, 8)
    net(x)
    for twin in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        layers = [m for m in twin.modules() if isinstance(m, GMConv2d)]
        assert {id(m._shared_masks) for m in layers} == {id(layers[0]._shared_masks)}
        assert layers[0]._shared_masks is not net[0]._shared_masks and layers[0]._shared_masks.layers == layers
        torch.testing.assert_close(twin(x), net(x), rtol=0, atol=0)
        with torch.no_grad():
            twin[0].sigma_raw.fill_(-3.0)
        assert not torch.equal(twin(x), net(x))


def test_hand_built_layers_share_their_masks_on_request():
    torch.manual_seed(0)
    net = nn.Sequential(GMConv2d(3, 4, 3, padding=1), GMConv2d(4, 4, 3, padding=1))
    x = torch.randn(1, 3, 6, 6)
    alone = net(x)
    assert net[0]._shared_masks is None
    shared = share_masks(net)
    assert net[0]._shared_masks is shared is net[1]._shared_masks
    torch.testing.assert_close(net(x), alone, rtol=0, atol=0)
    assert share_masks(nn.Sequential(nn.Conv2d(3, 4, 3))) is None


@pytest.mark.parametrize("options", OPTION_CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_a_converted_layer_adds_few_operations_to_forward_and_backward(options, device):
    """The budget of issue #22, each operation a kernel launch on a GPU (the meta device takes the accelerator
    path): the forward product, the weight's gradient, σ's batched dot product (a product and a sum on a CPU
    and for a σ per kernel), and the shared mask computation spread over the layers."""
    torch.manual_seed(0)
    standard = create_backbone("local", "resnet20", num_classes=10).to(device)
    gm = convert_to_gmconv(copy.deepcopy(standard), **options)
    x = torch.randn(2, 3, 8, 8, device=device)
    y = torch.zeros(2, dtype=torch.long, device=device)

    def step(model: nn.Module):
        def run() -> None:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
        return run

    step(gm)()
    _, plain = ops_per_call(step(standard))
    _, masked = ops_per_call(step(gm))
    per_layer = (masked - plain) / 19
    if options.get("learnable_sigma") is False:  # no σ gradient: the product forward and g · M backward
        budget = 3
    else:
        budget = 4 if device == "meta" and options.get("sigma_granularity") != "kernel" else 5
    assert per_layer <= budget, (plain, masked, per_layer)


@pytest.mark.parametrize("granularity", ["layer", "channel", "kernel"])
def test_both_ways_of_summing_sigmas_gradient_agree(granularity):
    from gmconv.masked_weight import sigma_gradient

    layer = GMConv2d(6, 4, 3, groups=2, sigma_granularity=granularity, dtype=torch.float64)
    grad, weighted = torch.randn_like(layer.weight), torch.randn_like(layer.weight)
    expected = (grad * weighted).sum((2, 3) if granularity == "kernel" else (1, 2, 3) if granularity == "channel"
                                     else (0, 1, 2, 3)).reshape(layer.sigma_raw.shape)
    for one_kernel in (True, False, None):
        torch.testing.assert_close(sigma_gradient(grad, weighted, layer.sigma_raw.shape, one_kernel), expected)
