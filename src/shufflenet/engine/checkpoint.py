"""Training-state checkpoints: everything ``--resume`` needs, written atomically.

A checkpoint is one ``torch.save`` file of tensors and plain values (loaded with
``weights_only=True``): model, optimizer, scheduler, grad scaler and EMA state dicts, the position
(epoch, optimizer steps done in that epoch, global step), the RNG states and the metrics history.
It is written to a temporary file in the same folder and renamed over the old one, so a kill at
any moment leaves either the old or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..files import atomic_destination
from . import builders
from .config import from_dict


def save_atomic(state: dict, path: Path) -> None:
    with atomic_destination(path) as partial:
        torch.save(state, partial)


def copy_atomic(source: Path, path: Path) -> None:
    with atomic_destination(path) as partial:
        shutil.copyfile(source, partial)


def load_training_state(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged or foreign file
        raise UserError(f"{path}: not a readable training checkpoint ({type(error).__name__}: {error})") from None
    check_training_state(state, path)
    return state


def check_training_state(state: object, path: Path) -> None:
    missing = [key for key in ("model", "position", "config") if not isinstance(state, dict) or key not in state]
    if missing:
        raise UserError(f"{path}: not a training-state checkpoint of `shufflenet train` (no {'/'.join(missing)})")


def training_weights(state: dict) -> tuple[dict[str, torch.Tensor], str]:
    """The weights a training state stands for, and which they are: the EMA's when the run kept one
    (``best.pt`` is chosen by the EMA's accuracy and ``model.safetensors`` holds the EMA), else the model's."""
    ema = state.get("ema")
    if ema is None:
        return state["model"], "model"
    # an AveragedModel's state dict: the averaged module's under "module.", and its update count
    return {k.removeprefix("module."): v for k, v in ema.items() if k != "n_averaged"}, "ema"


@dataclass
class Position:
    """Where a run stands; a training state stores it as a dict (missing fields count from 0)."""
    epoch: int = 0  # the epoch in progress (0-based)
    step_in_epoch: int = 0  # optimizer steps done in it
    global_step: int = 0


def model_from_training_state(state: dict, path: Path) -> nn.Module:
    """The network of a training state (eval mode), as ``model.safetensors`` would hold it: its
    ``training_weights``, in torchvision's channel order, with class names, preprocessing and source."""
    check_training_state(state, path)
    config = from_dict(state["config"])  # the run's own model settings: the weights fit no other
    model = builders.build_training_model(config, state.get("class_names"), from_checkpoint=True)
    weights, kind = training_weights(state)
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:  # a hand-edited state, or one of a version that built the model otherwise
        detail = str(error).splitlines()[1].strip()
        raise UserError(f"{path}: its weights do not fit the model its recipe builds ({detail[:160]}...)") from None
    model = builders.routed(model, "shuffle")
    model.preprocessing = builders.preprocessing(config.data)
    model.source = {"format": "shufflenet train", "file": path.name, "weights": kind}
    model.training_progress = training_progress(state)
    return model.eval()


def training_progress(state: dict) -> str:
    """How far a training state got, in words (``shufflenet info``)."""
    position, epochs = Position(**state["position"]), state["config"]["schedule"]["epochs"]
    best = f"; best val top-1 {state['best_top1']:.2f}" if state.get("best_top1") is not None else ""
    return f"{position.epoch} of {epochs} epochs done, {position.step_in_epoch} steps into the next{best}"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _as_tuple(value):  # torch.load gives lists back where random.getstate had tuples
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
