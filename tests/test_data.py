"""The data package on real (tiny) files: formats, normalisation, errors, determinism and sharding."""

from __future__ import annotations

import itertools
import os
import pickle
import random
import re
import shutil
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from sklearn.datasets import load_digits
from torch.utils.data import Dataset
from torchvision.transforms import v2

from data import DataConfig, build_loaders, check_data_config, fake, set_epoch
from data.batch_augment import BatchAugment, BatchAugmentedLoader
from data.info import Splits
from data.registry import BUILDERS, DatasetBuilder
from helpers import compose_train, from_yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "data"


def first_batches(loader, count: int) -> list[list[torch.Tensor]]:
    return list(itertools.islice(loader, count))


# --------------------------------------------------------------------------------------------- batches

DATASETS = {  # name -> (root fixture or None, overrides)
    "digits": (None, {}),
    "digits_cluttered": (None, {"batch_size": 8, "train_size": 40, "val_size": 16}),
    "digits_scaled": (None, {"batch_size": 8, "train_size": 40, "val_size": 16, "canvas": 24}),
    "cifar10": ("cifar10_root", {"batch_size": 4}),
    "cifar100": ("cifar100_root", {"batch_size": 8}),
    "imagefolder": ("imagefolder_root", {"batch_size": 4, "image_size": 24}),
    "imagenet": ("imagefolder_root", {"batch_size": 4, "image_size": 32, "val_resize": 36}),
    "fake": (None, {"batch_size": 8, "image_size": 20}),
}


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_batches_have_model_ready_shape_dtype_and_scale(name: str, request: pytest.FixtureRequest) -> None:
    fixture, overrides = DATASETS[name]
    root = {"root": str(request.getfixturevalue(fixture))} if fixture else {}
    cfg = from_yaml(name, num_workers=0, **root, **overrides)
    train, val, info = build_loaders(cfg, seed=0)
    for loader, batch_size in [(train, cfg.batch_size), (val, cfg.eval_batch_size or cfg.batch_size)]:
        x, y = next(iter(loader))
        assert x.shape == (batch_size, 3, cfg.image_size, cfg.image_size) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and 0 <= y.min() and y.max() < info.num_classes
        assert abs(x.mean()) < 0.6 and 0.5 < x.std() < 2.0  # normalised, not raw 0..1 or 0..255
    assert info.image_size == cfg.image_size
    assert info.num_classes == len(info.classes) and len(info.mean) == len(info.std) == 3


# ------------------------------------------------------------------------------------------ configs


def test_data_configs_set_only_what_differs_from_the_defaults() -> None:
    """A default lives in data/config.py (or data/fake.py) only, so changing it changes every dataset."""
    defaults = OmegaConf.structured(DataConfig)
    for path in sorted(CONFIGS.glob("*.yaml")):
        for key, value in OmegaConf.to_container(OmegaConf.load(path), resolve=False).items():
            assert key == "name" or value != defaults[key], f"{path.name} repeats the default {key}={value}"


def test_fake_sizes_default_to_the_constants_in_fake_py() -> None:
    train, val, info = build_loaders(from_yaml("fake"), seed=0)
    sizes = (len(train.dataset), len(val.dataset), info.num_classes)
    assert sizes == (fake.DEFAULT_TRAIN_SIZE, fake.DEFAULT_VAL_SIZE, fake.DEFAULT_NUM_CLASSES)


# ------------------------------------------------------------------------------------------ imports


