"""Bundled weights: a ``<model>.<tag>.safetensors`` in the package is a pretrained tag, never downloaded.

A tiny V2 x0.5 (small_input, 10 classes) saved in a training run's layout is bundled with the
real tool function into a temporary folder that stands in for ``weights/bundled/``.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import shufflenet
from helpers import randomize_bn
from shufflenet.cli import main as cli_main
from shufflenet.data.preprocess import CIFAR10
from shufflenet.engine.config import Config, save_config
from shufflenet.errors import UserError
from shufflenet.weights import CheckpointError, hub, save_checkpoint

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
COMMAND = "shufflenet train configs/cifar10/shufflenet_v2_x0_5.yaml --work-dir run"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the network was touched")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(hub, "_open_url", refuse)


@pytest.fixture
def reference() -> torch.nn.Module:
    """The trained model: what the bundled tag must reproduce exactly."""
    torch.manual_seed(0)
    model = randomize_bn(shufflenet.get_model("shufflenet_v2_x0_5", num_classes=10, small_input=True))
    torch.nn.init.normal_(model.head.fc.weight, 0, 0.5)
    model.class_names, model.preprocessing = CIFAR_CLASSES, CIFAR10
    return model


def write_run(run_dir, model, summary: dict) -> None:
    """What ``shufflenet train`` leaves in a finished work dir (engine/trainer.py)."""
    config = Config()
    config.model.name, config.model.num_classes, config.model.small_input = model.model_name, 10, True
    config.data.eval.resize_size = config.data.eval.crop_size = 32
    config.data.eval.mean, config.data.eval.std = CIFAR10.mean, CIFAR10.std
    run_dir.mkdir()
    save_config(config, run_dir / "config.yaml")
    save_checkpoint(model, run_dir / "model.safetensors", {"best_top1": 41.0, "epochs": 3})
    (run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 3, "val_top1": summary.get("val_top1")}) + "\n")
    (run_dir / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def run_dir(tmp_path, reference):
    write_run(tmp_path / "run", reference, {"epochs": 3, "best_top1": 41.0, "epoch": 3, "val_top1": 40.5, "val_top5": 88.25,
                                                  "final_top1": 40.5, "final_top5": 88.25})
    return tmp_path / "run"


@pytest.fixture
def bundled(tmp_path, monkeypatch):
    folder = tmp_path / "bundled"
    folder.mkdir()
    monkeypatch.setattr(hub, "BUNDLED_DIR", folder)
    return folder


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def test_a_bundled_run_is_a_tag_that_loads_exactly(run_dir, bundled, reference):
    info = hub.bundle_run(run_dir, "cifar10", COMMAND)
    assert info.path == bundled / "shufflenet_v2_x0_5.cifar10.safetensors"
    assert (info.top1, info.top5, info.dataset, info.url) == (40.5, 88.25, "CIFAR-10", "bundled")
    with safe_open(str(info.path), framework="pt") as f:
        meta = f.metadata()
    assert meta["recipe"] == (run_dir / "config.yaml").read_text() and meta["command"] == COMMAND
    assert meta["epochs"] == "3" and len(meta["trained"]) == 10  # YYYY-MM-DD

    tags = [t.full_name for t in hub.list_pretrained("shufflenet_v2_x0_5")]
    assert tags[0] == "shufflenet_v2_x0_5.tv_in1k" and tags[-1] == "shufflenet_v2_x0_5.cifar10"  # default unchanged
    assert hub.get_tag("shufflenet_v2_x0_5").tag == "tv_in1k"
    x = torch.randn(2, 3, 32, 32)
    for model in (shufflenet.get_model("shufflenet_v2_x0_5.cifar10", pretrained=True),
                  shufflenet.get_model("shufflenet_v2_x0_5", pretrained="cifar10"),
                  shufflenet.get_model("shufflenet_v2_x0_5", pretrained="shufflenet_v2_x0_5.cifar10")):  # `--pretrained NAME.TAG`
        assert torch.equal(logits(model, x), logits(reference, x))
        assert model.class_names == CIFAR_CLASSES and model.preprocessing == CIFAR10
        assert model.stem.conv.stride == (1, 1) and model.source["tag"] == "shufflenet_v2_x0_5.cifar10"
    # without weights the tag still fixes the architecture (timm's name.tag), class count included
    bare = shufflenet.get_model("shufflenet_v2_x0_5.cifar10")
    assert bare.stem.conv.stride == (1, 1) and bare.head.fc.out_features == 10
    assert bare.preprocessing == CIFAR10  # `bench` and `export` size their input by it: 32 px, not 224
    assert shufflenet.get_model("shufflenet_v2_x0_5.cifar10", num_classes=3).head.fc.out_features == 3
    with pytest.raises(UserError, match=re.escape("unknown tag shufflenet_v2_x0_5.nope; available: tv_in1k")):
        shufflenet.get_model("shufflenet_v2_x0_5", pretrained="shufflenet_v2_x0_5.nope")


def test_cli_lists_and_predicts_with_the_bundled_tag(run_dir, bundled, reference, tmp_path, capsys):
    hub.bundle_run(run_dir, "cifar10", COMMAND)
    assert cli_main(["list", "--pretrained", "shufflenet_v2_x0_5*"]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if ".cifar10" in row)
    assert line.split() == ["shufflenet_v2_x0_5.cifar10", "CIFAR-10", "40.5", "88.25", "bundled"]
    assert cli_main(["info", "shufflenet_v2_x0_5", "--input-size", "32"]) == 0
    assert "cifar10 (CIFAR-10) 40.5" in capsys.readouterr().out

    image = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "img.png")
    assert cli_main(["predict", "shufflenet_v2_x0_5.cifar10", str(tmp_path / "img.png"), "--backend", "torch", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    expected = logits(reference, CIFAR10.transform()(image).unsqueeze(0)).softmax(1)[0]
    assert result["pred_label"] == expected.argmax().item()
    assert result["pred_class"] == CIFAR_CLASSES[result["pred_label"]]
    assert result["pred_score"] == pytest.approx(expected.max().item(), abs=1e-5)


def test_bundling_can_re_evaluate_on_a_folder(run_dir, bundled, reference, tmp_path):
    """--data: the stored accuracy is measured by shufflenet test, here on one image per class."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    for name, image in zip(CIFAR_CLASSES, images):
        (tmp_path / "val" / name).mkdir(parents=True)
        Image.fromarray(image).save(tmp_path / "val" / name / "0.png")
    predictions = logits(reference, torch.stack([CIFAR10.transform()(image) for image in images]))
    top5 = predictions.topk(5, 1).indices
    expected_top1 = 100 * (predictions.argmax(1) == torch.arange(10)).float().mean().item()
    expected_top5 = 100 * (top5 == torch.arange(10)[:, None]).any(1).float().mean().item()
    info = hub.bundle_run(run_dir, "cifar10", COMMAND, data=str(tmp_path / "val"))
    assert (info.top1, info.top5) == (round(expected_top1, 2), round(expected_top5, 2))


