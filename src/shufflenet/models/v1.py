"""ShuffleNet V1 (Zhang et al., CVPR 2018): pointwise group convolutions and channel shuffle.

Channel rule (every groups x width combination builds; mmpretrain fails for 10 of the 25):
- stage widths are the paper's 1x widths times ``width``, rounded to a multiple of ``4 * groups``
  so that the bottleneck (width / 4) splits into ``groups`` groups;
- the stem has ``24 * 2**floor(log2(width))`` channels, at least 8 (the usual minimum width), rounded
  up to a multiple of ``groups`` so that ``stage_width - stem`` (the first unit's concat branch) is
  divisible by ``groups``.
This reproduces Megvii's hand-written tables exactly (stems 12/16/24/24/48 for g3 and g8) and puts
every width within the paper's complexity (0.25x: 13 MFLOPs needs a stem wider than 6).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .base import ClassifierHead, ShuffleNetBase
from .layers import ConvBNAct, channel_shuffle, make_divisible

# Paper Table 1: output channels of stages 2-4 at 1x, per group count.
STAGE_WIDTHS_1X = {1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960), 4: (272, 544, 1088), 8: (384, 768, 1536)}
STAGE_REPEATS = (4, 8, 4)
SHUFFLE_ORDERS = ("paper", "megvii", "none")


def v1_channels(groups: int, width: float) -> tuple[int, tuple[int, ...]]:
    """(stem channels, stage channels) for ``groups`` and ``width`` under the rule above."""
    if groups not in STAGE_WIDTHS_1X:
        raise ValueError(f"ShuffleNet V1 groups must be one of {sorted(STAGE_WIDTHS_1X)}, got {groups}")
    stages = tuple(make_divisible(c * width, 4 * groups) for c in STAGE_WIDTHS_1X[groups])
    stem = math.ceil(max(8, 24 * 2 ** math.floor(math.log2(width))) / groups) * groups
    return stem, stages


class ShuffleUnitV1(nn.Module):
    """1x1 group conv -> shuffle -> 3x3 depthwise (no ReLU) -> 1x1 group conv, plus shortcut.

    Stride 1 adds the identity, then applies ReLU. Stride 2 concatenates a 3x3 average-pooled shortcut
    to the branch, which produces ``out - in`` channels and takes the ReLU in its last conv (Megvii's
    ``cat(proj, relu(x))``), so QAT quantizes, after that conv, the tensor that is concatenated.
    ``shuffle_groups`` is the group count passed to ``channel_shuffle``: ``groups`` for the paper's
    shuffle, ``mid // groups`` for Megvii's inverse one.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, groups: int, first_unit: bool, shuffle: str
    ) -> None:
        super().__init__()
        self.stride = stride
        mid = out_channels // 4
        branch_out = out_channels - in_channels if stride == 2 else out_channels
        # The first unit of stage 2 sees only the narrow stem: the paper keeps its first 1x1 dense.
        self.compress = ConvBNAct(in_channels, mid, 1, groups=1 if first_unit else groups)
        self.shuffle_groups = {"paper": groups, "megvii": mid // groups, "none": 1}[shuffle] if groups > 1 else 1
        self.depthwise = ConvBNAct(mid, mid, 3, stride, groups=mid, act=None)
        self.expand = ConvBNAct(mid, branch_out, 1, groups=groups, act=nn.ReLU if stride == 2 else None)
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else nn.Identity()
        if stride == 1:
            self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.compress(x)
        if self.shuffle_groups > 1:
            out = channel_shuffle(out, self.shuffle_groups)
        out = self.expand(self.depthwise(out))
        if self.stride == 2:
            return torch.cat((self.shortcut(x), out), 1)
        return self.relu(x + out)


class ShuffleNetV1(ShuffleNetBase):
    """ShuffleNet V1 classifier and backbone.

    Args:
        groups: group count of the pointwise convolutions (1, 2, 3, 4 or 8).
        width: channel multiplier (0.25 to 2.0 in the papers).
        num_classes: classifier outputs.
        shuffle: ``"paper"``; ``"megvii"``, the official code's inverse permutation (needed to load
            Megvii's g8 0.5x/1.5x weights exactly; other checkpoints are permuted on load); or
            ``"none"``, no shuffle (the paper's Table 3 ablation).
        fc_bias: bias in the classifier (mmpretrain has one, Megvii does not).
        small_input: stem without down-sampling, for 32x32 images such as CIFAR.
        out_indices, frozen_stages, norm_eval: backbone options, see ``ShuffleNetBase``.
    """

    def __init__(
        self,
        groups: int = 3,
        width: float = 1.0,
        num_classes: int = 1000,
        shuffle: str = "paper",
        fc_bias: bool = True,
        dropout: float = 0.0,
        small_input: bool = False,
        out_indices: Sequence[int] | None = None,
        frozen_stages: int = -1,
        norm_eval: bool = False,
    ) -> None:
        super().__init__()
        if shuffle not in SHUFFLE_ORDERS:
            raise ValueError(f"ShuffleNet V1 shuffle must be one of {SHUFFLE_ORDERS}, got {shuffle!r}")
        stem, widths = v1_channels(groups, width)
        self.shuffle = shuffle
        self.stem = ConvBNAct(3, stem, 3, stride=1 if small_input else 2)
        self.stem_pool = nn.Identity() if small_input else nn.MaxPool2d(3, 2, 1)
        self.stages = nn.ModuleList()
        in_channels = stem
        for stage_index, (repeats, out_channels) in enumerate(zip(STAGE_REPEATS, widths)):
            units = []
            for i in range(repeats):
                first = stage_index == 0 and i == 0
                units.append(
                    ShuffleUnitV1(in_channels, out_channels, 2 if i == 0 else 1, groups, first, shuffle)
                )
                in_channels = out_channels
            self.stages.append(nn.Sequential(*units))
        self.conv_last = None
        self.head = ClassifierHead(in_channels, num_classes, dropout, bias=fc_bias)
        self.init_weights()
        # Each residual unit starts as the identity (Goyal et al., 2017): with Megvii's init alone the
        # sum x + branch doubles in scale unit after unit and training diverges in its first steps
        # (CIFAR recipe, V1 g3 0.5x: first-epoch loss 6.5 instead of 2.2).
        for unit in self.modules():
            if isinstance(unit, ShuffleUnitV1) and unit.stride == 1:
                nn.init.zeros_(unit.expand.bn.weight)
        self._init_backbone_options(widths, out_indices, frozen_stages, norm_eval)
