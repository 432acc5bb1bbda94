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


def is_checkpoint_path(source: str | Path) -> bool:
    """Whether ``source`` names a file (existing or not) rather than a model: a model name has no
    suffix or slash, and a folder named like a model (a work dir, say) does not hide the model."""
    from ..models.registry import is_model_name

    text = str(source)
    if Path(text).is_file() or text.endswith(CHECKPOINT_SUFFIXES) or "/" in text:
        return True
    return Path(text).exists() and not is_model_name(text)


def load_model(source: str | Path, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """A ready model (eval mode) from a name (its default weights), ``name.tag`` or a checkpoint path."""
    from ..models.registry import get_model

    if is_checkpoint_path(source):
        return fit_classifier(load_checkpoint(source, **kwargs), num_classes).eval()
    return get_model(str(source), pretrained=True, num_classes=num_classes, **kwargs)


__all__ = ["FORMATS", "CheckpointError", "is_checkpoint_path", "list_pretrained", "load_checkpoint", "load_model", "save_checkpoint"]
