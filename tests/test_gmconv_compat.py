"""GMConv around a model: fx (feature extraction), TorchScript, torch.export, timm's re-parameterisation,
patchify and large kernels, σ without gradient, detection backbones, and scripts/docs/zoo_check.py.
(The layer itself: test_gmconv.py; conversion and folding: test_gmconv_convert.py.)"""

from __future__ import annotations

import copy
import math
import os
import re
import subprocess
import sys

import pytest
import timm
import torch
import torchvision
from timm.utils import reparameterize_model
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from analysis import zoo_check as zoo_check_module
from engine.config import validate
from gmconv import (
    ConversionReport,
    DynamicGMConv2d,
    GMConv2d,
    convert_to_gmconv,
    fold_gmconv,
    reparameterize,
    sigma_without_gradient,
)
from tests.helpers import ROOT, compose_train

pytestmark = pytest.mark.usefixtures("one_thread")


def converted_resnet18(**options) -> nn.Module:
    torch.manual_seed(0)
    return convert_to_gmconv(torchvision.models.resnet18(num_classes=10), sigma_init=1.0, **options).eval()


def first_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


# ---------------------------------------------------------------- fx, TorchScript, torch.export


@pytest.mark.parametrize("dynamic", [False, True])
def test_torchvision_feature_extractor_traces_through_gmconv(dynamic):
    model = converted_resnet18(dynamic=dynamic)
    x = torch.randn(2, 3, 64, 64)
    features = create_feature_extractor(model, {"layer2": "mid", "layer4": "out"})
    assert any(n.op == "call_function" and n.target.__name__ == "gaussian_mask" for n in features.graph.nodes)
    with torch.no_grad():
        got = features(x)
        expected = model.layer2(model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x))))))
        torch.testing.assert_close(got["mid"], expected, rtol=0, atol=0)
        torch.testing.assert_close(got["out"], model.layer4(model.layer3(expected)), rtol=0, atol=0)
    if dynamic:  # tracing stored no Proxy as the layer's σ
        assert all(
            m.last_sigma is None or isinstance(m.last_sigma, torch.Tensor)
            for m in model.modules()
            if isinstance(m, DynamicGMConv2d)
        )


