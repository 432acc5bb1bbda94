"""The README's main job end to end, shortened to one epoch."""

import json
from pathlib import Path

import pytest

from shufflenet.cli import main

REPO = Path(__file__).resolve().parents[1]
DATA = "demo/cifar10-subset"


def test_demo_writes_a_report(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the demo reads configs/ and demo/ from the repository root
    assert main(["demo", "--epochs", "1", "--work-dir", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "validation top-1" in report and "largest tensor rank | 4" in report
    for name in ("model.onnx", "confusion.png", "train/curves.png", "train/model.safetensors"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert f"report: {(tmp_path / 'report.md').resolve()}" in capsys.readouterr().out

    # The exported ONNX model evaluates through `shufflenet test` exactly like the PyTorch weights.
    torch_metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert main(["test", "shufflenet_v2_x0_5", str(tmp_path / "model.onnx"), "--data", DATA, "--json",
                 "--out", str(tmp_path / "onnx")]) == 0
    onnx_metrics = json.loads(capsys.readouterr().out)
    assert onnx_metrics["top1"] == pytest.approx(torch_metrics["top1"], abs=0.2)
    assert onnx_metrics["per_class"] == pytest.approx(torch_metrics["per_class"], abs=2.0)


def test_demo_outside_the_repository_says_where_to_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--epochs", "1"]) == 2
    assert "run the demo from the repository root" in capsys.readouterr().err


def test_sample_images_skips_non_images_searches_sub_folders_and_names_an_empty_class(tmp_path):
    from PIL import Image

    from shufflenet.cli.demo import sample_images
    from shufflenet.errors import UserError

    for name in ("cat/.DS_Store", "cat/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("not an image")
    (tmp_path / "dog" / "nested").mkdir(parents=True)
    for path in (tmp_path / "cat" / "b.png", tmp_path / "dog" / "nested" / "a.tif"):
        Image.new("RGB", (4, 4)).save(path)
    assert sample_images(tmp_path) == [tmp_path / "cat" / "b.png", tmp_path / "dog" / "nested" / "a.tif"]
    (tmp_path / "emu" / "empty").mkdir(parents=True)
    with pytest.raises(UserError, match="emu: no image files"):
        sample_images(tmp_path)


def test_zero_epochs_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--epochs", "0"])
    assert exit_info.value.code == 2 and "--epochs: must be at least 1, got 0" in capsys.readouterr().err
