"""PNG figures: training curves (loss, accuracy, lr per epoch) and the confusion matrix."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt


def plot_curves(history: list[dict], path: Path) -> None:
    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, accuracy_axis, lr_axis) = plt.subplots(1, 3, figsize=(15, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        _plot(loss_axis, history, epochs, key, label)
    for key, label in (("val_top1", "top-1"), ("val_top5", "top-5"), ("ema_top1", "EMA top-1")):
        _plot(accuracy_axis, history, epochs, key, label)
    _plot(lr_axis, history, epochs, "lr", "lr (end of epoch)")
    for axis, title in ((loss_axis, "loss"), (accuracy_axis, "val accuracy (%)"), (lr_axis, "learning rate")):
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _plot(axis, history: list[dict], epochs: list[int], key: str, label: str) -> None:
    points = [(e, row[key]) for e, row in zip(epochs, history) if row.get(key) is not None]
    if points:
        axis.plot(*zip(*points), marker="o", markersize=3, label=label)


def plot_confusion(confusion: list[list[int]], class_names: list[str], path: Path) -> None:
    size = max(4.0, 0.45 * len(class_names) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    image = axis.imshow(confusion, cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046)
    if len(class_names) <= 50:  # beyond that the labels are unreadable anyway
        ticks = range(len(class_names))
        axis.set_xticks(ticks, class_names, rotation=90)
        axis.set_yticks(ticks, class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title("confusion matrix")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
