"""The benchmark scripts run as documented and print their verdicts (speed itself is not tested)."""

from __future__ import annotations

import re

import preloaded
import pytest

pytestmark = pytest.mark.slow  # every test here trains a run or starts a process

TINY = ["model=resnet20", "data=fake", "data.image_size=16", "data.batch_size=8", "data.train_size=64"]


def _script(name: str, *args: str) -> str:
    proc = preloaded.run("-m", f"scripts.bench.{name}", *args)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def test_bench_engine_reports_the_engine_against_a_bare_loop():
    out = _script("engine_overhead", "--rounds", "1", *TINY, "trainer.limit_train_batches=3")
    ratio = re.search(r"\| engine \(train_one_epoch \+ DataLoader\) \| [\d.]+ \| ([\d.]+) \|", out)
    assert ratio and float(ratio.group(1)) > 0, out
    assert "3 batches of 8" in out


def test_bench_data_names_what_limits_the_run():
    out = _script("loader_vs_model", "--workers", "0,1", "--batches", "2", "--warmup", "1", "--rounds", "1", *TINY)
    assert "| loader, 0 workers |" in out and "| loader, 1 workers |" in out, out
    assert re.search(r"limits this run", out), out


def test_bench_gmconv_compares_every_variant_with_the_standard_network():
    out = _script(
        "gmconv_speed",
        "--models",
        "resnet18",
        "--batch-size",
        "2",
        "--image-size",
        "32",
        "--reps",
        "2",
        "--warmup",
        "1",
        "--device",
        "cpu",
        "--profile",
        "1",
    )
    row = re.search(r"^resnet18 +([\d. |%]+)$", out, re.MULTILINE)
    assert row, out
    numbers = [float(v) for v in re.findall(r"[\d.]+", row.group(1))]
    assert len(numbers) == 11 and all(v > 0 for v in numbers[:10]), out  # 2 train + 4 infer timings, 5 ratios, spread
    assert "infer reused/std" in out and "ops std" in out
    assert re.search(r"^  +[+-][\d.]+  aten::mul$", out, re.MULTILINE), out  # the mask's product shows in the profile


def test_bench_jpeg_decoding_reports_every_configuration_against_the_baseline():
    out = _script("jpeg_decoding", "--images", "6", "--repeats", "1")
    rows = re.findall(r"^\| (torchvision|pil|simplejpeg) \| (full|reduced) \| (original|pre-resized) \|", out, re.M)
    assert len(rows) == 12, out
    assert re.search(r"^\| torchvision \| full \| original \| [\d,]+ \| 1\.00 \|", out, re.M), out
