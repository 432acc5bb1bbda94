"""ShuffleNet V2 (Ma et al., ECCV 2018): channel split, equal-width branches, channel shuffle.

Two layouts exist in the wild and both are built here, so every public checkpoint has a home:
- ``"torchvision"`` (also mmpretrain): stride-1 units split the channels in halves and shuffle at
  the end; stride-2 units have two branches of ``out/2`` channels; classifier with bias.
- ``"megvii"`` (official code, mindcv, MegEngine): units split even/odd channels and do not
  shuffle (the next split does it); a stride-2 unit's left branch keeps its input width (24 in the
  first unit of stage 2) and the right branch makes the rest; no classifier bias; dropout 0.2 at 2.0x.

The torchvision layout can also run with Megvii's even/odd routing (``routing="even_odd"``): the
same network up to a fixed permutation of each unit's output channels, which ``convert_routing``
moves into the weights exactly. It has no shuffle to copy memory, and trains about 1.2x faster on
CPU (docs/benchmarks.md); train in it, convert back for torchvision-order weights.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from .base import ClassifierHead, ShuffleNetBase
from .layers import ConvBNAct, channel_shuffle

# Output channels of the stem, stages 2-4 and conv5 (paper Table 5; 0.25x and 0.33x: PaddleClas).
STAGE_WIDTHS = {
    0.25: (24, 24, 48, 96, 512),
    0.33: (24, 32, 64, 128, 512),
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}
STAGE_REPEATS = (4, 8, 4)
LAYOUTS = ("torchvision", "megvii")
ROUTINGS = ("shuffle", "even_odd")
ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU}  # silu: PaddleClas's ShuffleNetV2_swish


class ShuffleUnitV2(nn.Module):
    """Stride 1: split, transform one half, concat. Stride 2: two down-sampling branches, concat.

    ``branch_proj`` (stride 2 only) is depthwise 3x3 + 1x1; ``branch_main`` is 1x1 + depthwise
    3x3 + 1x1. ``even_odd`` selects Megvii's routing (even/odd split, no shuffle) over
    torchvision's (half split, shuffle after the concat); the two differ only by a fixed
    permutation of each unit's output channels.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, proj_channels: int, even_odd: bool,
        act: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.even_odd = even_odd
        mid = out_channels // 2
        if stride == 2:
            self.branch_proj = nn.Sequential(
                ConvBNAct(in_channels, in_channels, 3, stride, groups=in_channels, act=None),
                ConvBNAct(in_channels, proj_channels, 1, act=act),
            )
            main_in, main_out = in_channels, out_channels - proj_channels
        else:
            main_in = main_out = in_channels // 2
        self.branch_main = nn.Sequential(
            ConvBNAct(main_in, mid, 1, act=act),
            ConvBNAct(mid, mid, 3, stride, groups=mid, act=None),
            ConvBNAct(mid, main_out, 1, act=act),
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


def check_stage_plan(widths: Sequence[int], repeats: Sequence[int]) -> None:
    """Stage widths (stem, stages, conv5) that fit the stage repeats and split in halves."""
    if len(widths) != len(repeats) + 2:
        raise ValueError(f"stage_widths needs {len(repeats) + 2} entries (stem, {len(repeats)} stages, conv5), got {list(widths)}")
    if min(widths) < 1 or min(repeats) < 1 or any(w % 2 for w in widths[1:-1]):
        raise ValueError(f"stage widths must be even and positive, repeats positive: got {list(widths)} and {list(repeats)}")


class ShuffleNetV2(ShuffleNetBase):
    """ShuffleNet V2 classifier and backbone.

    Args:
        width: 0.25, 0.33, 0.5, 1.0, 1.5 or 2.0 (the Megvii layout: 0.5 to 2.0).
        num_classes: classifier outputs.
        layout: ``"torchvision"`` or ``"megvii"`` (see the module docstring).
        routing: ``"shuffle"`` (half split + shuffle, torchvision's) or ``"even_odd"`` (Megvii's);
            ``None`` takes the layout's own. The Megvii layout routes even/odd only.
        dropout: dropout before the classifier; ``None`` takes the layout's default.
        small_input: stem without down-sampling, for 32x32 images such as CIFAR.
        stage_widths: output channels of the stem, each stage and conv5 (even stage widths), in place
            of ``width``'s table; torchvision's ``stages_out_channels``. Hardware-friendly widths,
            e.g. ``(24, 112, 224, 448, 1024)``, can run faster than the paper's: docs/models.md.
        stage_repeats: units per stage, ``(4, 8, 4)`` by default; one entry per stage.
        activation: ``"relu"`` (the paper's) or ``"silu"`` (swish: PaddleClas's ShuffleNetV2_swish),
            after every conv but the depthwise ones.
        out_indices, frozen_stages, norm_eval: backbone options, see ``ShuffleNetBase``.
    """

    def __init__(
        self,
        width: float = 1.0,
        num_classes: int = 1000,
        layout: str = "torchvision",
        routing: str | None = None,
        dropout: float | None = None,
        small_input: bool = False,
        stage_widths: Sequence[int] | None = None,
        stage_repeats: Sequence[int] | None = None,
        activation: str = "relu",
        out_indices: Sequence[int] | None = None,
        frozen_stages: int = -1,
        norm_eval: bool = False,
    ) -> None:
        super().__init__()
        if stage_widths is None and width not in STAGE_WIDTHS:
            raise ValueError(f"ShuffleNet V2 width must be one of {sorted(STAGE_WIDTHS)}, got {width}")
        if layout not in LAYOUTS:
            raise ValueError(f"ShuffleNet V2 layout must be one of {LAYOUTS}, got {layout!r}")
        megvii = layout == "megvii"
        routing = routing or ("even_odd" if megvii else "shuffle")
        if routing not in ROUTINGS or (megvii and routing != "even_odd"):
            raise ValueError(f"ShuffleNet V2 routing must be one of {ROUTINGS} (the megvii layout: even_odd), got {routing!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"ShuffleNet V2 activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
        if dropout is None:
            dropout = 0.2 if megvii and width == 2.0 else 0.0
        # kept (None when the defaults) so that a checkpoint can record them
        self.stage_widths = tuple(stage_widths) if stage_widths is not None else None
        self.stage_repeats = tuple(stage_repeats) if stage_repeats is not None else None
        table = self.stage_widths if self.stage_widths is not None else STAGE_WIDTHS[width]
        stage_repeats = self.stage_repeats if self.stage_repeats is not None else STAGE_REPEATS
        check_stage_plan(table, stage_repeats)
        stem, *widths, last = table
        if megvii and any(out <= into for into, out in zip((stem, *widths), widths)):  # stride-2 main branch: out - in channels
            raise ValueError(f"the megvii layout needs each stage wider than its input (stem {stem}, stages {widths}); 0.25x is not")
        self.layout, self.routing, self.activation = layout, routing, activation
        act = ACTIVATIONS[activation]
        self.stem = ConvBNAct(3, stem, 3, stride=1 if small_input else 2, act=act)
        self.stem_pool = nn.Identity() if small_input else nn.MaxPool2d(3, 2, 1)
        self.stages = nn.ModuleList()
        in_channels = stem
        for repeats, out_channels in zip(stage_repeats, widths):
            proj = in_channels if megvii else out_channels // 2
            even_odd = routing == "even_odd"
            units = [ShuffleUnitV2(in_channels, out_channels, 2, proj, even_odd, act)]
            units += [ShuffleUnitV2(out_channels, out_channels, 1, proj, even_odd, act) for _ in range(repeats - 1)]
            self.stages.append(nn.Sequential(*units))
            in_channels = out_channels
        self.conv_last = ConvBNAct(in_channels, last, 1, act=act)
        self.head = ClassifierHead(last, num_classes, dropout, bias=not megvii)
        self.init_weights()
        self._init_backbone_options((*widths, last), out_indices, frozen_stages, norm_eval)


# -- routing: shuffle <-> even/odd, an exact permutation of the weights --------------------------------
def consumption_times(repeats: int, channels: int, routing: str) -> list[list[int]]:
    """For each unit of a stage, for each channel of its output (in ``routing``'s order): in how
    many units it is consumed. A stride-1 unit feeds its branch the upper half ("shuffle") or the odd
    channels ("even_odd") and passes channel ``c`` of the rest to ``2c`` ("shuffle") or ``c/2``
    ("even_odd") of its output; whatever follows the stage consumes everything."""
    half = channels // 2
    if routing == "shuffle":
        consumed, passed_to = (lambda c: c >= half), (lambda c: 2 * c)
    else:
        consumed, passed_to = (lambda c: c % 2 == 1), (lambda c: c // 2)
    times = [[1] * channels]
    for _ in range(repeats - 1):
        later = times[0]
        times.insert(0, [1 if consumed(c) else 1 + later[passed_to(c)] for c in range(channels)])
    return times


def _match_by_time(positions: list[int], position_times: list[int], channels: list[int], channel_times: list[int]) -> dict[int, int]:
    """Pair even/odd storage positions with shuffle-order channels consumed at the same time."""
    by_time = sorted(positions, key=lambda p: position_times[p])
    matched = sorted(channels, key=lambda c: channel_times[c])
    if [position_times[p] for p in by_time] != [channel_times[c] for c in matched]:
        raise AssertionError("the two routings consume channels at different times")
    return dict(zip(by_time, matched))


def _even_odd_storage(repeats: int, channels: int) -> list[list[int]]:
    """Per unit of a stage: ``storage[p]`` = the shuffle-order output channel that even/odd routing
    keeps at position ``p``. Stride-2 outputs are free to place (both branches' rows can be
    permuted); a stride-1 unit's pass-through half is placed by the routing, its branch rows are free."""
    half = channels // 2
    shuffle_times = consumption_times(repeats, channels, "shuffle")
    even_odd_times = consumption_times(repeats, channels, "even_odd")
    storage: list[list[int]] = []
    for u in range(repeats):
        order = [0] * channels
        if u == 0:  # shuffle order puts the projection branch at even channels, the main branch at odd
            free = [(range(half), range(0, channels, 2)), (range(half, channels), range(1, channels, 2))]
        else:
            for j in range(half):
                order[j] = 2 * storage[-1][2 * j]
            free = [(range(half, channels), range(1, channels, 2))]
        for positions, outputs in free:
            for p, c in _match_by_time(list(positions), even_odd_times[u], list(outputs), shuffle_times[u]).items():
                order[p] = c
        storage.append(order)
    return storage


Permutations = dict[str, list[tuple[int, list[int]]]]  # parameter name -> (dim, index) to select


def _permute_outputs(perms: Permutations, prefix: str, order: list[int]) -> None:
    """Rows of the ConvBNAct ``prefix``: its conv's output channels and its BN's parameters."""
    for name in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
        perms.setdefault(f"{prefix}.{name}", []).append((0, order))


def _permute_inputs(perms: Permutations, prefix: str, order: list[int]) -> None:
    perms.setdefault(f"{prefix}.conv.weight", []).append((1, order))


def even_odd_permutations(model: ShuffleNetV2) -> Permutations:
    """How to index each parameter of a shuffle-routed ``model`` to get its even/odd-routed twin."""
    perms: Permutations = {}
    storage = list(range(model.stem.conv.out_channels))  # the stage input, in shuffle order
    for s, stage in enumerate(model.stages):
        channels = stage[0].branch_main[2].conv.out_channels * 2
        half = channels // 2
        for u, unit_storage in enumerate(_even_odd_storage(len(stage), channels)):
            prefix = f"stages.{s}.{u}"
            if u == 0:
                _permute_outputs(perms, f"{prefix}.branch_proj.0", storage)  # depthwise: rows follow inputs
                _permute_inputs(perms, f"{prefix}.branch_proj.1", storage)
                _permute_inputs(perms, f"{prefix}.branch_main.0", storage)
                _permute_outputs(perms, f"{prefix}.branch_proj.1", [c // 2 for c in unit_storage[:half]])
            else:
                _permute_inputs(perms, f"{prefix}.branch_main.0", [c - half for c in storage[1::2]])
            _permute_outputs(perms, f"{prefix}.branch_main.2", [(c - 1) // 2 for c in unit_storage[half:]])
            storage = unit_storage
    _permute_inputs(perms, "conv_last", storage)
    return perms


def convert_routing(model: ShuffleNetV2, routing: str) -> ShuffleNetV2:
    """An exact copy of a torchvision-layout ``model`` that routes channels as ``routing`` says
    (outputs equal up to float rounding; training mode, BN statistics and attributes kept)."""
    if model.layout != "torchvision":
        raise ValueError("only the torchvision layout has two routings")
    converted = copy.deepcopy(model)
    if routing == model.routing:
        return converted
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
    to_even_odd = routing == "even_odd"
    state = model.state_dict()
    for name, steps in even_odd_permutations(model).items():
        tensor = state[name]
        for dim, order in steps:
            index = torch.tensor(order, device=tensor.device)
            tensor = tensor.index_select(dim, index if to_even_odd else torch.argsort(index))
        state[name] = tensor
    converted.load_state_dict(state)
    converted.routing = routing
    for stage in converted.stages:
        for unit in stage:
            unit.even_odd = to_even_odd
    return converted
