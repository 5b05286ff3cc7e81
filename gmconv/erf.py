"""Effective receptive fields (Luo et al., NeurIPS 2016; the measure of RepLKNet, Ding et al., CVPR 2022).

GMConv claims to modulate effective receptive fields; this measures them. The ERF of a feature map
is how strongly each input pixel moves its central output: the absolute input gradient of the
channel-summed centre position, summed over input channels and over images, normalised to sum 1.
``erf_stats`` reduces a map to a few numbers (centroid, spread, high-contribution area ratios).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from .dynamic import DynamicGMConv2d

MAX_LISTED = 20  # candidate layer names an error message lists (the last ones: nearest the head)


def spatial_layers(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """``{module name: output shape}`` of every module whose output is a spatial (N, C, h, w) map with
    h, w > 1, in the order their forward passes finish (so the last is the deepest, before pooling).

    The name of the model itself is ``""``: it is a candidate when the model outputs a spatial map.
    Found with one no-grad forward pass of ``example[:1]`` in eval mode; the model is left as it was.
    """
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if _is_spatial(output):
                shapes.pop(name, None)  # a module called twice counts where it was last called
                shapes[name] = tuple(output.shape)

        return hook

    with _untouched(model):
        handles = [module.register_forward_hook(record(name)) for name, module in model.named_modules()]
        try:
            with torch.no_grad():
                model(example[:1])
        finally:
            for handle in handles:
                handle.remove()
    return shapes


def erf_map(model: nn.Module, inputs: torch.Tensor, *, layer: str | None = None, batch_size: int = 32) -> torch.Tensor:
    """The effective receptive field of ``layer``'s central position on ``inputs`` (N, C, H, W).

    Returns an (H, W) float64 map, non-negative, summing to 1: for every image, |d y / d x| summed over
    the input channels, where y is ``layer``'s output at its centre (h // 2, w // 2) summed over its
    channels; then summed over the images (each image's absolute map, not the map of the summed
    gradient, whose signs could cancel) and normalised.

    ``layer`` is a module name (``dict(model.named_modules())``); by default the last module whose
    output is a spatial map with h, w > 1 (``spatial_layers``): the deepest features before global
    pooling. The model runs in eval mode, ``batch_size`` images at a time: in eval mode an image's
    output does not depend on the rest of its batch, so the batch's summed centre output gives every
    image its own gradient. The model is left exactly as it was (modes, requires_grad, no .grad, no
    hooks) and ``inputs`` are not modified. Raises ValueError for an unknown or non-spatial ``layer``.
    """
    if inputs.dim() != 4 or len(inputs) == 0:
        raise ValueError(f"inputs of shape {tuple(inputs.shape)} must be a non-empty (N, C, H, W) batch of images")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    modules = dict(model.named_modules())
    name = _check_layer(layer, spatial_layers(model, inputs), modules, type(model).__name__)
    module = modules[name]
    captured: list[torch.Tensor] = []
    total = torch.zeros(inputs.shape[-2:], dtype=torch.float64, device=inputs.device)
    with _untouched(model):
        handle = module.register_forward_hook(lambda mod, args, output: captured.append(output))
        try:
            for chunk in inputs.split(batch_size):
                x = chunk.detach().clone().requires_grad_(True)
                captured.clear()
                with torch.enable_grad():
                    model(x)
                    features = captured[-1]
                    centre = features[:, :, features.shape[-2] // 2, features.shape[-1] // 2].sum()
                    (grad,) = torch.autograd.grad(centre, x)
                total += grad.abs().sum(dim=(0, 1), dtype=torch.float64)
        finally:
            handle.remove()
    if not total.sum() > 0:
        raise ValueError(
            f"the centre of layer {name!r} does not depend on the input (all gradients are zero); "
            "pick another layer with layer=..."
        )
    return total / total.sum()


def erf_stats(erf: torch.Tensor, thresholds: Sequence[float] = (0.2, 0.3, 0.5, 0.99)) -> dict[str, float]:
    """Centroid, spread and high-contribution area ratios of an (H, W) ERF map (renormalised to sum 1).

    - ``centroid_y``, ``centroid_x``: the map's mean position, in pixels (row and column indices).
    - ``sigma_y``, ``sigma_x``: its standard deviation about the centroid along each axis, in pixels.
    - ``area_ratio@t`` for every threshold t in (0, 1]: the smallest fraction of the image whose
      highest-valued pixels hold at least t of the total (RepLKNet's high-contribution area ratio).
    - ``gauss_*``: how Gaussian the map is (``gaussian_fit``).
    """
    if erf.dim() != 2:
        raise ValueError(f"erf of shape {tuple(erf.shape)} must be an (H, W) map, as erf_map returns")
    erf = erf.detach().to(torch.float64)
    if not torch.isfinite(erf).all() or (erf < 0).any() or not erf.sum() > 0:
        raise ValueError("erf must be finite and non-negative with a positive sum, as erf_map returns")
    for t in thresholds:
        if not 0 < t <= 1:
            raise ValueError(f"threshold {t} must be in (0, 1]")
    p = erf / erf.sum()
    rows = torch.arange(p.shape[0], dtype=torch.float64, device=p.device)
    cols = torch.arange(p.shape[1], dtype=torch.float64, device=p.device)
    p_y, p_x = p.sum(dim=1), p.sum(dim=0)  # the marginals
    cy, cx = (p_y * rows).sum(), (p_x * cols).sum()
    stats = {
        "centroid_y": cy.item(),
        "centroid_x": cx.item(),
        "sigma_y": (p_y * (rows - cy) ** 2).sum().sqrt().item(),
        "sigma_x": (p_x * (cols - cx) ** 2).sum().sqrt().item(),
    }
    cumulative = p.flatten().sort(descending=True).values.cumsum(0)
    for t in thresholds:
        # pixels needed: the first index where the running sum reaches t (with round-off tolerance), plus 1
        needed = int((cumulative < t - 1e-12).sum().item()) + 1
        stats[f"area_ratio@{t:g}"] = min(needed, p.numel()) / p.numel()
    return {**stats, **gaussian_fit(p)}


# the share of a 2-D Gaussian's mass within k standard deviations (a Mahalanobis ellipse): 1 - exp(-k²/2)
GAUSSIAN_MASS = {1: 1 - math.exp(-0.5), 2: 1 - math.exp(-2.0)}


def gaussian_fit(erf: torch.Tensor) -> dict[str, float]:
    """How Gaussian an (H, W) ERF map is: GMConv's paper claims an ERF is, so this measures the claim.

    The Gaussian has the map's own mean and covariance (plus 1/12 px² per axis, a pixel's own spread, so a
    one-pixel map still has a shape) and the amplitude that fits the map best in least squares.

    - ``gauss_r2``: 1 - residual / total sum of squares of the map against that Gaussian (1: a Gaussian;
      a flat square or a ring lands far lower).
    - ``gauss_mass_1sigma``, ``gauss_mass_2sigma``: the map's mass inside the Gaussian's 1σ and 2σ ellipses,
      against a Gaussian's own 0.393 and 0.865 (more inside 1σ: peakier than a Gaussian, heavy tails; less:
      flatter).
    - ``gauss_sigma_major``, ``gauss_sigma_minor``: the ellipse's standard deviations along its axes, in pixels.
    """
    p = erf.detach().to(torch.float64)
    p = p / p.sum()
    rows = torch.arange(p.shape[0], dtype=torch.float64, device=p.device)
    cols = torch.arange(p.shape[1], dtype=torch.float64, device=p.device)
    y, x = torch.meshgrid(rows, cols, indexing="ij")
    cy, cx = (p * y).sum(), (p * x).sum()
    dy, dx = y - cy, x - cx
    cov = (
        torch.stack(
            [
                torch.stack([(p * dy * dy).sum(), (p * dy * dx).sum()]),
                torch.stack([(p * dy * dx).sum(), (p * dx * dx).sum()]),
            ]
        )
        + torch.eye(2, dtype=p.dtype) / 12
    )
    inv = torch.linalg.inv(cov)
    mahalanobis_sq = inv[0, 0] * dy * dy + 2 * inv[0, 1] * dy * dx + inv[1, 1] * dx * dx
    shape = torch.exp(-0.5 * mahalanobis_sq)
    fitted = shape * (p * shape).sum() / (shape * shape).sum()
    total = ((p - p.mean()) ** 2).sum()
    major, minor = torch.linalg.eigvalsh(cov).flip(0).sqrt()
    return {
        "gauss_r2": (1 - ((p - fitted) ** 2).sum() / total).item() if total > 0 else 1.0,
        "gauss_mass_1sigma": p[mahalanobis_sq <= 1].sum().item(),
        "gauss_mass_2sigma": p[mahalanobis_sq <= 4].sum().item(),
        "gauss_sigma_major": major.item(),
        "gauss_sigma_minor": minor.item(),
    }


def _is_spatial(output: Any) -> bool:
    return isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[-2] > 1 and output.shape[-1] > 1


def _check_layer(
    layer: str | None, candidates: dict[str, tuple[int, ...]], modules: dict[str, nn.Module], model_name: str
) -> str:
    """``layer`` if it is a spatial layer of the model, else the last one; a ValueError naming the choices."""
    if not candidates:
        raise ValueError(
            f"{model_name} has no module with a spatial (N, C, h, w) output with h, w > 1; "
            "pass larger images or a convolutional model"
        )
    if layer is None:
        return list(candidates)[-1]
    names = [repr(name) for name in candidates]
    listed = ", ".join(names[-MAX_LISTED:])
    if len(names) > MAX_LISTED:
        listed = f"{len(names)} in all, the last {MAX_LISTED}: {listed}"
    if layer not in modules:
        raise ValueError(f"layer {layer!r} is not a module of {model_name}; choose a spatial layer: {listed}")
    if layer not in candidates:
        raise ValueError(
            f"layer {layer!r} does not output a spatial (N, C, h, w) map with h, w > 1 here; "
            f"choose a spatial layer: {listed}"
        )
    return layer


@contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters for the duration; then every module's mode, every parameter's
    requires_grad and every DynamicGMConv2d's last σ as they were (frozen parameters get no .grad)."""
    modes = [(module, module.training) for module in model.modules()]
    flags = [(param, param.requires_grad) for param in model.parameters()]
    sigmas = [(module, module.last_sigma) for module in model.modules() if isinstance(module, DynamicGMConv2d)]
    model.eval()
    for param, _ in flags:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        for param, flag in flags:
            param.requires_grad_(flag)
        for module, sigma in sigmas:
            module.last_sigma = sigma
