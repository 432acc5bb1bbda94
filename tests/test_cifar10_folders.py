"""tools/cifar10_folders.py writes the layout and the JPEG encoding the CIFAR recipes were measured on
(no download here: a stand-in dataset of arrays goes through the tool's writer)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image, JpegImagePlugin

from shufflenet.data.datasets import ImageDataset

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["airplane", "automobile", "bird"]


def load_tool():
    spec = importlib.util.spec_from_file_location("cifar10_folders", REPO / "tools" / "cifar10_folders.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_folders_match_the_measured_layout_and_encoding(tmp_path):
    rng = np.random.default_rng(0)
    labels = [0, 2, 0, 1, 0, 2]
    images = [(Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)), label) for label in labels]
    assert load_tool().write_split(images, CLASSES, tmp_path / "val", per_class=2) == 5  # the third airplane is left out

    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jpg")) == [
        "val/airplane/0000.jpg", "val/airplane/0001.jpg", "val/automobile/0000.jpg", "val/bird/0000.jpg", "val/bird/0001.jpg"]
    written = Image.open(tmp_path / "val" / "bird" / "0001.jpg")
    reference = Image.open(REPO / "demo" / "cifar10-subset" / "val" / "bird" / "0000.jpg")  # from the measured data
    assert written.quantization == reference.quantization and written.size == reference.size == (32, 32)
    assert JpegImagePlugin.get_sampling(written) == JpegImagePlugin.get_sampling(reference)  # 4:2:0
    assert ImageDataset.from_path(tmp_path / "val", None).classes == CLASSES