def test_timm_features_only_and_fx_feature_graph_on_converted_models():
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)
    classifier = convert_to_gmconv(timm.create_model("efficientnet_b0", num_classes=10), sigma_init=1.0).eval()
    graph = timm.models.FeatureGraphNet(classifier, out_indices=(1, 2, 3))  # fx traces through every GMConv2d
    plain = timm.models.FeatureGraphNet(fold_gmconv(copy.deepcopy(classifier)), out_indices=(1, 2, 3))
    with torch.no_grad():
        for a, b in zip(graph(x), plain(x), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for feature_cls in ("fx", None):  # converting a features_only model, FX-based or not
        features = convert_to_gmconv(timm.create_model("resnet18", features_only=True, feature_cls=feature_cls))
        assert [f.shape[1] for f in features.eval()(x)] == [64, 64, 128, 256, 512]
        assert sum(isinstance(m, GMConv2d) for m in features.modules()) == 17


def test_torch_jit_script_says_to_fold_or_trace_and_folded_models_script():
    model = converted_resnet18()
    with pytest.raises(RuntimeError, match=r"gmconv\.fold_gmconv\(model\).*torch\.export\.export.*torch\.jit\.trace"):
        torch.jit.script(model)
    with pytest.raises(RuntimeError, match="DynamicGMConv2d .*cannot be folded.*torch.export.export"):
        torch.jit.script(converted_resnet18(dynamic=True))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        scripted = torch.jit.script(fold_gmconv(model))
        torch.testing.assert_close(scripted(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("how", ["converted", "folded", "dynamic"])
def test_torch_export_of_converted_folded_and_dynamic_models(how):
    model = converted_resnet18(dynamic=how == "dynamic")
    if how == "folded":
        model = fold_gmconv(model)
    x = torch.randn(2, 3, 64, 64)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- timm's re-parameterisation


@pytest.mark.parametrize("arch", ["repvgg_a0", "mobileone_s0"])
def test_reparameterize_model_keeps_the_masks(arch):
    torch.manual_seed(0)
    report = ConversionReport()
    model = convert_to_gmconv(timm.create_model(arch, num_classes=10), sigma_init=0.5, report=report).eval()
    assert report.reparameterizable and "re-parameterisable blocks" in report.summary()
    x = torch.randn(2, 3, 64, 64)
    unguarded = copy.deepcopy(model)  # what timm would do without the guard: read the raw weights
    for module in unguarded.modules():
        for method in ("fuse", "reparameterize", "switch_to_deploy"):
            module.__dict__.pop(method, None)
    with torch.no_grad():
        expected = model(x)
        tolerance = 1e-5 * expected.abs().max().item()
        for deployed in (reparameterize_model(model), reparameterize(model)):
            assert not any(isinstance(m, GMConv2d) for m in deployed.modules())
            assert (deployed(x) - expected).abs().max().item() <= tolerance
        assert (reparameterize_model(unguarded)(x) - expected).abs().max().item() > 100 * tolerance
    assert any(isinstance(m, GMConv2d) for m in model.modules())  # both re-parameterised a copy


def test_reparameterizing_dynamic_layers_raises():
    torch.manual_seed(0)
    model = convert_to_gmconv(timm.create_model("repvgg_a0", num_classes=10), dynamic=True)
    with pytest.raises(ValueError, match="cannot fold DynamicGMConv2d"):
        reparameterize_model(model)


# ---------------------------------------------------------------- patchify and large kernels


def test_patchify_convolutions_are_skipped_unless_asked_for():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=10)
    report = ConversionReport()
    convert_to_gmconv(copy.deepcopy(vit), report=report)
    assert report.converted == [] and "patchify" in report.skipped["patch_embed.proj"]
    assert "convert_patchify=True" in report.summary()
    included = convert_to_gmconv(copy.deepcopy(vit), convert_patchify=True)
    assert isinstance(included.patch_embed.proj, GMConv2d)
    alexnet = convert_to_gmconv(torchvision.models.alexnet())  # 11×11 stride 4 overlaps: converted
    assert isinstance(alexnet.features[0], GMConv2d)


@pytest.mark.parametrize("layer_type", [GMConv2d, DynamicGMConv2d])
@pytest.mark.parametrize("kernel, radius", [(3, 1.0), (5, 2.0), ((7, 3), 3.0), (11, 5.0), (2, 1.0)])
def test_relative_sigma_is_a_fraction_of_the_kernel_radius(layer_type, kernel, radius):
    absolute = layer_type(3, 4, kernel, sigma_init=0.8)
    relative = layer_type(3, 4, kernel, sigma_init=0.8, sigma_mode="relative")
    if layer_type is GMConv2d:
        torch.testing.assert_close(absolute.sigma, torch.full((4,), 0.8))
        torch.testing.assert_close(relative.sigma, torch.full((4,), 0.8 * radius))
    else:
        x = torch.randn(2, 3, 16, 16)
        absolute(x), relative(x)
        torch.testing.assert_close(relative.sigma, absolute.sigma * radius, rtol=0.05, atol=0)
    assert "sigma_mode=relative" in repr(relative)


def test_alexnet_stem_mask_in_both_modes():
    """The numbers gmconv/README.md quotes for the paper's 11×11 AlexNet stem at the default σ."""
    stems = {
        mode: convert_to_gmconv(torchvision.models.alexnet(), sigma_mode=mode).features[0]
        for mode in ("absolute", "relative")
    }
    for mode, sigma in (("absolute", 2.0), ("relative", 10.0)):
        mask = stems[mode].mask()[0, 0]
        assert mask[0, 0].item() == pytest.approx(math.exp(-50 / (2 * sigma**2)), rel=1e-5)  # corner: d² = 5² + 5²
        assert mask[0, 5].item() == pytest.approx(math.exp(-25 / (2 * sigma**2)), rel=1e-5)  # edge centre


def test_new_options_flow_into_the_train_config():
    cfg = compose_train("conv=gmconv", "conv.sigma_mode=relative", "conv.convert_patchify=true")
    validate(cfg)
    assert (cfg.conv.sigma_mode, cfg.conv.convert_patchify) == ("relative", True)
    with pytest.raises(ValueError, match=r"conv\.sigma_mode='radius' is not valid; choose one of absolute, relative"):
        validate(compose_train("conv=gmconv", "conv.sigma_mode=radius"))
    with pytest.raises(ValueError, match=r"conv\.sigma_mode"):
        validate(compose_train("conv=standard", "conv.sigma_mode=relative"))


# ---------------------------------------------------------------- which σ got no gradient


def test_sigma_without_gradient_names_zero_init_blocks_and_1x1_maps():
    torch.manual_seed(0)
    model = convert_to_gmconv(timm.create_model("resnet18", num_classes=10))  # zero_init_last: bn2.weight = 0
    x = torch.randn(2, 3, 64, 64)
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    assert sigma_without_gradient(model) == [n for n, m in model.named_modules() if isinstance(m, GMConv2d)][1:]
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    assert sigma_without_gradient(model) == []
    model.zero_grad(set_to_none=True)
    model(torch.randn(2, 3, 32, 32)).sum().backward()  # layer4 now sees 1×1 maps: only its centre tap is used
    assert sigma_without_gradient(model) == ["layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"]


# ---------------------------------------------------------------- detection models


@pytest.mark.slow
@pytest.mark.parametrize(
    "builder, kwargs",
    [
        ("fasterrcnn_mobilenet_v3_large_320_fpn", {}),
        ("retinanet_resnet50_fpn", {"score_thresh": 0.0}),  # untrained, every score is under the default 0.05
    ],
)
def test_detection_models_convert_train_and_fold_exactly(builder, kwargs):
    torch.manual_seed(0)
    model = torchvision.models.get_model(
        builder, weights=None, weights_backbone=None, num_classes=3, min_size=64, max_size=64, **kwargs
    )
    report = ConversionReport()
    model = convert_to_gmconv(model, report=report)
    assert report.converted and all(isinstance(model.get_submodule(n), GMConv2d) for n in report.converted)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([1])}] * 2
    losses = model.train()(images, targets)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert any(
        m.sigma_raw.grad is not None and m.sigma_raw.grad.any() for m in model.modules() if isinstance(m, GMConv2d)
    )
    model.eval()
    with torch.no_grad():
        expected = model(images)
        folded = fold_gmconv(model)(images)
    assert not any(isinstance(m, GMConv2d) for m in model.modules())
    assert all(len(detections["boxes"]) > 0 for detections in expected)
    for got, want in zip(folded, expected, strict=True):
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- scripts/docs/zoo_check.py


