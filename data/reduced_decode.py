"""Crop-aware reduced decoding (``data.reduced_decode=true``): the geometry of a folder image is decided from
its header before it is decoded, and the JPEG is decoded at the smallest DCT scale that still leaves every
pixel of the output a downsample, never an upsample.

- Training (RandomResizedCrop): the crop box is drawn by torchvision's own
  ``RandomResizedCrop.get_params`` on the full size, from the same random stream and in the same order as
  the full-decode pipeline draws it, so the boxes are identical; the box is then mapped onto the reduced
  image (to the nearest pixel there: at most half a reduced pixel off, on a box of ≥ ``size`` reduced
  pixels) and resized to ``size`` as ``v2.RandomResizedCrop`` resizes it.
- Validation and unaugmented training (resize the shorter side, then centre-crop): the image is decoded
  at a scale whose shorter side is still ≥ the resize target, and the pipeline resizes and crops it as
  it would the full image.

At scale 1 (most ImageNet-sized images: a 500×375 crop cannot halve and stay ≥ 224 px) the output is the
full decode's, pixel for pixel; the gain is on the large images of the tail.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from torchvision import transforms as v1
from torchvision.transforms.v2 import functional as F

from .decoders import Encoded, decode, denominator_for, size


class RandomResizedCropDecode:
    """``v2.RandomResizedCrop(size)`` fused with the decode: an encoded image → a ``size``×``size`` uint8 tensor."""

    def __init__(self, size: int, decoder: str, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> None:
        self.size, self.decoder, self.scale, self.ratio = size, decoder, scale, ratio

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the crop in the full image: get_params itself, on a placeholder
        of the image's size that holds no memory."""
        placeholder = torch.empty(1, 1, 1).expand(1, height, width)
        return v1.RandomResizedCrop.get_params(placeholder, list(self.scale), list(self.ratio))

    def __call__(self, image: Encoded) -> Any:
        width, height = size(image, self.decoder)
        top, left, box_h, box_w = self.box(width, height)
        denominator = denominator_for(box_w, box_h, (self.size, self.size))
        decoded = decode(image, self.decoder, denominator)
        out_h, out_w = F.get_size(decoded)
        if (out_h, out_w) == (height, width):  # decoded whole: v2.RandomResizedCrop's own resize
            return F.resized_crop(decoded, top, left, box_h, box_w, [self.size, self.size], antialias=True)
        sy, sx = out_h / height, out_w / width
        box = (left * sx, top * sy, (left + box_w) * sx, (top + box_h) * sy)
        pil = Image.fromarray(decoded.permute(1, 2, 0).numpy())
        return F.pil_to_tensor(pil.resize((self.size, self.size), Image.BILINEAR, box=box))


class ShortSideDecode:
    """The decode reduced as far as a later resize of the shorter side to ``short_side`` px allows."""

    def __init__(self, short_side: int, decoder: str) -> None:
        self.short_side, self.decoder = short_side, decoder

    def __call__(self, image: Encoded) -> Any:
        width, height = size(image, self.decoder)
        short = min(width, height)
        return decode(image, self.decoder, denominator_for(short, short, (self.short_side, self.short_side)))
