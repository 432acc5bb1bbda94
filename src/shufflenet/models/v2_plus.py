"""ShuffleNet V2+ (Megvii, ShuffleNet-Series): the searched V2 variant with hard-swish and SE.

One fixed architecture found by Single Path One-Shot search: ShuffleNet V2 units with 3x3, 5x5 or
7x7 depthwise kernels, or an Xception-style unit (three depthwise + pointwise pairs); ReLU in the
first stage, hard-swish after it, squeeze-excitation from the third stage. As in Megvii's V2,
stride-1 units split even/odd channels and do not shuffle (the next split does). The head pools,
applies SE to the 1280-d vector, then Linear(1280, 1280) + hard-swish, dropout and the classifier.

Official checkpoint keys -> ours (each official ``(conv, bn)`` index pair becomes ``N.conv``/``N.bn``):
- ``first_conv.{0,1}`` -> ``stem.{conv,bn}``; ``conv_last.{0,1}`` -> ``conv_last.{conv,bn}``
- ``features.N`` -> ``stages.S.I`` (N = sum of the earlier stages' repeats + I)
- shuffle unit ``branch_main``: ``(0,1) (3,4) (5,6) 8`` -> ``0 1 2 3``
- Xception unit ``branch_main``: ``(0,1) (2,3) (5,6) (7,8) (10,11) (12,13) 15`` -> ``0 1 2 3 4 5 6``
- ``branch_proj``: ``(0,1) (2,3)`` -> ``0 1``
- inside any SE module: ``SE_opr.1``, ``SE_opr.2``, ``SE_opr.4`` -> ``reduce.conv``, ``reduce.bn``, ``expand``
- ``LastSE`` -> ``head.se``; ``fc.0`` -> ``head.hidden.0``; ``classifier.0`` -> ``head.fc``
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import ShuffleNetBase, init_linear
from .layers import ConvBNAct

# Output channels of the stem, the four stages and conv_last.
STAGE_WIDTHS = {
    "small": (16, 36, 104, 208, 416, 1280),
    "medium": (16, 48, 128, 256, 512, 1280),
    "large": (16, 68, 168, 336, 672, 1280),
}
STAGE_REPEATS = (4, 4, 8, 4)
# The searched block per unit: 0/1/2 = shuffle unit with 3x3/5x5/7x7 depthwise, 3 = Xception unit.
ARCHITECTURE = (0, 0, 3, 1, 1, 1, 0, 0, 2, 0, 2, 1, 1, 0, 2, 0, 2, 1, 3, 2)
KERNEL_SIZES = {0: 3, 1: 5, 2: 7, 3: 3}
XCEPTION = 3


class SqueezeExcite(nn.Module):
    """Pool -> 1x1 conv to C/4 + BN + ReLU -> 1x1 conv to C -> hard-sigmoid gate (Megvii's SE)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce = ConvBNAct(channels, channels // 4, 1)
        self.expand = nn.Conv2d(channels // 4, channels, 1, bias=False)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.reduce(x.mean((2, 3), keepdim=True))))


class ShuffleUnitV2Plus(nn.Module):
    """A ShuffleNet V2 unit whose main branch is the searched block ``choice``.

    Stride 1: even channels pass through, odd channels go through ``branch_main``. Stride 2: the
    whole input goes through both ``branch_proj`` (depthwise + 1x1, keeps the input width) and
    ``branch_main`` (makes the remaining ``out - in`` channels). The depthwise layers of the
    projection use the choice's kernel size.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, choice: int, act: type[nn.Module], use_se: bool
    ) -> None:
        super().__init__()
        self.stride = stride
        mid = out_channels // 2
        kernel = KERNEL_SIZES[choice]
        if stride == 2:
            self.branch_proj = nn.Sequential(
                ConvBNAct(in_channels, in_channels, kernel, stride, groups=in_channels, act=None),
                ConvBNAct(in_channels, in_channels, 1, act=act),
            )
            main_in = in_channels
        else:
            main_in = in_channels // 2
        main_out = out_channels - main_in
        if choice == XCEPTION:
            # Megvii strides all three depthwise convs, which cannot match the projection at
            # stride 2; the searched architecture only uses Xception at stride 1 anyway.
            layers = [
                ConvBNAct(main_in, main_in, 3, stride, groups=main_in, act=None),
                ConvBNAct(main_in, mid, 1, act=act),
                ConvBNAct(mid, mid, 3, groups=mid, act=None),
                ConvBNAct(mid, mid, 1, act=act),
                ConvBNAct(mid, mid, 3, groups=mid, act=None),
                ConvBNAct(mid, main_out, 1, act=act),
            ]
        else:
            layers = [
                ConvBNAct(main_in, mid, 1, act=act),
                ConvBNAct(mid, mid, kernel, stride, groups=mid, act=None),
                ConvBNAct(mid, main_out, 1, act=act),
            ]
        if use_se:
            layers.append(SqueezeExcite(main_out))
        self.branch_main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            return torch.cat((self.branch_proj(x), self.branch_main(x)), 1)
        return torch.cat((x[:, 0::2], self.branch_main(x[:, 1::2])), 1)


class V2PlusHead(nn.Module):
    """Global average pooling -> SE -> Linear + hard-swish (``hidden``) -> dropout -> ``fc``."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.se = SqueezeExcite(in_channels)
        self.hidden = nn.Sequential(nn.Linear(in_channels, in_channels, bias=False), nn.Hardswish(inplace=True))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_channels, num_classes, bias=False)

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden(self.se(x.mean((2, 3), keepdim=True)).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.pre_logits(x)))

    def reset(self, num_classes: int) -> None:
        """Replace the classifier by a freshly initialised one for ``num_classes`` classes."""
        old = self.fc
        self.fc = nn.Linear(old.in_features, num_classes, bias=False).to(old.weight.device)
        init_linear(self.fc)


