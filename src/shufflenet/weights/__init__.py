"""Checkpoint interop: every public ShuffleNet checkpoint loads, exactly, and saves as safetensors.

>>> model = load_model("shufflenet_v2_x1_0.tv_in1k")          # downloads once, then offline
>>> model = load_model("ShuffleNetV1_g8_0.5x.pth.tar")         # format and variant detected
>>> save_checkpoint(model, "snet.safetensors")                 # weights + architecture + preprocessing
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .checkpoint import load_checkpoint, save_checkpoint
from .formats import FORMATS, CheckpointError
from .hub import fit_classifier, list_pretrained

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".safetensors", ".ckpt", ".pkl", ".bin")


def load_model(source: str | Path, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """A ready model (eval mode) from a name (its default weights), ``name.tag`` or a checkpoint path."""
    from ..models.registry import get_model

    text = str(source)
    if Path(text).is_file() or text.endswith(CHECKPOINT_SUFFIXES) or "/" in text:
        return fit_classifier(load_checkpoint(text, **kwargs), num_classes).eval()
    return get_model(text, pretrained=True, num_classes=num_classes, **kwargs)


__all__ = ["FORMATS", "CheckpointError", "list_pretrained", "load_checkpoint", "load_model", "save_checkpoint"]
