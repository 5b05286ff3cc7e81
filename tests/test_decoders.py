"""JPEG decoders (``data.decoder``) and crop-aware reduced decoding (``data.reduced_decode``): the network sees
the same pixels within JPEG decoder tolerance, and the same RandomResizedCrop boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from torchvision.transforms import v2

from data import DataConfig, build_loaders, check_data_config, decoder_choice
from data.bad_images import UnreadableImage
from data.decoder_choice import resolve_decoder
from data.decoders import decode, read_encoded
from data.folder import readers
from data.reduced_decode import RandomResizedCropDecode, ShortSideDecode
from data.transforms import folder_transforms
from engine.errors import ConfigError

DECODERS = ("torchvision", "pil", "simplejpeg")
# libjpeg implementations may round the inverse DCT differently: ±1 on every pixel is 48.1 dB.
DECODER_PSNR = 45.0
# Reduced decoding resamples through the DCT rather than a bilinear filter. 40 dB is a mean error of about
# 1.5 of 255 levels, less than re-saving a photograph as a JPEG at quality 90 changes it (36–48 dB here).
REDUCED_PSNR = 40.0


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def photo(path: Path, width: int, height: int, quality: int = 90) -> str:
    """A photograph (scikit-learn's sample of a Chinese temple) resized to ``width``×``height``, as a JPEG."""
    Image.fromarray(load_sample_images().images[0]).resize((width, height), Image.BICUBIC).save(path, quality=quality)
    return str(path)


def pil_reference(path: str) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)


@pytest.mark.parametrize("decoder", DECODERS)
def test_decoders_give_pils_pixels_within_jpeg_tolerance(tmp_path: Path, decoder: str) -> None:
    path = photo(tmp_path / "photo.jpg", 500, 375)
    image = decode(read_encoded(path), decoder)
    assert image.dtype == torch.uint8 and image.shape == (3, 375, 500)
    assert psnr(image, pil_reference(path)) >= DECODER_PSNR


@pytest.mark.parametrize("decoder", ("pil", "simplejpeg"))
def test_reduced_decoding_halves_per_dct_scale(tmp_path: Path, decoder: str) -> None:
    path = photo(tmp_path / "photo.jpg", 501, 375)
    sizes = [tuple(decode(read_encoded(path), decoder, d).shape[-2:]) for d in (1, 2, 4, 8)]
    assert sizes == [(375, 501), (188, 251), (94, 126), (47, 63)]


@pytest.mark.parametrize("decoder", DECODERS)
def test_files_that_are_not_jpeg_use_the_general_decoder(imagefolder_root: Path, decoder: str) -> None:
    path = str(imagefolder_root / "train" / "ant" / "1.png")
    torch.testing.assert_close(decode(read_encoded(path), decoder), pil_reference(path), rtol=0, atol=0)


def test_simplejpeg_missing_names_the_extra_and_auto_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decoder_choice, "simplejpeg_installed", lambda: False)
    with pytest.raises(ConfigError, match=r"^data.decoder=simplejpeg needs .*\[jpeg\][^\n]*$"):
        check_data_config(DataConfig(name="imagenet", decoder="simplejpeg"))
    assert resolve_decoder("auto") == "torchvision"
    with pytest.raises(ConfigError, match="data.decoder=nvjpeg is unknown"):
        resolve_decoder("nvjpeg")


def test_decoder_settings_are_refused_where_the_dataset_decodes_nothing() -> None:
    with pytest.raises(ConfigError, match="data.decoder=pil is not used by data=digits"):
        check_data_config(DataConfig(name="digits", decoder="pil"))


def test_crop_boxes_are_random_resized_crops_own() -> None:
    """The reader draws its box with get_params from the same stream as v2.RandomResizedCrop: the same boxes."""
    reader, torchvision_crop = RandomResizedCropDecode(224, "simplejpeg"), v2.RandomResizedCrop(224)
    sizes = [(500, 375), (375, 500), (2048, 1536), (120, 90), (1000, 200)]
    torch.manual_seed(0)
    ours = [reader.box(w, h) for _ in range(400) for w, h in sizes]
    torch.manual_seed(0)
    theirs = [
        tuple(torchvision_crop.make_params([torch.empty(1, h, w)]).values()) for _ in range(400) for w, h in sizes
    ]
    assert ours == theirs


@pytest.mark.parametrize("decoder", DECODERS)
def test_reduced_training_crops_match_full_decoding(tmp_path: Path, decoder: str) -> None:
    """Same seed, same boxes and flips: at full scale (500×375) the same pixels, reduced (1280×960) within
    REDUCED_PSNR."""
    cfg = DataConfig(name="imagefolder", image_size=224)
    full, _ = folder_transforms(cfg, (0.0,) * 3, (1 / 255,) * 3)
    after_reader, _ = folder_transforms(cfg, (0.0,) * 3, (1 / 255,) * 3, crop_in_reader=True)
    reader = RandomResizedCropDecode(224, decoder)
    for width, height, exact in ((500, 375, True), (1280, 960, False)):
        image = read_encoded(photo(tmp_path / f"{width}.jpg", width, height))
        for seed in range(8):
            torch.manual_seed(seed)
            expected = full(decode(image, decoder))
            torch.manual_seed(seed)
            got = after_reader(reader(image))
            if exact:
                torch.testing.assert_close(got, expected)
            else:
                assert psnr(got, expected) >= REDUCED_PSNR, (seed, psnr(got, expected))


@pytest.mark.parametrize("decoder", ("pil", "simplejpeg"))
def test_reduced_validation_images_match_full_decoding(tmp_path: Path, decoder: str) -> None:
    image = read_encoded(photo(tmp_path / "big.jpg", 1280, 960))
    _, val = folder_transforms(DataConfig(name="imagefolder", image_size=224), (0.0,) * 3, (1 / 255,) * 3)
    reduced = ShortSideDecode(256, decoder)(image)
    assert reduced.shape[-2:] == (480, 640)  # 1/2: the shorter side stays >= 256
    assert psnr(val(reduced), val(decode(image, decoder))) >= REDUCED_PSNR


def test_folder_loaders_train_on_reduced_jpegs(tmp_path: Path) -> None:
    for split in ("train", "val"):
        for index, name in enumerate(("a", "b")):
            (tmp_path / split / name).mkdir(parents=True)
            photo(tmp_path / split / name / "0.jpg", 900 + 100 * index, 700)
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), batch_size=2, image_size=64, decoder="pil")
    train, val, _ = build_loaders(cfg, seed=0)
    assert next(iter(train))[0].shape == next(iter(val))[0].shape == (2, 3, 64, 64)
    assert isinstance(readers(cfg)[0].geometry, RandomResizedCropDecode)
    assert readers(DataConfig(name="imagefolder", decoder="torchvision"))[0].geometry is None  # it cannot scale


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("reduced", (False, True))
def test_unreadable_jpegs_raise_one_error_naming_the_file(tmp_path: Path, decoder: str, reduced: bool) -> None:
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    (folder / "noise.jpg").write_bytes(np.random.default_rng(0).bytes(2048))
    (folder / "truncated.jpg").write_bytes(Path(photo(folder / "whole.jpg", 500, 375)).read_bytes()[:600])
    train_reader, _ = readers(DataConfig(name="imagefolder", image_size=224, decoder=decoder, reduced_decode=reduced))
    for name in ("noise.jpg", "truncated.jpg"):
        with pytest.raises(UnreadableImage, match=f"cannot read image {folder / name} .*skip_bad_images"):
            train_reader(str(folder / name))
