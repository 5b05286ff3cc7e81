"""Using a trained run: predict.py on image files, scripts/export.py's files loaded without this project, and
load_run from Python."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import preloaded
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

import predict
from analysis import export, load_run
from data.folder import decode
from gmconv import DynamicGMConv2d
from helpers import QUICK, folder_args, run_in_process


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """A digits run evaluated on all 360 validation images."""
    run_dir = tmp_path_factory.mktemp("use") / "run"
    run_in_process(run_dir, *QUICK, "trainer.limit_val_batches=null")
    return run_dir


@pytest.mark.slow
def test_predicting_the_exported_digits_reproduces_eval_only_exactly(digits_run, tmp_path, capsys):
    exported = preloaded.run("-m", "scripts.export_digits", str(tmp_path / "png"))
    assert exported.returncode == 0, exported.stderr
    evaluated = run_in_process(
        tmp_path / "eval", *QUICK, "trainer.limit_val_batches=null", "eval_only=true", f"ckpt={digits_run}"
    )
    assert predict.main([str(digits_run), str(tmp_path / "png" / "val"), "--out", str(tmp_path / "p.csv")]) == 0
    rows = (tmp_path / "p.csv").read_text().splitlines()[1:]
    correct = sum(Path(row.split(",")[0]).parent.name == row.split(",")[1] for row in rows)
    assert len(rows) == evaluated["eval_samples"] == 360
    assert 100 * correct / len(rows) == pytest.approx(evaluated["top1"], abs=1e-9)
    assert f"top-1 {evaluated['top1']:.2f}%" in capsys.readouterr().out


def _image(path: Path, size: int = 40, grey: bool = False) -> None:
    rng = np.random.default_rng(len(str(path)))
    pixels = rng.integers(0, 256, (size, size) if grey else (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.mark.slow
def test_predict_reads_folders_lists_and_awkward_files_as_training_does(tmp_path, capsys):
    root = tmp_path / "data"
    for split in ("train", "val"):
        for name in ("ant", "bee"):
            for i in range(4):
                _image(root / split / name / f"{i}.{'jpg' if i % 2 else 'png'}", grey=i == 3)
    run_dir = tmp_path / "run"
    run_in_process(run_dir, *folder_args(root, "data.num_workers=0"))
    inputs = tmp_path / "inputs"
    _image(inputs / "nested" / "deeper" / "a.png", size=57)
    _image(inputs / "b.JPG", size=23, grey=True)
    (inputs / ".DS_Store").write_bytes(b"\0\1")
    (inputs / "notes.txt").write_text("not an image")
    (inputs / "broken.png").write_bytes(b"not a png")
    listed = tmp_path / "list.txt"
    listed.write_text("data/val/ant/0.png\n\ndata/val/bee/1.jpg\n")
    args = [str(run_dir), str(inputs), str(listed), "--top-k", "9"]
    assert predict.main(args) == 2
    err = capsys.readouterr().err
    assert "cannot read image" in err and "broken.png" in err and "--skip-bad-images" in err
    assert predict.main([*args, "--skip-bad-images", "--out", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr()
    predictions = json.loads((tmp_path / "p.json").read_text())
    assert sorted(Path(p["file"]).name for p in predictions) == ["0.png", "1.jpg", "a.png", "b.JPG"]
    assert all(len(p["top"]) == 2 and abs(sum(t["probability"] for t in p["top"]) - 1) < 1e-5 for p in predictions)
    assert "skipped: " in out.err and "broken.png" in out.err and "2 other files ignored" in out.out


@pytest.mark.slow
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp: (tmp / "empty").mkdir() or [str(tmp / "empty")], "no image file in"),
        (lambda tmp: ["missing.png"], "missing.png does not exist"),
    ],
)
def test_predict_refuses_bad_input_in_one_line(digits_run, tmp_path, capsys, make, message):
    assert predict.main([str(digits_run), *make(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_predict_refuses_a_run_without_checkpoints(tmp_path, capsys):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    _image(tmp_path / "x.png")
    assert predict.main([str(tmp_path / "run"), str(tmp_path / "x.png")]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err


BLOCK_THE_PROJECT = """
import sys
for name in ("gmconv", "engine", "data", "models", "analysis", "predict", "train"):
    sys.modules[name] = None  # importing any of them now fails: the files must not need this project
"""

USE_THE_EXPORTS = (
    BLOCK_THE_PROJECT
    + """