class ShuffleNetV2Plus(ShuffleNetBase):
    """ShuffleNet V2+ classifier and backbone.

    Args:
        size: ``"small"``, ``"medium"`` or ``"large"``.
        num_classes: classifier outputs.
        dropout: dropout before the classifier.
        small_input: stem without down-sampling, for 32x32 images such as CIFAR.
        out_indices, frozen_stages, norm_eval: backbone options, see ``ShuffleNetBase``.

    The head's SE has a BatchNorm on a 1x1 map, so training needs a batch of at least 2.
    """

    def __init__(
        self,
        size: str = "medium",
        num_classes: int = 1000,
        dropout: float = 0.2,
        small_input: bool = False,
        out_indices: Sequence[int] | None = None,
        frozen_stages: int = -1,
        norm_eval: bool = False,
    ) -> None:
        super().__init__()
        if size not in STAGE_WIDTHS:
            raise ValueError(f"ShuffleNet V2+ size must be one of {list(STAGE_WIDTHS)}, got {size!r}")
        stem, *widths, last = STAGE_WIDTHS[size]
        self.size = size
        # No max-pool after the stem: V2+ reaches stride 32 with the stem and four stages.
        self.stem = ConvBNAct(3, stem, 3, stride=1 if small_input else 2, act=nn.Hardswish)
        self.stem_pool = nn.Identity()
        self.stages = nn.ModuleList()
        choices = iter(ARCHITECTURE)
        in_channels = stem
        for index, (repeats, out_channels) in enumerate(zip(STAGE_REPEATS, widths)):
            act = nn.Hardswish if index >= 1 else nn.ReLU
            units = []
            for i in range(repeats):
                stride = 2 if i == 0 else 1
                units.append(ShuffleUnitV2Plus(in_channels, out_channels, stride, next(choices), act, index >= 2))
                in_channels = out_channels
            self.stages.append(nn.Sequential(*units))
        self.conv_last = ConvBNAct(in_channels, last, 1, act=nn.Hardswish)
        self.head = V2PlusHead(last, num_classes, dropout)
        self.init_weights()
        self._init_backbone_options((*widths, last), out_indices, frozen_stages, norm_eval)

    def init_weights(self) -> None:
        """Megvii's initialisation; it also draws the SE convs from N(0, 0.01) like the stem."""
        super().init_weights()
        for module in self.modules():
            if isinstance(module, SqueezeExcite):
                nn.init.normal_(module.reduce.conv.weight, 0, 0.01)
                nn.init.normal_(module.expand.weight, 0, 0.01)