def test_bundling_refuses_unfinished_runs_and_overwrites(run_dir, bundled, reference, tmp_path):
    hub.bundle_run(run_dir, "cifar10", COMMAND)
    with pytest.raises(UserError, match="exists; pass --force"):
        hub.bundle_run(run_dir, "cifar10", COMMAND)
    assert hub.bundle_run(run_dir, "cifar10", "another command", force=True).top1 == 40.5
    with pytest.raises(CheckpointError, match="already a download tag"):
        hub.bundle_run(run_dir, "tv_in1k", COMMAND)
    (run_dir / "summary.json").unlink()
    with pytest.raises(UserError, match=re.escape("not a finished training run: it has no summary.json")):
        hub.bundle_run(run_dir, "cifar10", COMMAND, force=True)
    ema = {"epochs": 3, "val_top1": 40.5, "val_top5": 88.25, "ema_top1": 42.0, "ema_top5": 90.0, "final_top1": 42.0, "final_top5": 90.0}
    write_run(tmp_path / "ema_run", reference, ema)  # model.safetensors holds the EMA: its accuracy, not the raw weights'
    tag = hub.bundle_run(tmp_path / "ema_run", "cifar10_ema", COMMAND)
    assert (tag.top1, tag.top5) == (42.0, 90.0)
    write_run(tmp_path / "old_run", reference, {"epochs": 3, "val_top1": 40.5, "val_top5": 88.25, "ema_top1": 42.0})
    with pytest.raises(UserError, match="no accuracy of the saved weights; re-evaluate with --data DIR"):
        hub.bundle_run(tmp_path / "old_run", "cifar10_old", COMMAND)


