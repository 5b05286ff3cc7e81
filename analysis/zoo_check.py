"""Convert many timm and torchvision networks with GMConv and check what gmconv/README.md promises, per model.

Every model is built with random weights (nothing is downloaded), in fp32 on the CPU, and run on
random inputs of --size px. The checks, one column each ("ok", "n/a" with the reason, or "FAIL: ..."):

- converted: exactly the plain ``nn.Conv2d`` modules with a kernel of 3 or more that are not patchify
  convolutions (stride = kernel) became GMConv2d; the skipped ones are counted with their reasons.
- weights: every tensor of the original state_dict is bit-identical in the converted one.
- huge σ: converted with σ = 1e6 taps (mask 1 everywhere), the eval outputs equal the original's.
- fold: ``fold_gmconv`` leaves no GMConv2d and gives the converted model's eval outputs.
- state_dict: the converted state_dict loads (strict) into a freshly built and converted model,
  which then computes the same outputs.
- train step: one SGD step on cross-entropy (train mode, batch 2) gives a finite loss and finite
  parameters; "σ no grad" counts the GMConv layers whose σ got no gradient in that step.
- fx: torch.fx traces the converted model (timm's leaf modules and wrapped functions, as its feature
  extraction does) and the graph gives the same outputs; "n/a" if the original does not trace either.
- export: ``torch.export.export`` of the converted model gives the same outputs; "n/a" if the
  original does not export either.

    nice -n 10 python -m scripts.docs.zoo_check --out docs/COMPATIBILITY.md       # the default ~100 models
    python -m scripts.docs.zoo_check --models timm:convnext_atto tv:resnet18       # some (timm: or tv:)
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import timm
import torch
import torch.nn.functional as F
import torchvision
from timm.models._features_fx import get_notrace_functions, get_notrace_modules
from torch import nn
from torchvision.models.feature_extraction import NodePathTracer

from engine.checkpoint import atomic_write
from gmconv import ConversionReport, GMConv2d, convert_to_gmconv, fold_gmconv, sigma_without_gradient

TIMM_MODELS = """
test_resnet test_efficientnet test_vit test_convnext test_byobnet
resnet18 resnet50d resnext26ts skresnet18 resnest14d res2net50_14w_8s ecaresnet26t
resnetv2_50 regnetx_002 regnety_002 regnetz_005 efficientnet_b0 efficientnet_lite0 tf_efficientnet_b0
mobilenetv2_050 mobilenetv3_small_050 mobilenetv4_conv_small mnasnet_050 fbnetc_100
spnasnet_100 lcnet_050 ghostnet_050 ghostnetv2_100 hardcorenas_a mixnet_s tinynet_e rexnet_100 hrnet_w18_small
dla46_c densenet121 dpn48b selecsls42b gernet_s repvgg_a0 mobileone_s0 fastvit_t8 repvit_m0_9
cs3darknet_s hgnet_tiny hgnetv2_b0 ese_vovnet19b_slim_dw xception41 botnet26t_256 halonet26t
lambda_resnet26t nf_resnet26 dm_nfnet_f0 convnext_atto convnextv2_atto edgenext_xx_small
efficientformer_l1 efficientformerv2_s0 efficientvit_b0 efficientvit_m0 levit_128s mobilevit_xxs mobilevitv2_050
poolformer_s12 poolformerv2_s12 convit_tiny cait_xxs24_224 deit_tiny_patch16_224 vit_tiny_patch16_224
eva02_tiny_patch14_224 pit_ti_224 pvt_v2_b0 swin_tiny_patch4_window7_224 gcvit_xxtiny
xcit_nano_12_p16_224 coat_lite_tiny coatnet_nano_rw_224
starnet_s1 mambaout_femto twins_svt_small fasternet_t0 shvit_s1 tiny_vit_5m_224
visformer_tiny mixer_s32_224 resmlp_12_224
""".split()
TORCHVISION_MODELS = """
resnet18 alexnet squeezenet1_1 mobilenet_v2 mobilenet_v3_small mnasnet0_5 shufflenet_v2_x0_5 efficientnet_b0
regnet_y_400mf googlenet
""".split()
DEFAULT_MODELS = [f"timm:{n}" for n in TIMM_MODELS] + [f"tv:{n}" for n in TORCHVISION_MODELS]
CHECKS = ("converted", "weights", "huge σ", "fold", "state_dict", "train step", "σ no grad", "fx", "export")
HUGE_SIGMA = 1e6  # taps: exp(-d² / 2σ²) rounds to 1.0 in fp32 for every tap of every kernel here
NUM_CLASSES = 10
BATCH = 2


class CheckFailed(AssertionError):
    """An invariant that does not hold; its message goes into the table."""


def build(spec: str, size: int) -> nn.Module:
    """The model named ``timm:<name>`` or ``tv:<name>``, random init, for inputs of ``size`` px."""
    source, _, name = spec.partition(":")
    if source == "tv":
        kwargs = {"image_size": size} if name.startswith("vit_") else {}
        if name == "googlenet":
            kwargs.update(aux_logits=False, init_weights=True)
        return torchvision.models.get_model(name, weights=None, num_classes=NUM_CLASSES, **kwargs)
    if source == "timm":
        kwargs = {"img_size": size} if timm.models.get_pretrained_cfg(name).fixed_input_size else {}
        return timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **kwargs)
    raise ValueError(f"model {spec!r}: prefix it with timm: or tv:")


def family(spec: str) -> str:
    """The module that defines the model (timm's ``byobnet``, torchvision's ``resnet``)."""
    source, _, name = spec.partition(":")
    builder = torchvision.models.get_model_builder(name) if source == "tv" else timm.models.model_entrypoint(name)
    return builder.__module__.rpartition(".")[2]


def expected_conversions(model: nn.Module) -> list[str]:
    """What the README says converts by default, computed without gmconv."""
    return [
        name
        for name, m in model.named_modules()
        if type(m) is nn.Conv2d and max(m.kernel_size) >= 3 and m.stride != m.kernel_size
    ]


def same(actual: torch.Tensor, expected: torch.Tensor, what: str, rel: float = 1e-5) -> str:
    """'ok' if ``actual`` matches ``expected`` to ``rel`` of its largest magnitude, else CheckFailed."""
    diff = (actual - expected).abs().max().item()
    scale = max(1.0, expected.abs().max().item())
    if not diff <= rel * scale:
        raise CheckFailed(f"{what}: max abs diff {diff:.3g} on outputs up to {scale:.3g}")
    return "ok" if diff == 0 else f"ok ({diff:.1g})"


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = model(x)
    return out[0] if isinstance(out, (tuple, list)) else out


def fx_trace(model: nn.Module) -> torch.fx.GraphModule:
    """A symbolic trace as timm's FX feature extraction does it (its leaf modules, its wrapped functions)."""
    tracer = NodePathTracer(leaf_modules=list(get_notrace_modules()), autowrap_functions=list(get_notrace_functions()))
    return torch.fx.GraphModule(model, tracer.trace(model))