@pytest.mark.slow
def test_a_dataset_imports_its_dependencies_only_when_built() -> None:
    """scikit-learn (and SciPy) cost about a second at start-up: only data=digits may pay it. Checking
    the config of any dataset imports none of them."""
    script = """
import sys
from data import DataConfig, build_loaders, check_data_config
from data.registry import BUILDERS
CANVAS = {name: dict(canvas=32, image_size=32, digit_size=16, clutter=3 if name == "digits_cluttered" else None,
                     train_size=8, val_size=8) for name in ("digits_cluttered", "digits_scaled")}
for name in BUILDERS:
    check_data_config(DataConfig(name=name, **CANVAS.get(name, {})))
seen = [any(m in sys.modules for m in ('sklearn', 'torchvision', 'data.digits', 'data.cifar', 'data.folder',
                        'data.digit_canvas'))]
build_loaders(DataConfig(name="fake"), seed=0)
seen.append('sklearn' in sys.modules)
build_loaders(DataConfig(name="digits"), seed=0)
seen.append('sklearn' in sys.modules)
print(seen)
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.stdout.strip() == "[False, False, True]"  # after: import data, data=fake, data=digits


# ---------------------------------------------------------------------------------------------- digits


def test_digits_split_is_fixed_stratified_and_normalised_by_its_train_statistics() -> None:
    cfg = DataConfig(augment=False)
    train, val, info = build_loaders(cfg, seed=0)
    _, val_other_seed, _ = build_loaders(cfg, seed=123)
    assert (len(train.dataset), len(val.dataset)) == (1437, 360) and info.classes == [str(d) for d in range(10)]
    assert torch.equal(val.dataset.images, val_other_seed.dataset.images)
    assert torch.equal(val.dataset.targets, val_other_seed.dataset.targets)

    totals = Counter(load_digits().target.tolist())
    val_counts = Counter(val.dataset.targets.tolist())
    train_counts = Counter(train.dataset.targets.tolist())
    for digit, total in totals.items():
        assert val_counts[digit] + train_counts[digit] == total
        assert abs(val_counts[digit] - 0.2 * total) <= 1

    train_pixels = train.dataset.batch_transform(train.dataset.images)
    assert train_pixels.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (train_pixels.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3
    assert train.dataset.images.dtype == torch.uint8


def test_digits_augmentation_shifts_but_never_mirrors() -> None:
    train, _, info = build_loaders(DataConfig(), seed=0)
    original = train.dataset.images[0].float() / 255
    padded = torch.nn.functional.pad(original, (2, 2, 2, 2))
    shifts = [padded[:, dy : dy + 32, dx : dx + 32] for dy in range(5) for dx in range(5)]
    mean, std = torch.tensor(info.mean)[:, None, None], torch.tensor(info.std)[:, None, None]
    torch.manual_seed(0)
    views = [train.dataset[0][0] * std + mean for _ in range(20)]
    for view in views:  # every view is the digit moved by at most 2 px, never its mirror image
        assert any(torch.allclose(view, shift, atol=1e-5) for shift in shifts)
    assert not any(torch.allclose(original.flip(-1), shift, atol=1e-5) for shift in shifts)
    assert len({tuple(v.flatten().tolist()) for v in views}) > 1


@pytest.mark.parametrize("flip", [False, True])
def test_batch_augmentation_draws_the_per_sample_pipelines_crops_and_flips(flip: bool) -> None:
    """Every batch-augmented image is one of the padded crops (or, with flip, their mirror images) that
    v2.RandomCrop + RandomHorizontalFlip can produce, normalised the same way; all of them occur."""
    images = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8).expand(400, -1, -1, -1)
    mean, std = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)
    out = BatchAugment(mean, std, padding=2, flip=flip)(images, torch.Generator().manual_seed(0))
    crop = v2.Compose([v2.RandomCrop(8, padding=2), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    padded = torch.nn.functional.pad(images[0].float() / 255, (2, 2, 2, 2))  # RandomCrop's zero fill
    crops = [
        v2.functional.normalize(padded[:, dy : dy + 8, dx : dx + 8], mean, std) for dy in range(5) for dx in range(5)
    ]
    assert any(torch.allclose(crop(images[0]), c, atol=1e-5) for c in crops)  # the candidates are v2's
    candidates = crops + ([c.flip(-1) for c in crops] if flip else [])
    hits = [next(i for i, c in enumerate(candidates) if torch.allclose(view, c, atol=1e-5)) for view in out]
    assert set(hits) == set(range(len(candidates)))  # 400 draws: every crop (and mirror) occurs


@pytest.mark.slow
def test_batch_augmented_loaders_resume_mid_epoch_exactly_and_differ_per_rank() -> None:
    def batches(rank: int, start_batch: int, workers: int) -> list[torch.Tensor]:
        train, _, _ = build_loaders(
            DataConfig(num_workers=workers, persistent_workers=False), seed=3, rank=rank, world_size=2
        )
        assert isinstance(train, BatchAugmentedLoader)
        set_epoch(train, 1, start_batch=start_batch)
        return [images for images, _ in train]

    full = batches(rank=0, start_batch=0, workers=0)
    for start, workers in ((4, 0), (5, 2)):
        resumed = batches(rank=0, start_batch=start, workers=workers)
        assert len(resumed) == len(full) - start
        assert all(torch.equal(a, b) for a, b in zip(full[start:], resumed))
    assert not torch.equal(full[0], batches(rank=1, start_batch=0, workers=0)[0])


def test_augmentations_only_the_per_sample_pipeline_has_keep_it() -> None:
    train, val, _ = build_loaders(DataConfig(auto_augment="trivialaugment"), seed=0)
    assert not isinstance(train, BatchAugmentedLoader) and train.dataset.transform is not None
    assert isinstance(val, BatchAugmentedLoader)
    images, _ = next(iter(train))
    assert images.shape == (64, 3, 32, 32) and images.dtype == torch.float32


# ----------------------------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize(
    "name, fixture, test_file",
    [
        ("cifar10", "cifar10_root", "cifar-10-batches-py/test_batch"),
        ("cifar100", "cifar100_root", "cifar-100-python/test"),
    ],
)
def test_cifar_pickles_load_pixel_exact(
    name: str, fixture: str, test_file: str, request: pytest.FixtureRequest
) -> None:
    root = request.getfixturevalue(fixture)
    cfg = from_yaml(name, root=str(root), batch_size=4, num_workers=0, augment=False)
    _, val, info = build_loaders(cfg, seed=0)
    with open(root / test_file, "rb") as f:
        test_batch = pickle.load(f, encoding="latin1")
    assert len(val.dataset) == len(test_batch["data"]) and info.num_classes == (10 if name == "cifar10" else 100)
    x, y = next(iter(val))
    mean, std = torch.tensor(info.mean)[:, None, None], torch.tensor(info.std)[:, None, None]
    expected = torch.from_numpy(test_batch["data"][:4]).reshape(4, 3, 32, 32).float() / 255
    assert torch.allclose(x * std + mean, expected, atol=1e-5)
    assert y.tolist() == test_batch["labels" if name == "cifar10" else "fine_labels"][:4]


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            "bytes keys",
            "test_batch: expected a pickled dict with keys 'data', 'labels', found a dict with keys b'data'",
        ),
        (
            "truncated",
            "data_batch_2 is not a readable CIFAR-10 python file (UnpicklingError: pickle data was truncated)",
        ),
        ("code", "data_batch_2 is not a readable CIFAR-10 python file (UnpicklingError: it asks to load posix.system"),
    ],
)
def test_a_cifar_file_in_another_format_is_named_with_what_it_holds(
    cifar10_root: Path, damage: str, message: str, tmp_path: Path
) -> None:
    folder = cifar10_root / "cifar-10-batches-py"
    if damage == "bytes keys":  # a Python 2 pickle read back without an encoding, then saved again
        batch = pickle.loads((folder / "test_batch").read_bytes(), encoding="latin1")
        (folder / "test_batch").write_bytes(pickle.dumps({key.encode(): value for key, value in batch.items()}))
    elif damage == "truncated":
        (folder / "data_batch_2").write_bytes((folder / "data_batch_2").read_bytes()[:200])
    else:  # a pickle that would run a command: refused before it can
        marker = tmp_path / "ran"
        (folder / "data_batch_2").write_bytes(pickle.dumps(_RunsCommand(f"touch {marker}")))
    with pytest.raises(ValueError) as err:
        build_loaders(DataConfig(name="cifar10", root=str(cifar10_root), batch_size=4), seed=0)
    assert (
        message in str(err.value)
        and "\n" not in str(err.value)
        and "official CIFAR-10 python archive" in str(err.value)
    )
    assert damage != "code" or not (tmp_path / "ran").exists()


class _RunsCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.slow
def test_more_workers_than_cores_is_said_once_in_the_runs_words(monkeypatch, caplog) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train, val, _ = build_loaders(
            DataConfig(
                name="fake",
                batch_size=4,
                train_size=16,
                val_size=8,
                image_size=8,
                num_workers=3,
                persistent_workers=False,
            ),
            seed=0,
        )
        next(iter(train)), next(iter(val))
    said = [r.getMessage() for r in caplog.records if "data.num_workers=3" in r.getMessage()]
    assert len(said) == 1 and "this process has 2 CPU cores" in said[0] and "kept at 3" in said[0]
    assert not [w for w in caught if "DataLoader will create" in str(w.message)]  # PyTorch's own, longer warning


def test_cifar_missing_files_name_the_path_and_the_fix(tmp_path: Path, cifar10_root: Path) -> None:
    empty = tmp_path / "nothing_here"
    with pytest.raises(FileNotFoundError, match="data.download") as err:
        build_loaders(DataConfig(name="cifar10", root=str(empty)), seed=0)
    assert str(empty / "cifar-10-batches-py") in str(err.value) and "\n" not in str(err.value)

    inner = cifar10_root / "cifar-10-batches-py"  # a common slip: the release folder itself as data.root
    with pytest.raises(
        FileNotFoundError,
        match=f"data.root is the folder that holds cifar-10-batches-py; use data.root={cifar10_root}$",
    ):
        build_loaders(DataConfig(name="cifar10", root=str(inner)), seed=0)

    (cifar10_root / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="data.download"):
        build_loaders(DataConfig(name="cifar10", root=str(cifar10_root), batch_size=4), seed=0)

    with pytest.raises(ValueError, match="data.root"):
        build_loaders(DataConfig(name="cifar100"), seed=0)
    with pytest.raises(ValueError, match="data.image_size"):
        build_loaders(DataConfig(name="cifar10", root=str(cifar10_root), image_size=64), seed=0)


# ---------------------------------------------------------------------------------------------- folders


def test_imagefolder_lists_classes_and_converts_to_rgb(imagefolder_root: Path) -> None:
    cfg = DataConfig(name="imagefolder", root=str(imagefolder_root), batch_size=4, image_size=16)
    train, val, info = build_loaders(cfg, seed=0)
    assert info.classes == ["ant", "bee", "cat"] and (len(train.dataset), len(val.dataset)) == (12, 12)
    assert sum(len(y) for _, y in val) == 12  # includes the greyscale PNGs, now 3-channel


def _folder_cfg(root: Path | None) -> DataConfig:
    return DataConfig(name="imagefolder", root=None if root is None else str(root), batch_size=2)


def test_imagefolder_errors_name_the_path_and_the_fix(tmp_path: Path, imagefolder_root: Path) -> None:
    with pytest.raises(ValueError, match="data.root is not set"):
        build_loaders(_folder_cfg(None), seed=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_loaders(_folder_cfg(tmp_path / "missing"), seed=0)

    empty = tmp_path / "empty"
    for split in ("train", "val"):
        for name in ("ant", "bee"):
            (empty / split / name).mkdir(parents=True)
    (empty / "train" / "ant" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"empty/train: 2 class folders without image files \(ant, bee\)"):
        build_loaders(_folder_cfg(empty), seed=0)

    (imagefolder_root / "val" / "cat").rename(imagefolder_root / "val" / "dog")
    with pytest.raises(ValueError, match=r"only in train: cat; only in val: dog"):
        build_loaders(_folder_cfg(imagefolder_root), seed=0)

    shutil.rmtree(imagefolder_root / "val")
    with pytest.raises(FileNotFoundError, match=r"val not found: data.root must hold"):
        build_loaders(_folder_cfg(imagefolder_root), seed=0)


def test_imagefolder_with_one_class_is_refused(imagefolder_root: Path) -> None:
    """It would otherwise train to 100 % top-1 without learning anything."""
    for split in ("train", "val"):
        for name in ("bee", "cat"):
            shutil.rmtree(imagefolder_root / split / name)
    message = (
        f"{imagefolder_root / 'train'} holds 1 class folder (ant); a classifier needs at least 2: "
        f"add class folders or fix data.root"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        build_loaders(_folder_cfg(imagefolder_root), seed=0)


# ------------------------------------------------------------------------------------------------- fake


def test_fake_images_are_a_function_of_their_index_and_class() -> None:
    cfg = DataConfig(name="fake", num_classes=10, train_size=40, val_size=20, image_size=16, batch_size=8)
    train, val, info = build_loaders(cfg, seed=0)
    again, _, _ = build_loaders(cfg, seed=1)
    (x3, y3), (x3_again, _) = train.dataset[3], again.dataset[3]
    assert torch.equal(x3, x3_again) and y3 == 3
    assert not torch.equal(train.dataset[4][0], x3) and not torch.equal(val.dataset[3][0], x3)
    assert len(train.dataset) == 40 and len(val.dataset) == 20 and info.num_classes == 10

    def similarity(a: int, b: int) -> float:
        return torch.cosine_similarity(train.dataset[a][0].flatten(), train.dataset[b][0].flatten(), dim=0).item()

    assert similarity(0, 10) > similarity(0, 11) + 0.2  # same class shares a template


@pytest.mark.parametrize("key, value", [("num_classes", 0), ("train_size", -3), ("val_size", 0)])
def test_fake_rejects_non_positive_sizes(key: str, value: int) -> None:
    with pytest.raises(ValueError, match=f"data.{key}={value} is invalid: set a positive integer or null"):
        build_loaders(DataConfig(name="fake", **{key: value}), seed=0)


# ------------------------------------------------------------------------------------- order and seeds


def _order(seed: int, epoch: int) -> list[int]:
    train, _, _ = build_loaders(DataConfig(name="fake", train_size=50, batch_size=5), seed=seed)
    set_epoch(train, epoch)
    return list(train.sampler)


def test_shuffle_depends_on_seed_and_epoch_only() -> None:
    assert _order(0, 3) == _order(0, 3)
    assert sorted(_order(0, 3)) == list(range(50))
    assert _order(0, 3) != _order(0, 4)
    assert _order(0, 3) != _order(1, 3)


@pytest.mark.slow
def test_resumed_epoch_reproduces_shuffle_and_worker_augmentation() -> None:
    cfg = DataConfig(batch_size=32, num_workers=2, persistent_workers=False)  # digits, augmented
    uninterrupted, _, _ = build_loaders(cfg, seed=7)
    epochs = []
    for epoch in range(3):
        set_epoch(uninterrupted, epoch)
        epochs.append(first_batches(uninterrupted, 2))
    resumed, _, _ = build_loaders(cfg, seed=7)
    set_epoch(resumed, 2)
    for (x, y), (x_ref, y_ref) in zip(first_batches(resumed, 2), epochs[2], strict=True):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    assert not torch.equal(epochs[1][0][0], epochs[2][0][0])


def test_start_batch_resumes_mid_epoch_with_the_remaining_batches() -> None:
    cfg = DataConfig(name="fake", train_size=50, batch_size=5, image_size=8)
    uninterrupted, _, _ = build_loaders(cfg, seed=3)
    set_epoch(uninterrupted, 1)
    full = list(uninterrupted)
    resumed, _, _ = build_loaders(cfg, seed=3)
    set_epoch(resumed, 1, start_batch=4)
    rest = list(resumed)
    assert len(resumed) == len(rest) == len(full) - 4
    for (x, y), (x_ref, y_ref) in zip(rest, full[4:], strict=True):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    set_epoch(resumed, 2)  # the next epoch is whole again
    assert len(list(resumed)) == len(full)
    with pytest.raises(ValueError, match="start_batch=11"):
        set_epoch(resumed, 2, start_batch=11)


class _RandomProbe(Dataset):
    """Returns what numpy and ``random`` give inside the worker, to check how workers are seeded."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([np.random.randint(1 << 30), random.randint(0, 1 << 30)])


