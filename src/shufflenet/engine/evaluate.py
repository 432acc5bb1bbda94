"""Evaluation: loss, top-1/top-5, per-class accuracy and the confusion matrix, summed over ranks."""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch
from torch import nn

from .distributed import Runtime, all_reduce_sum


def autocast(device: torch.device, amp: str):
    if amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def to_input(images: torch.Tensor, normalize: nn.Module, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 batch -> normalised float batch on ``device`` (one transfer, then batched maths)."""
    images = normalize(images.to(device, non_blocking=True))
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    num_classes: int,
    normalize: nn.Module,
    runtime: Runtime,
    amp: str = "none",
    channels_last: bool = False,
    on_corrupt=None,
) -> dict:
    """Metrics of ``model`` (a module, or any callable batch -> logits such as an ONNX runtime) on
    every sample of ``loader`` (each rank holds a disjoint shard)."""
    if isinstance(model, nn.Module):
        model.eval()
    device = runtime.device
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, top-5 hits, skipped images
    start = time.perf_counter()
    for images, labels, _, corrupt in loader:
        if on_corrupt is not None:
            on_corrupt(corrupt)
        totals[2] += len(corrupt)
        if not len(labels):
            continue
        labels = labels.to(device)
        with autocast(device, amp):
            # .to: an ONNX runtime gives its logits on the CPU whatever device the labels are on
            logits = model(to_input(images, normalize, device, channels_last)).float().to(device)
        totals[0] += nn.functional.cross_entropy(logits, labels, reduction="sum")
        top5 = logits.topk(min(5, num_classes), dim=1).indices
        totals[1] += (top5 == labels[:, None]).any(1).sum()
        confusion.index_put_((labels, logits.argmax(1)), torch.ones_like(labels), accumulate=True)
    all_reduce_sum(confusion, runtime)
    all_reduce_sum(totals, runtime)
    seconds = time.perf_counter() - start
    return metrics_from(confusion.cpu(), totals[0].item(), totals[1].item(), int(totals[2].item()), seconds)


def metrics_from(confusion: torch.Tensor, loss_sum: float, top5_hits: float, skipped: int, seconds: float) -> dict:
    count = int(confusion.sum())
    per_class_total = confusion.sum(1)
    per_class = (confusion.diag() / per_class_total.clamp(min=1) * 100).tolist()
    return {
        "loss": loss_sum / max(count, 1),
        "top1": 100 * confusion.diag().sum().item() / max(count, 1),
        "top5": 100 * top5_hits / max(count, 1),
        "per_class": [acc if total else None for acc, total in zip(per_class, per_class_total.tolist())],
        "images": count,
        "skipped_images": skipped,
        "images_per_s": count / seconds if seconds > 0 else None,
        "confusion": confusion.tolist(),
    }
