"""How a run's validation images were prepared, applied to image files: what predict.py feeds the model and
what an exported model's metadata tells its user to do.

Folder data (imagenet, imagefolder) are decoded photos: the run's own validation pipeline applies (shorter
side resized, centre crop, normalisation). In-memory data (digits, CIFAR) were stored at their final size:
an image file is resized to that size if it is not already (bilinear, antialiased), then normalised by the
same batch transform evaluation uses, so a file holding exactly a validation image gives exactly its input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
from omegaconf import DictConfig
from torchvision.transforms import v2

from data.batch_augment import BatchAugment
from data.registry import BUILDERS, CENTRE_CROP
from data.transforms import folder_transforms, val_resize


@dataclass(frozen=True)
class Preprocessing:
    size: int  # the model's input side (data.test_image_size)
    resize: Optional[int]  # folder data: the shorter side before the centre crop; None: resized to size × size
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"

    def describe(self) -> dict[str, Any]:
        """For an exported model's metadata: everything needed to prepare an image without this project."""
        steps = (
            [
                "decode to RGB",
                f"resize the shorter side to {self.resize} ({self.interpolation}, antialiased)",
                f"centre-crop {self.size}×{self.size}",
            ]
            if self.resize
            else [
                "decode to RGB",
                f"resize to {self.size}×{self.size} ({self.interpolation}, antialiased) unless it is that size already",
            ]
        )
        steps += ["scale to [0, 1]", "subtract mean, divide by std (per channel)", "layout N×3×H×W, float32"]
        return {**asdict(self), "steps": steps}


def preprocessing_of(config: DictConfig, data_info: dict[str, Any]) -> Preprocessing:
    size = data_info.get("test_image_size", data_info["image_size"])
    centre_cropped = set(CENTRE_CROP) <= set(BUILDERS[config.data.name].takes)  # folder data: resize, centre-crop
    resize = val_resize(size, config.data) if centre_cropped else None
    return Preprocessing(size, resize, tuple(data_info["mean"]), tuple(data_info["std"]))


class Preprocessor:
    """A decoded image (uint8 3×H×W tensor or PIL image) → the model's input (3×size×size float32)."""

    def __init__(self, config: DictConfig, preprocessing: Preprocessing) -> None:
        self.preprocessing = preprocessing
        mean, std = preprocessing.mean, preprocessing.std
        self.folder = folder_transforms(config.data, mean, std)[1] if preprocessing.resize else None
        self.normalise = BatchAugment(mean, std)  # the in-memory data's validation transform

    def __call__(self, image: Any) -> torch.Tensor:
        if self.folder is not None:
            return self.folder(image)
        pixels = v2.functional.to_dtype(v2.functional.to_image(image), torch.uint8, scale=True)
        size = self.preprocessing.size
        if tuple(pixels.shape[-2:]) != (size, size):
            pixels = v2.functional.resize(pixels, [size, size], antialias=True)
        return self.normalise(pixels[None])[0]