def build_probe(cfg: DataConfig, *, with_train: bool = True) -> Splits:
    return Splits(_RandomProbe() if with_train else None, _RandomProbe(), ["a"], (0.0,) * 3, (1.0,) * 3)


@pytest.mark.slow
def test_workers_seed_numpy_and_random_per_worker_and_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BUILDERS, "probe", DatasetBuilder(f"{__name__}:build_probe"))
    cfg = DataConfig(name="probe", batch_size=4, num_workers=2, persistent_workers=False)

    def draws(epoch: int) -> list[torch.Tensor]:
        train, _, _ = build_loaders(cfg, seed=0)
        set_epoch(train, epoch)
        return [batch[0] for batch in first_batches(train, 2)]  # batch 0 from worker 0, batch 1 from worker 1

    first, again, other_epoch = draws(1), draws(1), draws(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[0], other_epoch[0])


# ----------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_validation_shards_cover_every_sample_exactly_once(world_size: int) -> None:
    cfg = DataConfig(name="fake", train_size=30, val_size=25, batch_size=4, eval_batch_size=4, image_size=8)
    seen, evaluated = [], 0
    for rank in range(world_size):
        _, val, _ = build_loaders(cfg, seed=0, rank=rank, world_size=world_size)
        seen += list(val.sampler)
        evaluated += sum(len(y) for _, y in val)
    assert sorted(seen) == list(range(25)) and evaluated == len(val.dataset) == 25


