"""Helpers shared by the test modules: tiny training data from the shipped CIFAR-10 subset, the CLI,
weight comparison, models with randomised BN (pytest puts this folder on sys.path)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from shufflenet import get_model
from shufflenet.cli import main
from shufflenet.data.preprocess import Preprocessing

SUBSET = Path(__file__).resolve().parents[1] / "demo" / "cifar10-subset"

TINY = """
model: {name: shufflenet_v2_x0_5, num_classes: 2}  # ImageNet stem: 32 px -> 1x1 at the end, fast
data:
  num_workers: 0
  augment: {crop: pad, crop_size: 32, padding: 4}
  eval: {resize_size: 32, crop_size: 32}
optim: {lr: 0.05, base_batch_size: 8, weight_decay: 5.0e-4}
schedule: {epochs: 2, warmup_epochs: 0.5}
train: {batch_size: 8, seed: 3, log_every_steps: 1}
"""


def make_folder(root: Path, classes: tuple[str, ...], train: int, val: int) -> Path:
    """The first ``train``/``val`` images of each class of the shipped subset."""
    for split, count in (("train", train), ("val", val)):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for image in sorted((SUBSET / split / name).iterdir())[:count]:
                shutil.copy(image, root / split / name / image.name)
    return root


def cli(*args: object) -> int:
    return main([str(a) for a in args])


def final_weights(work_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(work_dir / "model.safetensors")


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= atol, f"largest weight difference {worst}"


def randomize_bn(model: torch.nn.Module) -> torch.nn.Module:
    """BN statistics and affine parameters far from a fresh init's, so that a wrongly paired or
    wrongly folded BN shows in the logits. Returns the model in eval mode."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def randomised(name: str, size: int = 64, **kwargs) -> torch.nn.Module:
    """A registered model with randomised BN and logits of order 10, preprocessing at ``size`` px."""
    torch.manual_seed(0)
    model = randomize_bn(get_model(name, **kwargs))
    torch.nn.init.normal_(model.head.fc.weight, 0, 0.5)
    model.preprocessing = Preprocessing(crop_size=size, resize_size=size + 8)
    return model
