"""models/: the CIFAR ResNets, the three model sources, the small-input stems, offline pretrained
weights (σ of GMConv checkpoints included), the GMConv conversion from a config, and parameter/FLOP
counting."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from torch import nn

from gmconv import DynamicGMConv2d, GMConv2d
from helpers import compose_train
from models import (
    adapt_to_small_input,
    apply_conv,
    build_backbone,
    build_model,
    count_flops,
    count_parameters,
    create_backbone,
    register_model,
    registered_models,
    registry,
)
from models.cifar_resnet import BasicBlock, CifarResNet
from models.config import ConvConfig, ModelConfig

CIFAR_DEPTHS = [20, 32, 44, 56, 110]
GMCONV = ConvConfig(name="gmconv", type="gmconv")
STANDARD = ConvConfig()


pytestmark = pytest.mark.usefixtures("one_thread")


def images() -> torch.Tensor:
    """A batch of two 32 px RGB images."""
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def torchvision_backbone(name: str, image_size: int = 32, **cfg) -> nn.Module:
    model_cfg = ModelConfig(name=name, source="torchvision", **cfg)
    return build_backbone(model_cfg, num_classes=10, image_size=image_size)


def count(model: nn.Module, cls: type[nn.Module]) -> int:
    return sum(isinstance(m, cls) for m in model.modules())


# ---------------------------------------------------------------- CIFAR ResNets (He et al. 2016)


@pytest.mark.parametrize("depth", CIFAR_DEPTHS)
def test_cifar_resnet_has_its_depth_in_weight_layers_and_classifies(depth):
    model = create_backbone("local", f"resnet{depth}", num_classes=7)
    assert count(model, nn.Conv2d) + count(model, nn.Linear) == depth
    assert model(images()).shape == (2, 7)


@pytest.mark.parametrize("name, paper_params", [("resnet20", 0.27e6), ("resnet56", 0.85e6)])
def test_cifar_resnet_parameter_counts_match_the_paper(name, paper_params):
    model = create_backbone("local", name, num_classes=10)
    assert count_parameters(model) == pytest.approx(paper_params, rel=0.03)


def test_option_b_shortcut_projects_with_1x1_convolutions():
    a = create_backbone("local", "resnet20", num_classes=10)
    b = create_backbone("local", "resnet20", num_classes=10, shortcut="B")
    assert count(a, nn.Conv2d) == 19 and all(m.kernel_size == (3, 3) for m in a.modules() if isinstance(m, nn.Conv2d))
    assert count(b, nn.Conv2d) == 21 and count_parameters(b) > count_parameters(a)
    assert b(images()).shape == (2, 10)


def test_zero_init_residual_starts_every_block_as_the_identity():
    torch.manual_seed(0)
    plain = create_backbone("local", "resnet20", num_classes=10)
    zero = create_backbone("local", "resnet20", num_classes=10, zero_init_residual=True)
    blocks = [m for m in zero.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 9 and all(not b.bn2.weight.any() for b in blocks)
    assert all(b.bn2.weight.all() for b in plain.modules() if isinstance(b, BasicBlock))
    x = torch.relu(torch.randn(2, 16, 8, 8))
    torch.testing.assert_close(blocks[0].eval()(x), x)  # the residual branch adds nothing: relu(0 + x) = x


@pytest.mark.parametrize(
    "overrides, zero_init",
    [
        (["model=resnet110"], True),  # on the digits, where the deep ResNets needed it (docs/BACKBONES.md)
        (["model=resnet20"], False),
        (["model=resnet18"], True),
        (["model=resnet18", "data=imagenet"], False),  # only on the digits
        (["model=resnet56", "data=cifar10"], False),
        (["model=resnet56", "model.kwargs.zero_init_residual=false"], False),  # a typed value wins
        (["experiment=cifar100_resnet110"], False),  # He et al.'s recipes keep their initialisation
        (["experiment=imagenet_resnet50"], False),
    ],
)
def test_deep_resnets_zero_init_residual_branches_on_the_digits_only(overrides, zero_init):
    assert compose_train(*overrides).model.kwargs.get("zero_init_residual", False) is zero_init


@pytest.mark.parametrize(
    "overrides, optimizer, lr",
    [
        (["model=alexnet"], "adamw", 1e-3),  # its exception on the digits (configs/optim_exception/digits_alexnet.yaml)
        (["model=alexnet", "optim=sgd"], "sgd", 0.1),  # an optimizer chosen on the command line has no exception
        (["model=alexnet", "data=imagenet"], "sgd", 0.01),  # torchvision's AlexNet recipe on ImageNet
        (["experiment=imagenet_alexnet"], "sgd", 0.01),
        (["model=resnet110"], "sgd", 0.2),  # configs/optim_exception/digits_resnet110.yaml
        (["model=resnet110", "optim=adamw"], "adamw", 1e-3),
        (["model=resnet110", "data=cifar10"], "sgd", 0.1),  # He et al.'s recipe
        (["experiment=cifar10_resnet110"], "sgd", 0.1),
        (["model=vgg16_bn"], "sgd", 0.05),  # configs/optim_exception/digits_vgg11_bn.yaml
        (["model=vgg16_bn", "data=cifar10"], "sgd", 0.1),
        (["model=vgg16_bn", "optim.lr=0.02"], "sgd", 0.02),  # a typed value wins
        (["model=resnet20"], "sgd", 0.1),
    ],
)
def test_an_exception_applies_on_its_data_to_the_recipes_optimizer_only(overrides, optimizer, lr):
    optim = compose_train(*overrides).optim
    assert (optim.name, optim.lr) == (optimizer, pytest.approx(lr))


@pytest.mark.parametrize("kwargs, match", [({"shortcut": "C"}, "shortcut"), ({"depth": 21}, "6n")])
def test_cifar_resnet_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CifarResNet(**{"depth": 20, **kwargs})


# ---------------------------------------------------------------- sources and the registry


@pytest.mark.parametrize(
    "source, name, listed",
    [
        ("local", "resnet21", "resnet20"),
        ("torchvision", "resnet51", "resnet50"),
        ("timm", "resnet51x", "resnet50"),
    ],
)
def test_unknown_model_name_lists_choices(source, name, listed):
    with pytest.raises(ValueError, match=rf"{name}.*{listed}") as err:
        create_backbone(source, name, num_classes=10)
    assert source in str(err.value)


def test_register_model_adds_a_local_model_once(monkeypatch):
    monkeypatch.setattr(registry, "_LOCAL_MODELS", dict(registry._LOCAL_MODELS))

    @register_model("tiny_test_net")
    def tiny(num_classes: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))

    assert "tiny_test_net" in registered_models()
    model = build_backbone(ModelConfig(name="tiny_test_net"), num_classes=5, image_size=32)
    assert model(images()).shape == (2, 5)
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny_test_net")(tiny)


def test_build_model_takes_the_composed_hydra_config_and_logs_the_report(caplog):
    """The runner passes DictConfigs (enum members, DictConfig kwargs), not dataclass instances."""
    model_cfg = OmegaConf.structured(ModelConfig(name="resnet20", kwargs={"shortcut": "B"}))
    with caplog.at_level(logging.INFO, logger="models"):
        model = build_model(model_cfg, OmegaConf.structured(GMCONV), num_classes=10, image_size=32)
    assert count(model, GMConv2d) == 19  # the two 1×1 projections stay plain:
    assert "resnet20: GMConv: converted 19 conv layers, skipped 2" in caplog.text
    assert "skipped (kernel smaller than min_kernel_size=3): layer2.0.shortcut.0, layer3.0.shortcut.0" in caplog.text
    standard = build_model(model_cfg, OmegaConf.structured(STANDARD), num_classes=10, image_size=32)
    assert count(standard, GMConv2d) == 0 and count(standard, nn.Conv2d) == 21


# ---------------------------------------------------------------- small-input stems


def test_resnet50_gets_a_cifar_stem_at_32_px_only():
    small = torchvision_backbone("resnet50", image_size=32)
    assert (small.conv1.kernel_size, small.conv1.stride, small.conv1.padding) == ((3, 3), (1, 1), (1, 1))
    assert isinstance(small.maxpool, nn.Identity)
    assert small(images()).shape == (2, 10)
    large = torchvision_backbone("resnet50", image_size=224)
    assert (large.conv1.kernel_size, large.conv1.stride) == ((7, 7), (2, 2))
    assert isinstance(large.maxpool, nn.MaxPool2d)


@pytest.mark.parametrize(
    "name, adapted",
    [
        (
            "alexnet",
            lambda m: (
                m.features[0].kernel_size == (5, 5)
                and m.features[0].stride == (1, 1)
                and m.classifier[1].in_features == 256
            ),
        ),
        ("vgg11_bn", lambda m: isinstance(m.avgpool, nn.AdaptiveAvgPool2d) and m.classifier[0].in_features == 512),
        ("mobilenet_v2", lambda m: m.features[0][0].stride == (1, 1)),
    ],
)
def test_small_input_families_classify_32_px_images(name, adapted):
    model = torchvision_backbone(name, image_size=32)
    assert adapted(model)
    assert model(images()).shape == (2, 10)


def test_small_input_true_false_and_bad_values():
    forced = torchvision_backbone("resnet18", image_size=224, small_input="True")  # Hydra's spelling of true
    assert isinstance(forced.maxpool, nn.Identity)
    kept = torchvision_backbone("resnet18", image_size=32, small_input="false")
    assert isinstance(kept.maxpool, nn.MaxPool2d)
    with pytest.raises(ValueError, match="model.small_input.*auto, true, false"):
        torchvision_backbone("resnet18", small_input="yes")
    cifar = build_backbone(ModelConfig(name="resnet20", small_input="true"), num_classes=10, image_size=32)
    assert cifar.conv1.kernel_size == (3, 3)  # natively small-input: left alone


def test_small_input_on_timm_fails_when_forced_and_warns_when_auto(caplog):
    cfg = {"name": "resnet10t", "source": "timm"}
    with pytest.raises(ValueError, match="only supported for"):
        build_backbone(ModelConfig(**cfg, small_input="true"), num_classes=10, image_size=32)
    with caplog.at_level(logging.WARNING, logger="models"):
        model = build_backbone(ModelConfig(**cfg), num_classes=10, image_size=32)
    assert "resnet10t keeps its ImageNet stem" in caplog.text
    with pytest.raises(ValueError, match="only supported for"):
        adapt_to_small_input(model, "timm", "resnet10t")


# ---------------------------------------------------------------- GMConv conversion


def test_apply_conv_converts_resnet50_spatial_convolutions():
    model = torchvision_backbone("resnet50")
    report = apply_conv(model, GMCONV)
    assert count(model, GMConv2d) == 17 == len(report.converted)  # the stem and 16 bottleneck 3×3 convs
    assert model(images()).shape == (2, 10)


def test_apply_conv_converts_every_cifar_resnet_convolution():
    model = create_backbone("local", "resnet20", num_classes=10)
    report = apply_conv(model, GMCONV)
    assert count(model, GMConv2d) == 19 and not report.skipped and not report.unmatched


def test_apply_conv_standard_leaves_the_model_untouched():
    model = create_backbone("local", "resnet20", num_classes=10)
    types = [type(m) for m in model.modules()]
    assert apply_conv(model, STANDARD) is None
    assert [type(m) for m in model.modules()] == types


def test_apply_conv_passes_every_option_on():
    cfg = ConvConfig(
        type="gmconv",
        sigma_init=1.5,
        sigma_granularity="layer",
        sigma_parametrization="exp",
        sigma_min=0.2,
        learnable_sigma=False,
        min_kernel_size=3,
        exclude=["conv1"],
        enlarge_by=2,
    )
    model = create_backbone("local", "resnet20", num_classes=10)
    report = apply_conv(model, cfg)
    assert report.skipped == {"conv1": "matched by exclude"} and type(model.conv1) is nn.Conv2d
    layer = model.layer1[0].conv1
    assert isinstance(layer, GMConv2d) and layer.kernel_size == (5, 5)
    assert (layer.sigma_init, layer.sigma_granularity, layer.sigma_parametrization, layer.sigma_min) == (
        1.5,
        "layer",
        "exp",
        0.2,
    )
    assert "sigma_raw" not in dict(layer.named_parameters())  # a fixed mask is a buffer
    dynamic = create_backbone("local", "resnet20", num_classes=10)
    report = apply_conv(dynamic, ConvConfig(type="gmconv", dynamic=True, dynamic_reduction=4))
    assert len(report.converted) == 19 == count(dynamic, DynamicGMConv2d)
    assert dynamic.layer3[0].conv1.sigma_predictor[0].out_features == 8  # max(8, 32 // 4)


@pytest.mark.parametrize("option", ["include", "exclude"])
def test_apply_conv_rejects_a_pattern_that_matches_no_convolution(option):
    cfg = ConvConfig(type="gmconv", **{option: ["stem", "layer1.*"]})
    model = create_backbone("local", "resnet20", num_classes=10)
    message = (
        rf"^conv\.{option}=\[stem\] matches no convolution of resnet20 "
        r"\(layer names look like conv1, layer1\.0\.conv1, layer1\.0\.conv2, \.\.\.\); fix the pattern$"
    )
    with pytest.raises(ValueError, match=message):
        apply_conv(model, cfg, model_name="resnet20")


def test_apply_conv_validates_the_options():
    with pytest.raises(ValueError, match="sigma_granularity='pixel'"):
        apply_conv(
            create_backbone("local", "resnet20", num_classes=10), ConvConfig(type="gmconv", sigma_granularity="pixel")
        )


def test_timm_backbone_builds_converts_and_runs():
    model = build_backbone(ModelConfig(name="mobilenetv3_small_050", source="timm"), num_classes=10, image_size=32)
    report = apply_conv(model, GMCONV)
    assert report.converted and count(model, GMConv2d) == len(report.converted)
    assert model(images()).shape == (2, 10)


# ---------------------------------------------------------------- pretrained weights


@pytest.fixture(scope="module")
def resnet18_imagenet_state() -> dict[str, torch.Tensor]:
    return torchvision.models.resnet18(num_classes=1000).state_dict()


def resnet18_cfg(pretrained: str | Path) -> ModelConfig:
    return ModelConfig(name="resnet18", source="torchvision", pretrained=str(pretrained), small_input="false")


def assert_holds_backbone_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert model.fc.weight.shape == (10, 512)  # the 1000-class head did not fit: freshly initialised


@pytest.mark.parametrize("wrap", [lambda s: s, lambda s: {"model": s, "epoch": 3}, lambda s: {"state_dict": s}])
def test_pretrained_file_loads_matching_tensors_and_drops_the_head(tmp_path, resnet18_imagenet_state, wrap, caplog):
    path = tmp_path / "weights.pt"
    torch.save(wrap(resnet18_imagenet_state), path)
    with caplog.at_level(logging.WARNING, logger="models"):
        model = build_backbone(resnet18_cfg(path), num_classes=10, image_size=32)
    assert_holds_backbone_weights(model, resnet18_imagenet_state)
    assert "fc.weight" in caplog.text


def test_pretrained_weights_load_before_the_small_input_stem_replaces_conv1(tmp_path, resnet18_imagenet_state):
    path = tmp_path / "weights.pt"
    torch.save(resnet18_imagenet_state, path)
    cfg = ModelConfig(name="resnet18", source="torchvision", pretrained=str(path))
    model = build_backbone(cfg, num_classes=10, image_size=32)
    assert model.conv1.kernel_size == (3, 3)
    assert torch.equal(model.layer1[0].conv1.weight, resnet18_imagenet_state["layer1.0.conv1.weight"])


def test_pretrained_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        build_backbone(resnet18_cfg(tmp_path / "nowhere.pt"), num_classes=10, image_size=32)


@pytest.mark.parametrize("content", [{"encoder.proj": torch.zeros(3)}, torch.zeros(3)])
def test_pretrained_file_of_something_else_is_rejected(tmp_path, content):
    path = tmp_path / "other.pt"
    torch.save(content, path)
    with pytest.raises(ValueError, match="does not look like weights for resnet18"):
        build_backbone(resnet18_cfg(path), num_classes=10, image_size=32)


def test_pretrained_unreadable_file_is_a_value_error(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        build_backbone(resnet18_cfg(path), num_classes=10, image_size=32)


def test_pretrained_torchvision_reads_the_hub_cache_and_never_downloads(tmp_path, monkeypatch, resnet18_imagenet_state):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert Path(torch.hub.get_dir()) == tmp_path / "hub"
    with pytest.raises(FileNotFoundError, match=re.escape(str(expected))):
        build_backbone(resnet18_cfg("torchvision"), num_classes=10, image_size=32)
    expected.parent.mkdir(parents=True)
    torch.save(resnet18_imagenet_state, expected)
    assert_holds_backbone_weights(
        build_backbone(resnet18_cfg("torchvision"), num_classes=10, image_size=32), resnet18_imagenet_state
    )


@pytest.mark.parametrize("source, name", [("timm", "resnet10t"), ("local", "resnet20")])
def test_pretrained_torchvision_needs_a_torchvision_model(source, name):
    with pytest.raises(ValueError, match="needs model.source=torchvision"):
        build_backbone(ModelConfig(name=name, source=source, pretrained="torchvision"), num_classes=10, image_size=32)


def randomize_gmconv_sigma(model: nn.Module) -> None:
    """Move every σ (or dynamic predictor) away from its init, as training would."""
    g = torch.Generator().manual_seed(1)
    for module in model.modules():
        params = (
            [module.sigma_raw]
            if isinstance(module, GMConv2d)
            else (list(module.sigma_predictor.parameters()) if isinstance(module, DynamicGMConv2d) else [])
        )
        for p in params:
            with torch.no_grad():
                p.uniform_(-1.0, 3.0, generator=g)


@pytest.mark.parametrize(
    "conv", [GMCONV, ConvConfig(name="gmconv_dynamic", type="gmconv", dynamic=True)], ids=["gmconv", "dynamic"]
)
def test_pretrained_gmconv_checkpoint_keeps_its_sigma(tmp_path, conv, caplog):
    """A GMConv run's checkpoint as model.pretrained: σ too is loaded, after the conversion."""
    trained = build_model(ModelConfig(), conv, num_classes=10, image_size=32)
    randomize_gmconv_sigma(trained)
    path = tmp_path / "last.pt"
    torch.save({"model": trained.state_dict(), "epoch": 3}, path)
    with caplog.at_level(logging.INFO, logger="models"):
        model = build_model(ModelConfig(pretrained=str(path)), conv, num_classes=10, image_size=32)
    expected = trained.state_dict()
    got = model.state_dict()
    assert set(got) == set(expected)
    sigma_keys = [k for k in expected if k.endswith("sigma_raw") or ".sigma_predictor." in k]
    assert len(sigma_keys) == 19 * (4 if conv.dynamic else 1)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert f"loaded {len(expected)} of {len(expected)} tensors of resnet20" in caplog.text
    assert "ignored" not in caplog.text and "left at" not in caplog.text