ZOO_FAMILIES = [
    "timm:test_resnet",
    "timm:test_efficientnet",
    "timm:test_vit",
    "timm:test_convnext",
    "timm:test_byobnet",
    "timm:regnetx_002",
    "timm:mobilenetv3_small_050",
    "timm:lcnet_050",
    "timm:mnasnet_050",
    "timm:ghostnet_050",
    "timm:mixnet_s",
    "timm:tf_efficientnet_b0",
    "timm:mobilevit_xxs",
    "timm:edgenext_xx_small",
    "timm:levit_128s",
    "timm:pvt_v2_b0",
    "tv:squeezenet1_1",
    "tv:shufflenet_v2_x0_5",
    "tv:mobilenet_v3_small",
]


@pytest.fixture(scope="module")
def zoo_check():
    return zoo_check_module


@pytest.mark.parametrize("spec", ZOO_FAMILIES)
def test_zoo_check_every_invariant_holds(zoo_check, spec):
    # torch.export takes seconds a model: timm's tiny test_* models run it here, the export tests above the rest
    row = zoo_check.check_model(spec, size=64, skip=() if spec.startswith("timm:test_") else ("export",))
    assert "note" not in row, row["note"]
    failed = {c: row[c] for c in zoo_check.CHECKS if row[c].startswith("FAIL")}
    assert not failed, failed
    assert int(row["converted"].split()[0]) > 0 or "patchify" in row["converted"]


def test_zoo_check_writes_its_table_and_refuses_unprefixed_names(zoo_check, tmp_path):
    out = tmp_path / "compat.md"
    zoo_check.main(["--models", "timm:test_resnet", "--out", str(out)])
    text = out.read_text()
    assert "**1 models checked** (1 families), **1 pass every check**" in text
    assert re.search(r"^\| timm:test_resnet \| resnet \| \d+ of \d+ \| ok \|", text, re.M) and "Incomplete" not in text
    with pytest.raises(SystemExit, match="resnet18: name models as timm:<name> or tv:<name>"):
        zoo_check.main(["--models", "resnet18"])


@pytest.mark.slow
def test_the_layer_needs_torch_alone(tmp_path):
    """gmconv/ is the part other projects drop into their CNNs: it imports and converts, folds and measures with
    none of the framework's dependencies importable (the `framework` extra: pyproject.toml)."""
    blocked = ("hydra", "omegaconf", "timm", "torchvision", "tensorboard", "tqdm", "sklearn", "matplotlib", "PIL")
    program = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} is not installed here")
sys.meta_path.insert(0, Block())
import torch
from torch import nn
import gmconv
net = gmconv.convert_to_gmconv(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)))
x = torch.randn(2, 3, 12, 12)
net(x).sum().backward()
import copy
assert torch.allclose(gmconv.fold_gmconv(copy.deepcopy(net).eval())(x), net.eval()(x), atol=1e-5)
print(sorted(gmconv.sigma_stats(net)), round(float(gmconv.erf_map(net, x).sum()), 6))
assert not [m for m in sys.modules if m.split(".")[0] in {blocked!r}]
"""
    proc = subprocess.run(
        [sys.executable, "-c", program],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "['0', '2'] 1.0"
