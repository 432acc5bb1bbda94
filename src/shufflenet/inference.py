"""Classify images with any model: ``inference_model(model, inputs)``.

The model's own preprocessing metadata (resize, crop, mean/std, RGB/BGR) is applied, so the call
site never hard-codes it. Real-world photos are normalised first: EXIF rotation, 16-bit, CMYK,
palette and transparent images all become 8-bit RGB.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from .data.datasets import to_rgb
from .deploy.runtimes import Runtime, load_runtime
from .errors import UserError

ImageInput = str | Path | Image.Image | np.ndarray | torch.Tensor


def load_image(path: str | Path) -> Image.Image:
    """Decode an image file to upright RGB; any failure is a ``UserError`` naming the file.

    Images above ``PIL.Image.MAX_IMAGE_PIXELS`` are refused by Pillow's decompression-bomb guard
    (an error at twice the limit; the CLI also turns Pillow's warning at the limit into an error).
    """
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UserError(
            f"{path}: refused by the decompression-bomb guard ({error}); "
            "raise PIL.Image.MAX_IMAGE_PIXELS if the image is trusted"
        ) from None
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory") from None
    except UnidentifiedImageError:
        reason = "empty file" if Path(path).stat().st_size == 0 else "not an image (or an unsupported format)"
        raise UserError(f"{path}: {reason}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:  # truncated or corrupt data
        raise UserError(f"{path}: cannot decode image: {error}") from None


class Predictor:
    """A loaded model plus its preprocessing: image inputs in, top-k predictions out."""

    def __init__(
        self,
        model: str | Path | nn.Module,
        backend: str = "fast",
        device: str | None = None,
        topk: int = 5,
        threads: int | None = None,
        array_order: str = "RGB",
    ) -> None:
        if topk < 1:
            raise UserError(f"topk must be at least 1, got {topk}")
        if array_order not in ("RGB", "BGR"):
            raise UserError(f"array_order must be 'RGB' or 'BGR', got {array_order!r}")
        self.array_order = array_order
        self.runtime: Runtime = load_runtime(model, backend, device, threads)
        self.transform = self.runtime.preprocessing.transform()
        self.topk = topk

    def preprocess(self, item: ImageInput) -> torch.Tensor:
        """One image as a model input tensor (C, H, W).

        Paths, PIL images and HWC uint8 arrays (channels in ``array_order``) are decoded and
        transformed; a uint8 tensor (C, H, W) is transformed; a float tensor is taken as already
        preprocessed.
        """
        if isinstance(item, (str, Path)):
            return self.transform(load_image(item))
        if isinstance(item, Image.Image):
            return self.transform(to_rgb(item))
        if isinstance(item, np.ndarray):
            if item.dtype != np.uint8 or item.ndim not in (2, 3):
                raise UserError(f"numpy images must be uint8 HxW or HxWxC, got {item.dtype} {item.shape}")
            if self.array_order == "BGR" and item.ndim == 3 and item.shape[2] in (3, 4):
                item = item[..., [2, 1, 0, 3][: item.shape[2]]]  # BGR(A) -> RGB(A); fancy indexing copies
            return self.transform(to_rgb(Image.fromarray(item)))
        if isinstance(item, torch.Tensor):
            return self.transform(item) if item.dtype == torch.uint8 else item.float()
        raise UserError(f"cannot classify an input of type {type(item).__name__}")

    def predict(self, batch: torch.Tensor) -> list[dict[str, Any]]:
        """Top-k predictions for a preprocessed batch (N, C, H, W)."""
        scores = self.runtime(batch).float().softmax(1)
        top_scores, top_labels = scores.topk(min(self.topk, scores.shape[1]), dim=1)
        return [self._result(scores.tolist(), labels.tolist()) for scores, labels in zip(top_scores, top_labels)]

    def class_name(self, label: int) -> str:
        names = self.runtime.class_names
        return names[label] if names and label < len(names) else str(label)

    def _result(self, scores: list[float], labels: list[int]) -> dict[str, Any]:
        top = [{"label": label, "class": self.class_name(label), "score": score} for score, label in zip(scores, labels)]
        return {
            "pred_label": labels[0],
            "pred_score": scores[0],
            "pred_class": top[0]["class"],
            "pred_scores": top,
        }


def inference_model(
    model: str | Path | nn.Module,
    inputs: ImageInput | Sequence[ImageInput],
    topk: int = 5,
    backend: str = "fast",
    device: str | None = None,
    array_order: str = "RGB",
) -> dict[str, Any] | list[dict[str, Any]]:
    """Classify one image (returns a dict) or a list of images (returns a list of dicts).

    Args:
        model: a model name (``name`` or ``name.tag``), a checkpoint path, an ``.onnx`` file or
            an ``nn.Module`` (its ``preprocessing`` attribute is applied).
        inputs: a path, a PIL image, an HxWxC uint8 array (see ``array_order``), a uint8 (C, H, W) tensor, a
            preprocessed float (C, H, W) / (N, C, H, W) tensor, or a list of these.
        backend: ``"fast"`` (the default: ``deploy.fastpath``), ``"torch"``, ``"onnxruntime"`` or ``"openvino"``.
        array_order: the channel order of numpy inputs: ``"RGB"`` (PIL, torchvision) or ``"BGR"``
            (``cv2.imread``, and what mmpretrain's ``inference_model`` assumes for arrays).

    Each result has ``pred_label``, ``pred_score``, ``pred_class`` and ``pred_scores`` (the top-k
    as ``{"label", "class", "score"}``, best first).
    """
    predictor = Predictor(model, backend, device, topk, array_order=array_order)
    if isinstance(inputs, torch.Tensor) and inputs.dtype != torch.uint8 and inputs.ndim == 4:
        return predictor.predict(inputs.float())
    single = not isinstance(inputs, (list, tuple))
    items = [inputs] if single else list(inputs)
    results = predictor.predict(torch.stack([predictor.preprocess(item) for item in items]))
    return results[0] if single else results
