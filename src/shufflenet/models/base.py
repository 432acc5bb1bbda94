"""What every ShuffleNet shares: a stem, stages, an optional last conv and a classifier head.

The backbone / head split follows mmpretrain (``extract_feat``, ``out_indices``, ``frozen_stages``,
``norm_eval``) so that detectors and segmenters can use the models as backbones; the classifier is
a plain ``forward`` as in torchvision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..data.preprocess import IMAGENET, Preprocessing


class ClassifierHead(nn.Module):
    """Global average pooling (any input size), optional dropout, linear classifier ``fc``."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_channels, num_classes, bias=bias)

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.pre_logits(x)))

    def reset(self, num_classes: int) -> None:
        """Replace the classifier by a freshly initialised one for ``num_classes`` classes."""
        old = self.fc
        self.fc = nn.Linear(old.in_features, num_classes, bias=old.bias is not None).to(old.weight.device)
        init_linear(self.fc)


class ShuffleNetBase(nn.Module):
    """Subclasses build ``stem``, ``stem_pool``, ``stages`` (ModuleList), ``conv_last`` and ``head``.

    Feature levels are the stages followed by ``conv_last`` when the model has one; ``out_indices``
    selects which levels ``extract_feat`` returns, and ``frozen_stages = k`` freezes the stem and
    the first ``k`` levels (``-1`` freezes nothing, ``0`` the stem only).
    """

    # Metadata that travels with the weights: set by ``get_model`` and by checkpoint loading.
    model_name: str | None = None
    preprocessing: Preprocessing = IMAGENET
    class_names: tuple[str, ...] | None = None

    stem: nn.Module
    stem_pool: nn.Module
    stages: nn.ModuleList
    conv_last: nn.Module | None
    head: nn.Module

    def _init_backbone_options(
        self, level_channels: Sequence[int], out_indices: Sequence[int] | None, frozen_stages: int, norm_eval: bool
    ) -> None:
        levels = len(self.feature_levels())
        self.level_channels = tuple(level_channels)
        indices = tuple(range(levels)) if out_indices is None else tuple(out_indices)
        for i in indices:
            if not -levels <= i < levels:
                raise ValueError(f"out_indices {indices}: each index must be in [0, {levels})")
        if not -1 <= frozen_stages <= levels:
            raise ValueError(f"frozen_stages={frozen_stages}: must be in [-1, {levels}]")
        self.out_indices = tuple(i % levels for i in indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self._freeze()

    def feature_levels(self) -> list[nn.Module]:
        return [*self.stages] + ([self.conv_last] if self.conv_last is not None else [])

    def feature_info(self) -> list[dict[str, Any]]:
        """Per feature level, as timm describes it: ``module`` name, ``num_chs`` (channels) and
        ``reduction`` (stride to the input), so a neck can be built before any forward pass."""
        stride = self.stem.conv.stride[0] * (2 if isinstance(self.stem_pool, nn.MaxPool2d) else 1)
        levels = [(f"stages.{i}", stride * 2 ** (i + 1)) for i in range(len(self.stages))]  # each stage halves
        if self.conv_last is not None:
            levels.append(("conv_last", levels[-1][1]))  # a 1x1 conv: the last stage's stride
        return [{"module": m, "num_chs": c, "reduction": r} for (m, r), c in zip(levels, self.level_channels)]

    @property
    def num_features(self) -> int:
        """Width of the pooled features that feed the classifier."""
        return self.head.in_channels

    # -- forward -------------------------------------------------------------------------------
    def extract_feat(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Feature maps of the levels in ``out_indices`` (strides 8, 16, 32 for the ImageNet stem)."""
        x = self.stem_pool(self.stem(x))
        outs = []
        for i, level in enumerate(self.feature_levels()):
            x = level(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_pool(self.stem(x))
        for level in self.feature_levels():
            x = level(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head.pre_logits(x) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    # -- fine-tuning -----------------------------------------------------------------------------
    def reset_classifier(self, num_classes: int) -> None:
        self.head.reset(num_classes)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.stem, *self.feature_levels()[: self.frozen_stages]]

    def _freeze(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> ShuffleNetBase:
        super().train(mode)
        if mode:
            for module in self._frozen_modules():
                module.eval()
            if self.norm_eval:  # _BatchNorm covers BatchNorm2d and SyncBatchNorm alike
                for module in self.modules():
                    if isinstance(module, _BatchNorm):
                        module.eval()
        return self

    # -- initialisation --------------------------------------------------------------------------
    def init_weights(self) -> None:
        """Megvii's initialisation, used by all official ShuffleNet trainings.

        Convs: N(0, 0.01) for the stem, N(0, 1/fan_in_per_output) elsewhere; BN: weight 1,
        bias 1e-4; Linear: N(0, 0.01), bias 0.
        """
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv2d):
                std = 0.01 if name.startswith("stem") else 1.0 / module.weight.shape[1]
                nn.init.normal_(module.weight, 0, std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, _BatchNorm):
                nn.init.ones_(module.weight)
                nn.init.constant_(module.bias, 1e-4)
            elif isinstance(module, nn.Linear):
                init_linear(module)


def init_linear(layer: nn.Linear) -> None:
    nn.init.normal_(layer.weight, 0, 0.01)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)

