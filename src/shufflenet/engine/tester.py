"""``test(source, checkpoint)``: evaluate weights on a labelled folder, with a confusion-matrix PNG."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..data.preprocess import Preprocessing
from ..errors import UserError
from . import builders
from .checkpoint import load_training_state
from .config import Config, from_dict, load_config
from .distributed import init_runtime, shutdown
from .evaluate import evaluate
from .trainer import CorruptReporter


def test(
    source: str,
    checkpoint: str | Path,
    data: str | None = None,
    batch_size: int = 100,
    workers: int = 2,
    device: str = "auto",
    out: str | Path | None = None,
) -> dict:
    """Metrics of ``checkpoint`` (built as ``source``: a YAML recipe or a model name) on ``data``.

    ``checkpoint`` may also be an exported ``.onnx`` model (fp32 or INT8), run by ONNX Runtime."""
    checkpoint = Path(checkpoint)
    config = load_config(source) if source.endswith((".yaml", ".yml")) else None
    model, config = load_model(checkpoint, source, config)
    prep: Preprocessing = model.preprocessing
    dataset = builders.eval_dataset(_data_path(data, config), prep)
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
    class_names = list(dataset.classes)
    result["per_class"] = result["per_class"][: len(class_names)]
    png = Path(out or checkpoint.parent) / "confusion.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    from .plots import plot_confusion

    plot_confusion([row[: len(class_names)] for row in result["confusion"][: len(class_names)]], class_names, png)
    return {"model": getattr(model, "model_name", source), "checkpoint": str(checkpoint), **result,
            "class_names": class_names, "confusion_png": str(png)}


def load_model(checkpoint: Path, source: str, config: Config | None) -> tuple[nn.Module | Callable, Config | None]:
    """A training-state file of ``shufflenet train``, an ONNX export, or any weights file
    ``shufflenet.weights`` reads; modules come back in eval mode."""
    if not checkpoint.is_file():
        raise UserError(f"checkpoint not found: {checkpoint}")
    if checkpoint.suffix.lower() == ".onnx":
        from ..deploy import load_runtime

        return load_runtime(checkpoint, backend="onnxruntime"), config
    state = _training_state(checkpoint) if checkpoint.suffix in (".pt", ".pth") else None
    if state is not None:
        config = config or from_dict(state["config"])
        model = builders.build_training_model(config, state.get("class_names"), from_checkpoint=True)
        model.load_state_dict(state["model"])
        model.preprocessing = builders.preprocessing(config.data)
        return model.eval(), config
    from .. import models
    from ..weights import load_checkpoint

    spec = models.get_spec(config.model.name if config else source)
    return load_checkpoint(checkpoint, spec=spec).eval(), config


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
