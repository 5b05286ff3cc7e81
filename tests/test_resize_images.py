"""scripts/resize_images (data/resized_copy.py): a pre-resized copy that training reads unchanged, resumable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_images

from data import DataConfig, build_loaders
from data.resized_copy import main


def _photo(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(load_sample_images().images[1]).resize((width, height)).save(path, quality=95)


def _tree(root: Path) -> None:
    """Two classes per split: a large JPEG, a small one, a large PNG; plus an unreadable JPEG and non-images."""
    for split in ("train", "val"):
        for name in ("a", "b"):
            folder = root / split / name
            _photo(folder / "large.jpg", 800, 600)
            _photo(folder / "nested" / "small.JPEG", 300, 200)
            Image.fromarray(np.zeros((500, 400, 3), np.uint8)).save(folder / "large.png")
    (root / "train/a/broken.jpg").write_bytes(b"not a jpeg")
    (root / "train/a/.DS_Store").write_bytes(b"")
    (root / "train/a/readme.txt").write_text("notes")


def test_the_copy_keeps_the_tree_resizes_large_images_and_names_unreadable_ones(tmp_path: Path, capsys) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _tree(src)
    assert main([str(src), str(dst), "--max-short-side", "256", "--quality", "85", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert f"unreadable, left out: {src / 'train/a/broken.jpg'}" in out
    assert "8 resized, 4 copied unchanged, 0 already there, 1 unreadable" in out
    with Image.open(dst / "train/a/large.jpg") as image:
        assert image.size == (341, 256) and image.format == "JPEG"
    with Image.open(dst / "val/b/large.png") as image:
        assert image.size == (256, 320) and image.format == "PNG"
    assert (dst / "val/b/nested/small.JPEG").read_bytes() == (src / "val/b/nested/small.JPEG").read_bytes()
    assert sorted(p.name for p in (dst / "train/a").iterdir()) == ["large.jpg", "large.png", "nested"]
    cfg = DataConfig(name="imagefolder", root=str(dst), batch_size=2, image_size=64)
    train, val, info = build_loaders(cfg, seed=0)
    assert next(iter(train))[0].shape == (2, 3, 64, 64) and info.classes == ["a", "b"]


def test_a_rerun_after_a_kill_writes_only_what_is_missing(tmp_path: Path, capsys) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _tree(src)
    args = [str(src), str(dst), "--max-short-side", "256", "--workers", "1"]
    main(args)
    done = dst / "val/a/large.jpg"
    done.unlink()  # killed while writing it: only its hidden partial file was there
    (dst / "val/a/.large.jpg.partial").write_bytes(b"half a file")
    kept = (dst / "train/b/large.jpg").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    assert "1 resized, 0 copied unchanged, 11 already there" in capsys.readouterr().out
    assert Image.open(done).size == (341, 256) and (dst / "train/b/large.jpg").stat().st_mtime_ns == kept
    assert not (dst / "val/a/.large.jpg.partial").exists()


def test_bad_arguments_exit_2_with_the_fix(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path), str(tmp_path / "dst")]) == 2
    assert "holds neither train/ nor val/" in capsys.readouterr().err
    _tree(tmp_path / "src")
    assert main([str(tmp_path / "src"), str(tmp_path / "src")]) == 2
    assert "give the copy its own folder" in capsys.readouterr().err
