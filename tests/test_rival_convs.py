"""GMConv's rivals as conv types (models/conv_types.py, models/layers/): deformable convolution, DCLS, dilated and
large kernels take the same layers GMConv takes, train, start where the papers say they start, and are refused
where they cannot work."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from omegaconf import OmegaConf
from torch import nn
from torchvision.ops import deform_conv2d

from engine.optim import param_groups
from models.config import ConvConfig
from models.conv_types import dilated, fold_convs, folded_config
from models.factory import apply_conv
from models.layers import Dcls2d, DeformConv2d
from models.layers.deformable import sampled_conv
from models.registry import create_backbone
from tests.helpers import QUICK, compose_train, run_in_process

RIVALS = ("deformable", "dcls", "dilated", "large_kernel")
# what each rival learns about the receptive field, beyond the convolution's own weight and bias
LEARNED = {
    "deformable": ("offset.weight", "offset.bias"),
    "dcls": ("positions", "sigma_raw"),
    "dilated": (),
    "large_kernel": (),
}


def conv_config(name: str, **changes) -> ConvConfig:
    """The conv group as configs/conv/<name>.yaml composes it."""
    return compose_train(f"conv={name}", *(f"conv.{k}={v}" for k, v in changes.items())).conv


@pytest.mark.parametrize("name", RIVALS)
@pytest.mark.parametrize("backbone", ["resnet20", "resnet18"])
def test_each_rival_converts_a_resnet_trains_a_step_and_learns_its_receptive_field(name, backbone):
    torch.manual_seed(0)
    if backbone == "resnet18":
        model, classes = torchvision.models.resnet18(num_classes=10), 10
    else:
        model, classes = create_backbone("local", backbone, num_classes=10), 10
    report = apply_conv(model, conv_config(name), model_name=backbone)
    assert report.converted and not report.unmatched
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, classes, (2,))
    F.cross_entropy(model(x), y).backward()
    learned = [(n, p) for n, p in model.named_parameters() if n.endswith(LEARNED[name])]
    assert len(learned) == len(LEARNED[name]) * (len(report.converted) if LEARNED[name] else 0)
    for param_name, param in learned:
        assert param.grad is not None and param.grad.abs().sum() > 0, param_name
    if name == "deformable":  # the DCN convention: the later stages only
        assert all(n.startswith(("layer2", "layer3", "layer4")) for n in report.converted)


CONV_CASES = [
    dict(stride=1, padding=1),
    dict(stride=2, padding=1),
    dict(stride=1, padding=0),
    dict(stride=1, padding=2, dilation=2),
    dict(stride=2, padding=1, groups=2),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("name", RIVALS)
def test_output_shapes_equal_the_convolutions(name, case):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, **case)
    wrapper = nn.Sequential(conv)
    apply_conv(wrapper, conv_config(name, **({"include": "[]"} if name == "deformable" else {})))
    x = torch.randn(2, 4, 11, 9)
    assert wrapper(x).shape == conv(x).shape


@pytest.mark.parametrize("offset_groups", [1, 2])
def test_deformable_equals_the_standard_convolution_at_initialisation(offset_groups):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2).double()
    converted = apply_conv(
        wrapped := nn.Sequential(copy.deepcopy(conv)),
        conv_config("deformable", include="[]", offset_groups=offset_groups),
    )
    assert converted.converted == ["0"] and isinstance(wrapped[0], DeformConv2d)
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64)
    torch.testing.assert_close(wrapped(x)[..., 1:-1, 1:-1], conv(x)[..., 1:-1, 1:-1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("offset_groups,groups,stride", [(1, 1, 1), (2, 2, 2), (4, 1, 1)])
def test_the_cpu_sampling_equals_torchvisions_deform_conv2d_with_its_gradients(offset_groups, groups, stride):
    """The CPU path (grid_sample and one product) and torchvision's kernel, at random offsets and modulations."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 7, 9, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 8 // groups, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True)
    out_h, out_w = (7 + 2 - 3) // stride + 1, (9 + 2 - 3) // stride + 1
    offsets = (2 * torch.randn(2, offset_groups * 18, out_h, out_w, dtype=torch.float64)).requires_grad_()
    mask = torch.rand(2, offset_groups * 9, out_h, out_w, dtype=torch.float64, requires_grad=True)
    inputs = (x, offsets, weight, bias, mask)
    ours = sampled_conv(x, offsets, weight, bias, (stride, stride), (1, 1), (1, 1), mask, offset_groups)
    theirs = deform_conv2d(x, offsets, weight, bias, (stride, stride), (1, 1), (1, 1), mask)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-11)
    ours_grads = torch.autograd.grad(ours.square().sum(), inputs)
    for a, b in zip(ours_grads, torch.autograd.grad(theirs.square().sum(), inputs)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_dcls_starts_as_the_dilated_convolution_when_its_elements_are_narrow():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1).double()
    layer = Dcls2d(conv, size=5, sigma_init=0.15)
    x = torch.randn(2, 4, 10, 10, dtype=torch.float64)
    torch.testing.assert_close(layer(x), dilated(conv, 2)(x), rtol=0, atol=1e-8)


def test_dcls_keeps_its_elements_inside_the_kernel_and_folds_into_its_dense_convolution():
    torch.manual_seed(0)
    layer = Dcls2d(nn.Conv2d(4, 6, 3, padding=1), size=5)
    with torch.no_grad():
        layer.positions.add_(10 * torch.randn_like(layer.positions))  # a step that threw elements far out
    x = torch.randn(2, 4, 10, 10)
    out = layer(x)
    assert layer.positions.abs().max() <= 2
    torch.testing.assert_close(layer.dense_conv()(x), out)


