"""Building blocks shared by ShuffleNet V1, V2 and V2+."""

from __future__ import annotations

import torch
from torch import nn


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` equal groups: ``out[i*g + k] = in[k*m + i]``, m = C/g.

    Written for deployment: it never builds a tensor of rank > 4 (TFLite/CoreML converters reject
    5-D Reshape/Transpose), reads shapes from ``x.shape`` rather than ``x.data`` (which bakes the
    batch size into an ONNX graph) and uses a single -1 per reshape (ONNX Runtime rejects two).
    A channels_last input stays channels_last (in eager mode), so the next conv needs no layout copy.
    """
    _, channels, height, width = x.shape
    if groups < 1 or channels % groups:
        raise ValueError(f"channel_shuffle: {channels} channels cannot be split into {groups} groups")
    if not torch.jit.is_tracing() and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        nhwc = x.permute(0, 2, 3, 1).reshape(-1, groups, channels // groups)  # views: no copy yet
        return nhwc.transpose(1, 2).reshape(-1, height, width, channels).permute(0, 3, 1, 2)
    x = x.reshape(-1, groups, channels // groups, height * width)
    return x.transpose(1, 2).reshape(-1, channels, height, width)


def shuffle_order(channels: int, groups: int) -> list[int]:
    """``channel_shuffle``'s output channel ``j`` is its input channel ``order[j]``."""
    return channel_shuffle(torch.arange(channels).view(1, channels, 1, 1), groups).flatten().tolist()


class ChannelShuffle(nn.Module):
    """``channel_shuffle`` as a module, for graph rewrites that insert one."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d + optional activation; children are ``conv``, ``bn``, ``act``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = nn.ReLU,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        if act is not None:
            self.act = act(inplace=True) if act in (nn.ReLU, nn.Hardswish) else act()


def make_divisible(value: float, divisor: int, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never more than 10% below it."""
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded
