"""Digits placed on a larger canvas: the cluttered and the rescaled digits, built offline from scikit-learn's.

Tasks where the receptive field matters, made the way the literature made them from MNIST: ``digits_cluttered``
puts one digit at a random position on a ``data.canvas`` px canvas with ``data.clutter`` fragments cut from
*other* digits of the same split (Jaderberg et al. 2015, "Spatial Transformer Networks"); ``digits_scaled``
draws the digits at ``data.digit_size`` px on the same canvas without clutter, so that between settings only
the scale of the features changes (the scale-equivariance literature's rescaled MNIST).

Training canvases are drawn from the digits' training split and validation canvases from its validation
split (data/digits.py's fixed 80/20 split), so no validation digit, whole or as clutter, is ever seen in
training. Both sets are a pure function of ``data.generator_seed`` (not of the run's seed): every run of a
study trains on the same canvases, the comparison between convolutions is paired on the data, and a resumed
run has exactly the data it started with. The training set is fixed rather than redrawn each epoch for the
same reasons; the padded random crop of the batch augmentation still shifts it every epoch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import DataConfig
from .digits import as_rgb, channel_statistics, digit_split, upsampled
from .in_memory import tensor_splits
from .info import Splits
from .seeds import mixed_seed

TRAIN_STREAM, VAL_STREAM = 0, 1  # the generator streams of the two splits: one's size never changes the other


def fragment_size(digit_size: int) -> int:
    """Clutter fragments are half a digit's side: stroke pieces that look like parts of digits, not digits."""
    return max(1, digit_size // 2)


def render(
    digits: Tensor, targets: Tensor, count: int, canvas: int, clutter: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``count`` grey uint8 canvases (count, canvas, canvas) and their labels.

    Each holds one of ``digits`` (uint8 (N, s, s), already at the digit size) at a uniform random position,
    wholly inside the canvas, and ``clutter`` fragments of ``fragment_size(s)`` px cut at random from other
    digits (never the canvas's own image) and placed uniformly; overlaps keep the brighter pixel. All draws
    come from ``generator``, in a fixed order, with tensor operations only.
    """
    n, side = len(digits), digits.shape[-1]
    chosen = torch.randint(n, (count,), generator=generator)
    places = torch.randint(canvas - side + 1, (2, count, 1), generator=generator)
    flat = torch.zeros(count, canvas * canvas, dtype=torch.uint8)
    _stamp(flat, digits[chosen].unsqueeze(1), places[0], places[1], canvas)
    if clutter:
        piece = fragment_size(side)
        others = (chosen[:, None] + torch.randint(1, n, (count, clutter), generator=generator)) % n
        cuts = torch.randint(side - piece + 1, (2, count, clutter), generator=generator)
        spots = torch.randint(canvas - piece + 1, (2, count, clutter), generator=generator)
        steps = torch.arange(piece)
        fragments = digits[
            others[..., None, None],
            (cuts[0][..., None] + steps)[..., :, None],
            (cuts[1][..., None] + steps)[..., None, :],
        ]
        _stamp(flat, fragments, spots[0], spots[1], canvas)
    return flat.view(count, canvas, canvas), targets[chosen]


def _stamp(flat: Tensor, patches: Tensor, rows: Tensor, cols: Tensor, canvas: int) -> None:
    """Max ``patches`` (count, k, p, p) into the flattened canvases at top-left corners (rows, cols) (count, k)."""
    steps = torch.arange(patches.shape[-1])
    pixels = (rows[..., None, None] + steps[:, None]) * canvas + cols[..., None, None] + steps[None, :]
    flat.scatter_reduce_(1, pixels.flatten(1), patches.flatten(1), reduce="amax")


def build_digit_canvases(data: DataConfig, *, with_train: bool = True) -> Splits:
    """``data.train_size`` training and ``data.val_size`` validation canvases (data/config_checks.py has
    checked that every size is set and fits), normalised with the training canvases' own statistics."""
    split = digit_split()
    clutter = data.clutter or 0

    def canvases(pixels: Tensor, targets: Tensor, count: int, stream: int) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(mixed_seed(data.generator_seed, stream))
        grey, labels = render(upsampled(pixels, data.digit_size), targets, count, data.canvas, clutter, generator)
        return as_rgb(grey), labels

    train = canvases(split.train_pixels, split.train_targets, data.train_size, TRAIN_STREAM)
    val = canvases(split.val_pixels, split.val_targets, data.val_size, VAL_STREAM)
    mean, std = channel_statistics(train[0])
    # no flip, as for the digits; the crop's shift is the digits' 1/16 of the side
    train_set, val_set = tensor_splits(data, train, val, mean, std, padding=max(1, data.canvas // 16), flip=False)
    return Splits(train=train_set if with_train else None, val=val_set, classes=split.classes, mean=mean, std=std)
