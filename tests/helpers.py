"""Shared test fixtures that build models (pytest puts this folder on sys.path)."""

from __future__ import annotations

import torch

from shufflenet import get_model
from shufflenet.data.preprocess import Preprocessing


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