import json, numpy as np, torch, onnxruntime
from PIL import Image
expected = np.load("expected.npy")
for folder in ("pt2", "onnx", "torchscript"):
    info = json.load(open(f"{folder}/model.json"))
    image = Image.open("image.png").convert("RGB")
    size = info["input"]["size"]
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    x = (np.asarray(image, dtype=np.float32) / 255 - info["input"]["mean"]) / info["input"]["std"]
    x = np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)
    path = f"{folder}/{info['file']}"
    if folder == "pt2":
        logits = torch.export.load(path).module()(torch.from_numpy(x)).detach().numpy()
    elif folder == "torchscript":
        logits = torch.jit.load(path)(torch.from_numpy(x)).detach().numpy()
    else:
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    print(folder, float(np.abs(logits - expected).max()), info["classes"][int(logits.argmax())])
"""
)


@pytest.mark.slow
def test_exported_models_run_without_this_project(digits_run, tmp_path):
    umask = export.current_umask()
    for fmt in ("pt2", "onnx", "torchscript"):
        assert (
            export.main(
                [str(digits_run), "--format", fmt, "--out", str(tmp_path / fmt)]
                + (["--dynamic-batch"] if fmt != "torchscript" else [])
            )
            == 0
        )
        assert (tmp_path / fmt).stat().st_mode & 0o777 == 0o777 & ~umask  # a folder like any the user makes
        files = sorted(p.name for p in (tmp_path / fmt).iterdir())
        assert files == sorted(["model.json", export.FORMATS[fmt]])  # one model file: ONNX without external data
        assert json.loads((tmp_path / fmt / "model.json").read_text())["files"] == [export.FORMATS[fmt]]
    run = load_run(digits_run)
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    Image.fromarray(image.numpy()).save(tmp_path / "image.png")
    with torch.no_grad():
        expected = run.model(run.transform(decode(str(tmp_path / "image.png")))[None])
    np.save(tmp_path / "expected.npy", expected.numpy())
    proc = subprocess.run(
        [sys.executable, "-I", "-c", USE_THE_EXPORTS],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict((line.split()[0], line.split()[1:]) for line in proc.stdout.splitlines())
    assert set(lines) == {"pt2", "onnx", "torchscript"}
    for fmt, (difference, name) in lines.items():
        assert float(difference) < 1e-4 and name == run.classes[int(expected.argmax())], fmt


@pytest.mark.slow
def test_a_folded_resnet_state_dict_loads_strictly_into_torchvisions_architecture(tmp_path):
    run_dir = tmp_path / "run"
    run_in_process(
        run_dir,
        "model=resnet18",
        "data=fake",
        "data.image_size=72",
        "data.num_classes=3",
        "data.train_size=8",
        "data.val_size=4",
        "data.batch_size=4",
        "trainer.epochs=1",
        "trainer.progress=false",
    )
    assert export.main([str(run_dir), "--format", "state_dict", "--out", str(tmp_path / "sd")]) == 0
    plain = torchvision.models.resnet18(num_classes=3)
    plain.load_state_dict(torch.load(tmp_path / "sd" / "model.pth", weights_only=True), strict=True)
    x = torch.randn(2, 3, 72, 72)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), load_run(run_dir).model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_export_refuses_bad_input_in_one_line(digits_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:  # argparse's own error, before anything is loaded
        export.main([str(tmp_path / "no such run"), "--format", "tflite"])
    assert refused.value.code == 2
    assert "argument --format: invalid choice: 'tflite' (choose from pt2, onnx, torchscript, state_dict)" in (
        capsys.readouterr().err.replace(
            "'pt2', 'onnx', 'torchscript', 'state_dict'", "pt2, onnx, torchscript, state_dict"
        )
    )
    dynamic = types.SimpleNamespace(model=nn.Sequential(DynamicGMConv2d(3, 4, 3)), label="resnet20-gmconv_dynamic")
    with pytest.raises(ValueError, match="export it with --no-fold"):
        export.exportable(dynamic, fold=True)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_load_run_gives_the_model_its_classes_preprocessing_and_numbers(digits_run):
    run = load_run(digits_run)
    assert run.classes == [str(i) for i in range(10)] and run.weights == "best"
    assert run.preprocessing.size == 32 and run.preprocessing.resize is None
    assert run.metrics["status"] == "completed" and run.metrics["top1"] >= 0
    image = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)  # any size: resized to the input size
    assert run.model(run.transform(image)[None]).shape == (1, 10)
    with pytest.raises(ValueError, match="no moving average"):
        load_run(digits_run, weights="ema")


@pytest.mark.slow
def test_predictions_go_to_the_terminal_without_out(digits_run, tmp_path, capsys):
    for name in ("a.png", "b.png"):
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / name)
    assert predict.main([str(digits_run), str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--top-k", "3"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(str(tmp_path))]
    assert [line.split()[0] for line in lines] == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    run = load_run(digits_run)
    for line in lines:  # file, then three (class, probability) pairs, most probable first
        fields = line.split()[1:]
        classes, probabilities = fields[0::2], [float(p) for p in fields[1::2]]
        assert len(classes) == 3 and set(classes) <= set(run.classes) and probabilities == sorted(probabilities)[::-1]
    with pytest.raises(SystemExit):
        predict.main([str(digits_run), str(tmp_path / "a.png"), "--device", "tpu"])
    assert "argument --device: invalid choice: 'tpu'" in capsys.readouterr().err
