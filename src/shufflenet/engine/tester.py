"""``test(source, checkpoint)``: evaluate weights on a labelled folder, with a confusion-matrix PNG."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..data.datasets import ImageDataset
from ..data.preprocess import Preprocessing
from ..errors import UserError
from ..files import make_folder
from ..weights import is_checkpoint_path
from . import builders
from .checkpoint import load_training_state, model_from_training_state
from .config import Config, from_dict, load_config
from .distributed import init_runtime, shutdown
from .evaluate import evaluate
from .trainer import CorruptReporter


def test(
    source: str,
    checkpoint: str | Path | None = None,
    data: str | None = None,
    batch_size: int = 100,
    workers: int = 2,
    device: str = "auto",
    out: str | Path | None = None,
) -> dict:
    """Metrics of ``checkpoint`` (built as ``source``: a YAML recipe or a model name) on ``data``.

    ``checkpoint`` may also be an exported ``.onnx`` model (fp32 or INT8), run by ONNX Runtime; without
    it, ``source``'s weights are scored (``name.tag`` picks them, or ``source`` is a weights file) and ``out``
    defaults to runs/test/SOURCE (for a file, its folder)."""
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    config = load_config(source) if source.endswith((".yaml", ".yml")) else None
    model, config = load_model(checkpoint, source, config)
    prep: Preprocessing = model.preprocessing
    path = _data_path(data, config)
    folder = builders.eval_dataset(path, prep)
    dataset = _labelled_as_the_model(folder, model, path)
    num_classes = _output_classes(model, prep)
    if len(dataset.classes) > num_classes:
        raise UserError(f"the data has {len(dataset.classes)} classes but the model only {num_classes} outputs")
    runtime = init_runtime(device)
    try:
        if isinstance(model, nn.Module):
            model.to(runtime.device)
        loader = builders.eval_loader(dataset, batch_size, runtime, workers)
        reporter = CorruptReporter(strict=False, runtime=runtime)
        result = evaluate(model, loader, num_classes, builders.normalizer(prep, runtime.device), runtime, on_corrupt=reporter)
    finally:
        shutdown()
    if not result["images"]:
        raise UserError(f"none of the {result['skipped_images']} images in {path} could be read")
    result = _for_the_folder_classes(result, folder.classes, dataset.classes)
    weights_file = checkpoint or (Path(source) if is_checkpoint_path(source) else None)
    png = Path(out or (weights_file.parent if weights_file else Path("runs", "test", source))) / "confusion.png"
    make_folder(png.parent)
    from .plots import plot_confusion

    plot_confusion(result["confusion"], result["class_names"], png)
    weights = (getattr(model, "source", None) or {}).get("weights")  # "ema" or "model" for a training state
    return {"model": getattr(model, "model_name", source), "checkpoint": str(checkpoint or source), "weights": weights, **result,
            "confusion_png": str(png)}


def load_model(checkpoint: Path | None, source: str, config: Config | None) -> tuple[nn.Module | Callable, Config | None]:
    """A training-state file of ``shufflenet train`` (its EMA weights when it has them), an ONNX
    export, any weights file ``shufflenet.weights`` reads, or (no file) the model's pretrained weights;
    modules come back in eval mode."""
    if checkpoint is None:
        if config is not None:
            raise UserError(f"{source} is a recipe: give the CHECKPOINT to evaluate with it")
        from ..weights import load_model as load_weights

        return load_weights(source), None
    if not checkpoint.is_file():
        missing = f"{checkpoint} is a folder; give a checkpoint file" if checkpoint.is_dir() else f"checkpoint not found: {checkpoint}"
        raise UserError(missing)
    if checkpoint.suffix.lower() == ".onnx":
        from ..deploy import load_runtime

        return load_runtime(checkpoint, backend="onnxruntime"), config
    state = _training_state(checkpoint) if checkpoint.suffix in (".pt", ".pth") else None
    from .. import models

    spec = models.get_spec(config.model.name if config else source)
    if state is not None:
        trained = models.get_spec(state["config"]["model"]["name"])
        if trained.name != spec.name:
            raise UserError(f"{checkpoint} is a training state of {trained.name}, not of {spec.name}")
        return model_from_training_state(state, checkpoint), config or from_dict(state["config"])
    from ..weights import load_checkpoint

    return load_checkpoint(checkpoint, spec=spec).eval(), config


def _labelled_as_the_model(dataset: ImageDataset, model: nn.Module | Callable, path: Path) -> ImageDataset:
    """Labels are the model's class indices, found by name: a folder may hold only some of its classes.
    Folders named otherwise than the model's classes (ImageNet's synset ids, its category names) keep their order."""
    names = getattr(model, "class_names", None)
    if not names or not set(dataset.classes) & set(names):
        return dataset
    return builders.relabel(dataset, names, path, "the model's")


def _for_the_folder_classes(result: dict, folder_classes: list[str], classes: list[str]) -> dict:
    """Per-class accuracy and the confusion matrix for the classes the folder holds, by name."""
    index = {name: i for i, name in enumerate(classes)}
    kept = [index[name] for name in folder_classes]
    confusion = [[result["confusion"][row][column] for column in kept] for row in kept]
    per_class = [result["per_class"][i] for i in kept]
    return {**result, "per_class": per_class, "confusion": confusion, "class_names": list(folder_classes)}


def _output_classes(model: nn.Module | Callable, prep: Preprocessing) -> int:
    """Number of logits, from one forward pass (the same for a module and an ONNX runtime)."""
    with torch.no_grad():
        return model(torch.zeros(1, 3, prep.crop_size, prep.crop_size)).shape[1]


def _training_state(path: Path) -> dict | None:
    try:
        return load_training_state(path)
    except UserError:  # not ours: the weights loader says what it is
        return None


def _data_path(data: str | None, config: Config | None) -> Path:
    if data is not None:
        root = Path(data)
        return root / "val" if (root / "val").is_dir() else root
    if config is not None:
        return builders.split_paths(config.data)[1]
    raise UserError("no data: pass --data DIR (a folder of class sub-folders, or one holding val/)")