def test_folding_bakes_dcls_and_gmconv_and_refuses_deformable_in_one_line():
    torch.manual_seed(0)
    for name in ("dcls", "gmconv", "dilated"):
        model = create_backbone("local", "resnet20", num_classes=10).eval()
        cfg = conv_config(name)
        apply_conv(model, cfg)
        x = torch.randn(2, 3, 32, 32)
        expected = model(x)
        folded = fold_convs(model)
        assert all(type(m) is nn.Conv2d for m in folded.modules() if isinstance(m, nn.Conv2d))
        torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-4)
        plain = OmegaConf.merge(cfg, folded_config(cfg))  # the architecture the folded state_dict loads into
        rebuilt = create_backbone("local", "resnet20", num_classes=10)
        apply_conv(rebuilt, plain)
        rebuilt.load_state_dict(folded.state_dict(), strict=True)
    model = create_backbone("local", "resnet20", num_classes=10)
    apply_conv(model, conv_config("deformable"))
    with pytest.raises(ValueError, match=r"cannot fold deformable convolutions \(layer2.0.conv1, ...\).*--no-fold"):
        fold_convs(model)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["conv=gmconv", "conv.dilation=3"], "conv.dilation=3 has no effect: conv=gmconv"),
        (["conv=standard", "conv.kernel_size=7"], "conv.kernel_size=7 has no effect: conv=standard"),
        (["conv=deformable", "conv.sigma_init=3"], "conv.sigma_init=3.0 has no effect: conv=deformable"),
        (["conv=dilated", "conv.dilation=0"], "conv.dilation=0 is invalid"),
        (["conv=gmconv", "optim.offset_lr_scale=0.5"], "optim.offset_lr_scale=0.5 has no effect: conv=gmconv"),
    ],
)
def test_an_option_the_conv_type_does_not_read_is_refused_in_one_line(overrides, message):
    from engine.config import validate

    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        validate(compose_train(*overrides))


def test_a_layer_the_rival_cannot_take_is_refused_naming_the_fix():
    with pytest.raises(ValueError, match="conv.dcls_size=4 and a 3×3 kernel must differ by an even number"):
        apply_conv(nn.Sequential(nn.Conv2d(3, 4, 3)), conv_config("dcls", dcls_size=4))
    with pytest.raises(ValueError, match="offset_groups=3 must be a positive divisor"):
        apply_conv(nn.Sequential(nn.Conv2d(4, 4, 3)), conv_config("deformable", include="[]", offset_groups=3))
    with pytest.raises(ValueError, match=r"conv.include=\[layer\[234\].\*\] matches no convolution of alexnet"):
        apply_conv(torchvision.models.alexnet(num_classes=10), conv_config("deformable"), model_name="alexnet")


def test_the_offsets_learn_at_their_own_rate_and_dcls_spacings_are_not_decayed():
    model = create_backbone("local", "resnet20", num_classes=10)
    apply_conv(model, conv_config("deformable"))
    groups = param_groups(model, 5e-4, offset_lr_scale=0.1)  # the default
    offsets = {id(p) for m in model.modules() if isinstance(m, DeformConv2d) for p in m.offset.parameters()}
    (group,) = [g for g in groups if {id(p) for p in g["params"]} & offsets]
    assert {id(p) for p in group["params"]} == offsets and group["lr_scale"] == 0.1
    model = create_backbone("local", "resnet20", num_classes=10)
    apply_conv(model, conv_config("dcls"))
    spacings = {id(p) for m in model.modules() if isinstance(m, Dcls2d) for p in (m.positions, m.sigma_raw)}
    (group,) = [g for g in param_groups(model, 5e-4) if {id(p) for p in g["params"]} & spacings]
    assert {id(p) for p in group["params"]} == spacings and group["weight_decay"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dilated", "large_kernel"])  # dcls and deformable: the export test trains them
def test_train_py_runs_each_rival_on_the_digits(name, tmp_path):
    results = run_in_process(tmp_path / name, f"conv={name}", *QUICK)
    assert results["status"] == "completed" and results["conv"] == name
    assert results["params"] > 0 and results["flops"] > 0


@pytest.mark.slow
def test_a_dcls_run_exports_folded_and_a_deformable_run_only_unfolded(tmp_path, capsys):
    from analysis import export

    for name in ("dcls", "deformable"):  # train.py runs them on the digits
        results = run_in_process(tmp_path / name, f"conv={name}", *QUICK)
        assert results["status"] == "completed" and results["params"] > 0 and results["flops"] > 0
    assert export.main([str(tmp_path / "dcls"), "--format", "state_dict", "--out", str(tmp_path / "dcls.sd")]) == 0
    assert export.main([str(tmp_path / "deformable"), "--format", "pt2", "--out", str(tmp_path / "d.pt2")]) == 2
    assert "cannot fold deformable convolutions" in capsys.readouterr().err
    assert (
        export.main([str(tmp_path / "deformable"), "--format", "pt2", "--no-fold", "--out", str(tmp_path / "d.pt2")])
        == 0
    )


@pytest.mark.parametrize("name", RIVALS)
def test_each_rival_computes_the_same_in_channels_last(name):
    """trainer.channels_last (on by default with bf16) converts the network and its input to NHWC."""
    torch.manual_seed(0)
    model = create_backbone("local", "resnet20", num_classes=10).eval()
    apply_conv(model, conv_config(name))
    if name == "deformable":  # offsets away from zero, so that sampling between pixels is exercised
        for m in model.modules():
            if isinstance(m, DeformConv2d):
                nn.init.normal_(m.offset.weight, std=0.05)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
        torch.testing.assert_close(nhwc(x.to(memory_format=torch.channels_last)), expected, rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.isfinite(nhwc(x.to(memory_format=torch.channels_last))).all()