def unless_original_fails(
    step: Callable[[nn.Module], torch.Tensor], converted: nn.Module, plain: nn.Module, x: torch.Tensor
) -> str:
    """Run ``step`` on the converted model; if it raises, 'n/a' when it raises on the original too."""
    expected = outputs(converted, x)
    try:
        return same(step(converted), expected, "converted")
    except CheckFailed:
        raise
    except Exception as err:  # noqa: BLE001 - whatever the tool raises, the original decides the verdict
        try:
            step(plain)
        except Exception as plain_err:  # noqa: BLE001
            return f"n/a (original fails too: {type(plain_err).__name__})"
        raise CheckFailed(f"{type(err).__name__}: {err}") from err


def check_model(spec: str, size: int = 64, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every check of the module docstring for one model, {column: verdict}; those in ``skip`` are "skipped"."""
    row = {"model": spec, "family": family(spec)}
    torch.manual_seed(0)
    plain = build(spec, size).eval()
    x = torch.randn(BATCH, 3, size, size)
    try:
        reference = outputs(plain, x)
    except Exception as err:  # noqa: BLE001 - a model that does not run at this size is listed, not checked
        return {**row, "note": f"does not run at {size} px: {type(err).__name__}: {str(err)[:80]}"}
    report = ConversionReport()
    converted = convert_to_gmconv(copy.deepcopy(plain), report=report)
    checks: dict[str, Callable[[], str]] = {
        "converted": lambda: _check_converted(plain, converted, report),
        "weights": lambda: _check_weights(plain, converted),
        "huge σ": lambda: same(
            outputs(convert_to_gmconv(copy.deepcopy(plain), sigma_init=HUGE_SIGMA), x), reference, "σ = 1e6 vs original"
        ),
        "fold": lambda: _check_fold(converted, x),
        "state_dict": lambda: _check_state_dict(spec, size, converted, x),
        "fx": lambda: unless_original_fails(lambda m: fx_trace(m)(x), converted, plain, x),
        "export": lambda: unless_original_fails(
            lambda m: torch.export.export(m.eval(), (x,)).module()(x), converted, plain, x
        ),
    }
    for column, check in checks.items():
        row[column] = "skipped" if column in skip else _verdict(check)
    train_step = _verdict(lambda: _check_train_step(converted, x))
    row["train step"], _, row["σ no grad"] = train_step.partition("|")
    return row


def _verdict(check: Callable[[], str]) -> str:
    try:
        return check()
    except Exception as err:  # noqa: BLE001 - every failure becomes a table cell
        return f"FAIL: {type(err).__name__}: {str(err)[:100]}".replace("|", "/").replace("\n", " ")


def _check_converted(plain: nn.Module, converted: nn.Module, report: ConversionReport) -> str:
    expected = expected_conversions(plain)
    actual = [name for name, m in converted.named_modules() if isinstance(m, GMConv2d)]
    if sorted(report.converted) != sorted(expected) or sorted(actual) != sorted(expected):
        raise CheckFailed(f"converted {len(actual)} ({len(report.converted)} reported), expected {len(expected)}")
    patchify = sum("patchify" in reason for reason in report.skipped.values())
    return f"{len(expected)} of {len(expected) + len(report.skipped)}" + (f", {patchify} patchify" if patchify else "")


def _check_weights(plain: nn.Module, converted: nn.Module) -> str:
    state = converted.state_dict()
    different = [k for k, v in plain.state_dict().items() if not torch.equal(state[k], v)]
    extra = [k for k in state if k not in plain.state_dict() and not k.endswith("sigma_raw")]
    if different or extra:
        raise CheckFailed(f"changed: {different[:3]}, unexpected keys: {extra[:3]}")
    return "ok"


def _check_fold(converted: nn.Module, x: torch.Tensor) -> str:
    folded = fold_gmconv(copy.deepcopy(converted))
    if any(isinstance(m, GMConv2d) for m in folded.modules()):
        raise CheckFailed("a GMConv2d is left after folding")
    return same(outputs(folded, x), outputs(converted, x), "folded vs converted")


def _check_state_dict(spec: str, size: int, converted: nn.Module, x: torch.Tensor) -> str:
    torch.manual_seed(1)  # other random weights, replaced by the loaded ones
    fresh = convert_to_gmconv(build(spec, size))
    fresh.load_state_dict(converted.state_dict(), strict=True)
    return same(outputs(fresh, x), outputs(converted, x), "reloaded vs converted", rel=0)


def _check_train_step(converted: nn.Module, x: torch.Tensor) -> str:
    """'ok|<layers without σ gradient>' (split into two columns by the caller)."""
    model = copy.deepcopy(converted).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    out = model(x)
    loss = F.cross_entropy(out[0] if isinstance(out, (tuple, list)) else out, torch.arange(BATCH) % NUM_CLASSES)
    loss.backward()
    no_grad = sigma_without_gradient(model)
    optimizer.step()
    if not torch.isfinite(loss) or not all(torch.isfinite(p).all() for p in model.parameters()):
        raise CheckFailed(f"loss {loss.item()} or a parameter is not finite")
    return f"ok|{len(no_grad)}"


def markdown(rows: list[dict[str, str]], args: argparse.Namespace, seconds: float) -> str:
    """The table; while the run is still going (fewer rows than models) the header says so."""
    checked = [r for r in rows if "note" not in r]
    failed = [r for r in checked if any(r.get(c, "").startswith("FAIL") for c in CHECKS)]
    lines = [
        "# GMConv compatibility: timm and torchvision models",
        "",
        f"Written by `scripts/docs/zoo_check.py` (its docstring defines every column) on {datetime.date.today()}: "
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, "
        f"Python {platform.python_version()}, {platform.machine()} CPU, {args.threads} thread(s), "
        f"random init, fp32, batch {BATCH}, {args.size} px; {seconds / 60:.1f} min in all.",
        "",
        *(
            [f"**Incomplete: {len(rows)} of {len(args.models)} models so far** (the run had not finished).", ""]
            if len(rows) < len(args.models)
            else []
        ),
        f"**{len(checked)} models checked** ({len({r['family'] for r in checked})} families), "
        f"**{len(checked) - len(failed)} pass every check**; {len(rows) - len(checked)} do not run at "
        f"{args.size} px and are listed at the end. GMConv layers in all: "
        f"{sum(int(r['converted'].split()[0]) for r in checked if r['converted'][0].isdigit())}.",
        "",
        "| model | family | " + " | ".join(CHECKS) + " | s |",
        "|---|---|" + "---|" * len(CHECKS) + "---:|",
    ]
    lines += [
        f"| {r['model']} | {r['family']} | " + " | ".join(r[c] for c in CHECKS) + f" | {r['seconds']} |"
        for r in checked
    ]
    skipped = [r for r in rows if "note" in r]
    if skipped:
        lines += ["", f"Not run at {args.size} px:", ""]
        lines += [f"- {r['model']} ({r['family']}): {r['note']}" for r in skipped]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="timm:<name> or tv:<name> (default: ~100)")
    parser.add_argument("--size", type=int, default=64, help="input size in px (default 64)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, help="write the markdown table here (default: print it)")
    args = parser.parse_args(argv)
    bad = [m for m in args.models if not m.startswith(("timm:", "tv:"))]
    if bad:
        sys.exit(f"error: {', '.join(bad)}: name models as timm:<name> or tv:<name>")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # the models' own deprecation and init warnings would drown the progress
    start, rows = time.perf_counter(), []
    for i, spec in enumerate(args.models, 1):
        began = time.perf_counter()
        row = check_model(spec, args.size)
        row["seconds"] = f"{time.perf_counter() - began:.1f}"
        rows.append(row)
        failed = [c for c in CHECKS if row.get(c, "").startswith("FAIL")]
        status = row.get("note") or (f"FAIL {', '.join(failed)}" if failed else "ok")
        print(f"[{i}/{len(args.models)}] {spec}: {status} ({row['seconds']} s)", file=sys.stderr, flush=True)
        if args.out is not None:  # after every model: a long sweep stopped early still leaves its table
            text = markdown(rows, args, time.perf_counter() - start)
            atomic_write(args.out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    if args.out is None:
        print(markdown(rows, args, time.perf_counter() - start), end="")
    else:
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
