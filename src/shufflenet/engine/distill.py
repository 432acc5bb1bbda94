"""Knowledge distillation (Hinton et al. 2015): the student also learns its teachers' softened predictions.

The teachers read exactly the student's input, after augmentation and MixUp/CutMix (the "consistent
teaching" of Beyer et al. 2022), re-normalised to their own preprocessing. Several teachers teach as
an ensemble: the average of their softened probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.preprocess import Preprocessing
from ..errors import UserError
from .builders import first_names
from .config import DistillConfig


class Teacher(nn.Module):
    """A frozen model fed the student's normalised input, re-normalised to the teacher's mean, std
    and channel order (the identity when both preprocess alike)."""

    def __init__(self, model: nn.Module, student: Preprocessing) -> None:
        super().__init__()
        from ..deploy.fastpath import optimize  # the exact inference rewrite: BN folded, shuffles removed

        self.model = optimize(model).requires_grad_(False)
        own = getattr(model, "preprocessing", None) or student
        self.renormalize = (own.mean, own.std) != (student.mean, student.std)
        self.swap_channels = own.channel_order != student.channel_order

        def rgb(values: tuple[float, ...]) -> torch.Tensor:  # per channel, in the student's channel order
            tensor = torch.tensor(values).view(1, 3, 1, 1)
            return tensor.flip(1) if student.channel_order == "BGR" else tensor

        self.register_buffer("scale", rgb(student.std) / rgb(own.std))
        self.register_buffer("shift", (rgb(student.mean) - rgb(own.mean)) / rgb(own.std))

    @torch.no_grad()
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.renormalize:
            inputs = inputs * self.scale + self.shift
        return self.model(inputs.flip(1) if self.swap_channels else inputs)


class DistillationLoss(nn.Module):
    """``(1 - alpha) * label_loss + alpha * T^2 * KL(teachers_T || student_T)``, where ``_T`` is the
    softmax at temperature T; the T^2 keeps the soft term's gradients at the scale of the hard one."""

    def __init__(self, teachers: Sequence[Teacher], alpha: float, temperature: float) -> None:
        super().__init__()
        self.teachers = nn.ModuleList(teachers)
        self.alpha, self.temperature = alpha, temperature

    def forward(self, logits: torch.Tensor, inputs: torch.Tensor, label_loss: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        target = torch.stack([(teacher(inputs).float() / t).softmax(1) for teacher in self.teachers]).mean(0)
        soft = F.kl_div((logits / t).log_softmax(1), target, reduction="batchmean") * t * t
        return (1 - self.alpha) * label_loss + self.alpha * soft


def build_distillation(distill: DistillConfig, class_names: Sequence[str], student: Preprocessing,
                       device: torch.device, channels_last: bool) -> DistillationLoss | None:
    """The loss of ``distill`` for a student of ``class_names``, or None when it names no teachers."""
    if not distill.teachers:
        return None
    from ..weights import load_model

    teachers = []
    for source in distill.teachers:
        model = load_model(source)
        _check_classes(model, source, class_names)
        teachers.append(Teacher(model, student))
    layout = torch.channels_last if channels_last else torch.preserve_format
    return DistillationLoss(teachers, distill.alpha, distill.temperature).to(device, memory_format=layout)


def _check_classes(model: nn.Module, source: str, class_names: Sequence[str]) -> None:
    """A teacher must predict the student's classes in the same order: its class count must match,
    and so must its class names where they share any with the training data's folders."""
    outputs, names = model.head.fc.out_features, getattr(model, "class_names", None)
    same_names = names is None or tuple(names) == tuple(class_names) or not set(names) & set(class_names)
    if outputs != len(class_names) or not same_names:
        theirs = f" ({first_names(names, 5)})" if names else ""
        raise UserError(f"distill.teachers: {source} predicts {outputs} classes{theirs}, "
                        f"not the training data's {len(class_names)} ({first_names(class_names, 5)}) in that order")