@pytest.mark.slow
def test_persistent_workers_serve_several_epochs() -> None:
    cfg = DataConfig(name="fake", train_size=70, val_size=30, batch_size=16, image_size=8, num_workers=2)
    train, val, _ = build_loaders(cfg, seed=0)
    assert train.persistent_workers
    for epoch in range(2):
        set_epoch(train, epoch)
        assert [len(y) for _, y in train] == [16] * 4  # the last partial batch is dropped
        assert [len(y) for _, y in val] == [16, 14]


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            {"name": "mnist"},
            "data.name='mnist' is unknown: choose one of cifar10, cifar100, digits, "
            "digits_cluttered, digits_scaled, fake, imagefolder, imagenet",
        ),
        ({"batch_size": 0}, "data.batch_size=0 is invalid"),
        ({"eval_batch_size": -1}, "data.eval_batch_size=-1 is invalid"),
        ({"image_size": 0}, "data.image_size=0 is invalid"),
        ({"num_workers": -1}, "data.num_workers=-1 is invalid"),
        ({"name": "imagenet", "val_resize": 0}, "data.val_resize=0 is invalid"),
    ],
)
def test_bad_settings_raise_value_errors_naming_the_key(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=re.escape(match)) as err:
        check_data_config(DataConfig(**overrides))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=re.escape(match)):
        build_loaders(DataConfig(**overrides), seed=0)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            {"num_classes": 5},
            "data.num_classes=5 is not used by data=digits (only data=fake takes it); remove the override",
        ),
        (
            {"name": "cifar10", "train_size": 100},
            "data.train_size=100 is not used by data=cifar10 "
            "(only data=digits_cluttered, data=digits_scaled, data=fake take it)",
        ),
        (
            {"name": "imagenet", "val_size": 10},
            "data.val_size=10 is not used by data=imagenet (only data=digits_cluttered",
        ),
        (
            {"name": "cifar100", "val_resize": 36},
            "data.val_resize=36 is not used by data=cifar100 (only data=imagefolder, data=imagenet take it)",
        ),
        ({"name": "fake", "val_resize": 36}, "data.val_resize=36 is not used by data=fake"),
        (
            {"root": "/data"},
            "data.root=/data is not used by data=digits "
            "(only data=cifar10, data=cifar100, data=imagefolder, data=imagenet take it)",
        ),
        ({"name": "fake", "root": "/data"}, "data.root=/data is not used by data=fake"),
        (
            {"name": "imagenet", "download": True},
            "data.download=true is not used by data=imagenet (only data=cifar10, data=cifar100 take it)",
        ),
        ({"download": True}, "data.download=true is not used by data=digits"),
    ],
)
def test_settings_the_dataset_would_ignore_are_rejected(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=re.escape(match)):
        check_data_config(DataConfig(**overrides))