def test_broken_files_are_skipped_with_a_warning(bundled, reference, caplog, capsys):
    (bundled / "shufflenet_v2_x0_5.garbled.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    save_checkpoint(reference, bundled / "shufflenet_v2_x0_5.nometa.safetensors")  # no top1/top5/dataset
    save_checkpoint(reference, bundled / "shufflenet_v2_x1_0.other.safetensors", {"top1": 1, "top5": 2, "dataset": "d"})
    save_checkpoint(reference, bundled / "shufflenet_v2_x0_5.badnumber.safetensors",
                    {"top1": "high", "top5": 2, "dataset": "d"})
    with caplog.at_level(logging.WARNING, logger="shufflenet.weights.hub"):
        assert hub.bundled_tags() == []
        assert cli_main(["list", "--pretrained"]) == 0
    warnings = "\n".join(r.getMessage() for r in caplog.records)
    assert "garbled.safetensors: not a readable safetensors file" in warnings
    assert "nometa.safetensors: metadata lacks top1, top5, dataset" in warnings
    assert "other.safetensors: holds shufflenet_v2_x0_5 weights, not shufflenet_v2_x1_0" in warnings
    assert "badnumber.safetensors: malformed metadata" in warnings
    assert ".nometa" not in capsys.readouterr().out
    with pytest.raises(UserError, match=re.escape("unknown tag shufflenet_v2_x0_5.nometa")):
        shufflenet.get_model("shufflenet_v2_x0_5.nometa", pretrained=True)


SHIPPED = sorted(hub.BUNDLED_DIR.glob("*.safetensors"))

if SHIPPED:  # defined only when the package ships weights: an empty parameter set would report a skip

    @pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
    def test_shipped_weights_load_with_ten_outputs(path):
        info = hub.read_bundled_tag(path)
        model = shufflenet.get_model(info.full_name, pretrained=True)
        size = info.preprocessing.crop_size
        assert logits(model, torch.randn(1, 3, size, size)).shape == (1, 10)
        assert len(model.class_names) == 10 and model.preprocessing == info.preprocessing

    @pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
    def test_shipped_weights_score_their_stored_accuracy_on_the_shipped_val_images(path, tmp_path, capsys):
        """The 500 val images in demo/ are CIFAR-10 val images, never trained on: the shipped tag,
        through its own preprocessing, must score what its metadata claims (±5 points, ~4 sigma)."""
        info = hub.read_bundled_tag(path)
        val = Path(__file__).parents[1] / "demo" / "cifar10-subset" / "val"
        assert cli_main(["test", info.full_name, "--data", str(val), "--workers", "0", "--out", str(tmp_path), "--json"]) == 0
        result = json.loads(capsys.readouterr().out)  # no CHECKPOINT: the tag's own weights
        assert result["checkpoint"] == info.full_name and result["images"] == 500
        assert abs(result["top1"] - info.top1) < 5, (result["top1"], info.top1)