def test_pretrained_plain_weights_load_before_enlarge_by_and_sigma_stays_at_init(tmp_path, caplog):
    plain = create_backbone("local", "resnet20", num_classes=10)
    path = tmp_path / "plain.pt"
    torch.save(plain.state_dict(), path)
    enlarged = ConvConfig(name="gmconv_enlarged", type="gmconv", enlarge_by=2)
    with caplog.at_level(logging.WARNING, logger="models"):
        model = build_model(ModelConfig(pretrained=str(path)), enlarged, num_classes=10, image_size=32)
    layer = model.layer1[0].conv1
    assert layer.kernel_size == (5, 5)
    assert torch.equal(layer.weight[:, :, 1:4, 1:4], plain.layer1[0].conv1.weight)  # zero-padded pretrained 3×3
    assert layer.weight[:, :, 0].abs().sum() == 0
    assert "19 tensors left at their initialisation: conv1.sigma_raw" in caplog.text
    assert "ignored" not in caplog.text and "dropped" not in caplog.text


# ---------------------------------------------------------------- size and cost


def test_count_flops_of_resnet20_is_twice_its_41m_multiply_adds():
    model = create_backbone("local", "resnet20", num_classes=10)
    assert count_flops(model, 32) == pytest.approx(2 * 41e6, rel=0.1)


def test_count_flops_leaves_modes_and_batchnorm_statistics_alone():
    model = create_backbone("local", "resnet20", num_classes=10)
    model.layer1.eval()  # a mixed state must come back exactly
    modes = [m.training for m in model.modules()]
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    flops = count_flops(model, 16)
    assert flops == pytest.approx(count_flops(model, 32) / 4, rel=0.01)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())
    assert torch.is_grad_enabled()


def test_count_parameters_is_the_sum_of_numel_including_sigma():
    model = build_model(ModelConfig(), GMCONV, num_classes=10, image_size=32)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    assert count_parameters(model) > count_parameters(create_backbone("local", "resnet20", num_classes=10))