def test_settings_each_dataset_reads_are_accepted() -> None:
    for cfg in [
        from_yaml("cifar10", download=True),
        from_yaml("imagenet", root="/data", val_resize=256),
        from_yaml("fake", num_classes=3, train_size=9, val_size=3),
        from_yaml("digits"),
    ]:
        check_data_config(cfg)


def test_settings_are_checked_before_anything_is_built(tmp_path: Path) -> None:
    cfg = DataConfig(name="imagefolder", root=str(tmp_path / "missing"), num_workers=-1)
    with pytest.raises(ValueError, match="data.num_workers=-1"):  # not FileNotFoundError for the root
        build_loaders(cfg, seed=0)


def test_batch_larger_than_the_training_split_is_rejected() -> None:
    with pytest.raises(ValueError, match="data.batch_size=2000 exceeds"):
        build_loaders(DataConfig(batch_size=2000), seed=0)


def test_bad_rank_is_rejected() -> None:
    with pytest.raises(ValueError, match="rank=2 with world_size=2"):
        build_loaders(DataConfig(), seed=0, rank=2, world_size=2)


@pytest.mark.parametrize("cores, expected", [({0, 1}, 2), (set(range(16)), 4)])
def test_a_recipes_worker_count_follows_the_machine_and_a_typed_one_is_kept(monkeypatch, cores, expected) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cores)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert compose_train("data=cifar10").data.num_workers == expected  # the recipe's 4, at most the cores
    assert compose_train("data=cifar10", "data.num_workers=3").data.num_workers == 3
