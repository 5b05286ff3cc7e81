"""Image decoding for class-folder trees, by the decoder ``data.decoder`` names, at full size or reduced.

JPEG decoding is most of a folder loader's CPU time (docs/BENCHMARKS.md, section 3). Three decoders
are offered because their speed differs by machine and wheel, while their pixels agree within
JPEG decoder tolerance (all use libjpeg-turbo; tests/test_decoders.py bounds the difference):
``torchvision`` (torchvision.io), ``pil`` (Pillow) and ``simplejpeg`` (optional: the ``jpeg`` extra).
Files that are not JPEG go to the general decoders, whatever ``data.decoder`` says.

Reduced decoding: a JPEG is stored as 8×8 DCT blocks, so libjpeg can decode it at 1/2, 1/4 or 1/8 of
its size for much less work than decoding it whole and resizing (smaller inverse DCTs, fewer pixels
to colour-convert and upsample). ``decode`` takes that denominator; torchvision.io has no such option
and decodes whole.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import pil_loader
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

JPEG = (".jpg", ".jpeg")
# Decoded by torchvision.io straight to a uint8 tensor (libjpeg-turbo, libpng, libwebp); other formats
# (BMP, TIFF, PPM, ...) go through PIL.
TENSOR_DECODED = (*JPEG, ".png", ".webp")
DENOMINATORS = (8, 4, 2)  # the DCT scales libjpeg decodes at cheaply; 3/8, 5/8, ... are slower than whole


def is_jpeg(path: str) -> bool:
    return path.lower().endswith(JPEG)


@dataclass(frozen=True)
class Encoded:
    """An image file's bytes, read once: ``size`` parses the header before it is decoded, so that a crop
    can be drawn first and the decode reduced to what the crop needs."""

    path: str
    data: bytes


def read_encoded(path: str) -> Encoded:
    with open(path, "rb") as file:
        return Encoded(path, file.read())


def size(image: Encoded, decoder: str) -> tuple[int, int]:
    """(width, height) from the header alone."""
    if decoder == "simplejpeg" and is_jpeg(image.path):
        import simplejpeg

        height, width, _, _ = simplejpeg.decode_jpeg_header(image.data)
        return width, height
    with Image.open(io.BytesIO(image.data)) as pil:
        return pil.size


def denominator_for(width: int, height: int, at_least: tuple[int, int]) -> int:
    """The largest DCT denominator (8, 4, 2, else 1) that keeps a ``width``×``height`` region at least
    ``at_least`` = (width, height) px, so that the region is still downsampled, never upsampled, after."""
    for denominator in DENOMINATORS:
        if width // denominator >= at_least[0] and height // denominator >= at_least[1]:
            return denominator
    return 1


def decode(image: Encoded, decoder: str, denominator: int = 1) -> Any:
    """``image`` as RGB at about 1/``denominator`` of its size (⌈size / denominator⌉ where the decoder
    scales: JPEG with pil or simplejpeg; else whole): a uint8 3×H×W tensor, or a PIL image for the
    formats torchvision.io does not read (the transforms take either)."""
    if is_jpeg(image.path) and decoder == "simplejpeg":
        return _simplejpeg(image, denominator)
    if is_jpeg(image.path) and decoder == "pil":
        return _pil(image, denominator)
    if not image.path.lower().endswith(TENSOR_DECODED):
        return pil_loader(image.path)
    tensor = decode_image(torch.frombuffer(bytearray(image.data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    return tensor if tensor.dtype == torch.uint8 else v2.functional.to_dtype(tensor, torch.uint8, scale=True)


def _simplejpeg(image: Encoded, denominator: int) -> torch.Tensor:
    import simplejpeg

    if denominator == 1:
        pixels = simplejpeg.decode_jpeg(image.data, colorspace="RGB")
    else:
        height, width, _, _ = simplejpeg.decode_jpeg_header(image.data)
        pixels = simplejpeg.decode_jpeg(
            image.data,
            colorspace="RGB",
            min_factor=denominator,  # with the minimum size below: exactly 1/denominator
            min_width=math.ceil(width / denominator),
            min_height=math.ceil(height / denominator),
        )
    return torch.from_numpy(pixels).permute(2, 0, 1)


def _pil(image: Encoded, denominator: int) -> torch.Tensor:
    with Image.open(io.BytesIO(image.data)) as pil:
        if denominator > 1:  # draft picks the largest scale giving at least this size: 1/denominator
            pil.draft("RGB", (pil.width // denominator, pil.height // denominator))
        rgb = pil if pil.mode == "RGB" else pil.convert("RGB")
        return torch.from_numpy(np.array(rgb)).permute(2, 0, 1)
