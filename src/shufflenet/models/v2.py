"""ShuffleNet V2 (Ma et al., ECCV 2018): channel split, equal-width branches, channel shuffle.

Two layouts exist in the wild and both are built here, so every public checkpoint has a home:
- ``"torchvision"`` (also mmpretrain): stride-1 units split the channels in halves and shuffle at
  the end; stride-2 units have two branches of ``out/2`` channels; classifier with bias.
- ``"megvii"`` (official code, mindcv, MegEngine): units split even/odd channels and do not
  shuffle (the next split does it); a stride-2 unit's left branch keeps its input width (24 in the
  first unit of stage 2) and the right branch makes the rest; no classifier bias; dropout 0.2 at 2.0x.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import ClassifierHead, ShuffleNetBase
from .layers import ConvBNAct, channel_shuffle

# Output channels of the stem, stages 2-4 and conv5 (paper Table 5).
STAGE_WIDTHS = {
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}
STAGE_REPEATS = (4, 8, 4)
LAYOUTS = ("torchvision", "megvii")


class ShuffleUnitV2(nn.Module):
    """Stride 1: split, transform one half, concat. Stride 2: two down-sampling branches, concat.

    ``branch_proj`` (stride 2 only) is depthwise 3x3 + 1x1; ``branch_main`` is 1x1 + depthwise
    3x3 + 1x1. ``even_odd`` selects Megvii's routing (even/odd split, no shuffle) over
    torchvision's (half split, shuffle after the concat); the two differ only by a fixed
    permutation of each unit's output channels.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, proj_channels: int, even_odd: bool
    ) -> None:
        super().__init__()
        self.stride = stride
        self.even_odd = even_odd
        mid = out_channels // 2
        if stride == 2:
            self.branch_proj = nn.Sequential(
                ConvBNAct(in_channels, in_channels, 3, stride, groups=in_channels, act=None),
                ConvBNAct(in_channels, proj_channels, 1),
            )
            main_in, main_out = in_channels, out_channels - proj_channels
        else:
            main_in = main_out = in_channels // 2
        self.branch_main = nn.Sequential(
            ConvBNAct(main_in, mid, 1),
            ConvBNAct(mid, mid, 3, stride, groups=mid, act=None),
            ConvBNAct(mid, main_out, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            out = torch.cat((self.branch_proj(x), self.branch_main(x)), 1)
        elif self.even_odd:
            return torch.cat((x[:, 0::2], self.branch_main(x[:, 1::2])), 1)
        else:
            half = x.shape[1] // 2
            out = torch.cat((x[:, :half], self.branch_main(x[:, half:])), 1)
        return out if self.even_odd else channel_shuffle(out, 2)


class ShuffleNetV2(ShuffleNetBase):
    """ShuffleNet V2 classifier and backbone.

    Args:
        width: 0.5, 1.0, 1.5 or 2.0.
        num_classes: classifier outputs.
        layout: ``"torchvision"`` or ``"megvii"`` (see the module docstring).
        dropout: dropout before the classifier; ``None`` takes the layout's default.
        small_input: stem without down-sampling, for 32x32 images such as CIFAR.
        out_indices, frozen_stages, norm_eval: backbone options, see ``ShuffleNetBase``.
    """

    def __init__(
        self,
        width: float = 1.0,
        num_classes: int = 1000,
        layout: str = "torchvision",
        dropout: float | None = None,
        small_input: bool = False,
        out_indices: Sequence[int] | None = None,
        frozen_stages: int = -1,
        norm_eval: bool = False,
    ) -> None:
        super().__init__()
        if width not in STAGE_WIDTHS:
            raise ValueError(f"ShuffleNet V2 width must be one of {sorted(STAGE_WIDTHS)}, got {width}")
        if layout not in LAYOUTS:
            raise ValueError(f"ShuffleNet V2 layout must be one of {LAYOUTS}, got {layout!r}")
        megvii = layout == "megvii"
        if dropout is None:
            dropout = 0.2 if megvii and width == 2.0 else 0.0
        stem, *widths, last = STAGE_WIDTHS[width]
        self.layout = layout
        self.stem = ConvBNAct(3, stem, 3, stride=1 if small_input else 2)
        self.stem_pool = nn.Identity() if small_input else nn.MaxPool2d(3, 2, 1)
        self.stages = nn.ModuleList()
        in_channels = stem
        for repeats, out_channels in zip(STAGE_REPEATS, widths):
            proj = in_channels if megvii else out_channels // 2
            units = [ShuffleUnitV2(in_channels, out_channels, 2, proj, megvii)]
            units += [ShuffleUnitV2(out_channels, out_channels, 1, proj, megvii) for _ in range(repeats - 1)]
            self.stages.append(nn.Sequential(*units))
            in_channels = out_channels
        self.conv_last = ConvBNAct(in_channels, last, 1)
        self.head = ClassifierHead(last, num_classes, dropout, bias=not megvii)
        self.init_weights()
        self._init_backbone_options(out_indices, frozen_stages, norm_eval)
