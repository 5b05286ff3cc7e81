"""Precision and memory format chosen for the device (engine/precision.py): bf16 autocast and channels_last where
the device computes bf16 in hardware, fp32 elsewhere; recorded in the run's config, kept by a resume; σ learns the
same way in bf16 as in fp32."""

from __future__ import annotations

from types import MappingProxyType

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import engine.precision as precision
from engine.command_line import expand_command_line
from engine.config import validate
from engine.runner import run
from gmconv import GMConv2d, convert_to_gmconv
from models.registry import create_backbone
from tests.helpers import QUICK, compose_train, load, run_in_process

CPU = torch.device("cpu")


def trainer(**settings) -> OmegaConf:
    return compose_train(*(f"trainer.{k}={v}" for k, v in settings.items())).trainer


@pytest.fixture
def cpu_units(monkeypatch):
    """Pretend the CPU has (or lacks) bf16 units: ``cpu_units({"avx512_bf16": True})``."""

    def pretend(found: dict) -> None:
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: MappingProxyType({"cpu_name": "a CPU", **found}))

    return pretend


@pytest.mark.parametrize(
    "units,amp,channels_last",
    [({"amx_bf16": True}, "bf16", True), ({"avx512_bf16": True}, "bf16", True), ({"avx2": True}, "none", False)],
)
def test_auto_chooses_bf16_and_channels_last_where_the_cpu_has_bf16_units(cpu_units, units, amp, channels_last):
    cpu_units(units)
    chosen = precision.choose_precision(trainer(), CPU)
    assert (chosen.amp, chosen.channels_last) == (amp, channels_last)
    assert "trainer.amp=auto" in chosen.line() and ("bf16" in chosen.line()) == (amp == "bf16")


def test_what_is_typed_wins_and_fp32_is_none(cpu_units):
    cpu_units({"avx512_bf16": True})
    assert precision.choose_precision(trainer(amp="fp32"), CPU) == precision.Precision(
        "none", False, "trainer.amp=fp32; trainer.channels_last=auto: off with fp32"
    )
    assert precision.choose_precision(trainer(amp="none", channels_last="true"), CPU).channels_last is True
    assert precision.choose_precision(trainer(channels_last="false"), CPU) == precision.Precision(
        "bf16", False, "trainer.amp=auto: a CPU has AVX512-BF16 units"
    )
    with pytest.raises(ValueError, match="trainer.channels_last=sometimes is invalid: expected auto, true or false"):
        validate(compose_train("trainer.channels_last=sometimes"))


@pytest.mark.slow
def test_the_run_records_the_choice_and_a_resume_keeps_it_on_another_machine(cpu_units, tmp_path, caplog):
    caplog.set_level("INFO")
    cpu_units({"avx512_bf16": True})
    first = run_in_process(tmp_path, *QUICK)
    assert (first["config"]["trainer"]["amp"], first["config"]["trainer"]["channels_last"]) == ("bf16", True)
    assert "precision: bf16 autocast, channels_last (trainer.amp=auto: a CPU has AVX512-BF16 units" in caplog.text
    cpu_units({})  # the resume runs where auto would choose fp32
    argv = expand_command_line(["train.py", f"resume={tmp_path}", "trainer.epochs=2"]).argv
    resumed = run(
        compose_train(*[a for a in argv[1:] if not a.startswith("hydra.")]),
        tmp_path,
        overrides=[f"resume={tmp_path}", "trainer.epochs=2"],
    )
    assert (resumed["config"]["trainer"]["amp"], resumed["config"]["trainer"]["channels_last"]) == ("bf16", True)
    assert load(tmp_path / "checkpoints" / "last.pt")["config"]["trainer"]["amp"] == "bf16"


def test_sigma_learns_in_bf16_as_in_fp32():
    """σ, the mask and the optimizer state stay fp32 under autocast; σ's gradient is finite, non-zero and of
    fp32's sign wherever fp32's is clearly away from zero, and the same direction over all of σ."""
    torch.manual_seed(0)
    model = convert_to_gmconv(create_backbone("local", "resnet20", num_classes=10))
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(16, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,))
    layers = [m for m in model.modules() if isinstance(m, GMConv2d)]
    grads = {}
    for amp in ("fp32", "bf16"):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            logits = model(x).float()
        F.cross_entropy(logits, y).backward()
        grads[amp] = [layer.sigma_raw.grad.clone() for layer in layers]
    for layer, fp32, bf16 in zip(layers, grads["fp32"], grads["bf16"]):
        assert layer.sigma_raw.dtype == torch.float32 and bf16.dtype == torch.float32
        assert torch.isfinite(bf16).all() and bf16.abs().sum() > 0
        clear = fp32.abs() > 0.5 * fp32.abs().max()  # channels whose gradient bf16's rounding cannot flip
        assert torch.equal(torch.sign(bf16[clear]), torch.sign(fp32[clear]))
    every_fp32, every_bf16 = torch.cat(grads["fp32"]), torch.cat(grads["bf16"])
    assert F.cosine_similarity(every_bf16, every_fp32, dim=0) > 0.9  # measured 0.97 (1 thread) and 0.98 (2)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sgd.step()
    assert all(sgd.state[layer.sigma_raw]["momentum_buffer"].dtype == torch.float32 for layer in layers)
