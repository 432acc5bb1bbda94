"""The fast CPU inference path: exact graph rewrites, then a runtime compiled for the batch shape used.

Rewrites (each keeps the outputs equal to the reference model, tested in tests/test_fastpath.py):
- BatchNorm folded into the convolutions (``fuse_conv_bn``).
- ShuffleNet V2 (torchvision layout) without channel shuffle: inside a stage, activations travel as
  *pieces*, channel groups cut by the unit that will read them (the next unit's branch, the one
  after, ..., or what follows the stage). A unit concatenates the pieces its branch reads, passes
  the others on untouched, and splits its branch output by reader; the permutations go into the
  weights of the convolutions that read them. No reshape/transpose (OpenVINO's ShuffleChannels) is
  left, and the pass-through half is never copied.
- ShuffleNet V1: the first unit of stage 2 has a dense first 1x1 conv, whose output rows absorb the
  shuffle. The other shuffles sit between two grouped convs and cannot be folded without making
  one of them dense; at stride 2 they move past the depthwise conv, onto a quarter of the data.
Runtime: OpenVINO when installed, else ONNX Runtime, each compiled for the static input shape of
each batch size seen; without either, the rewritten model in PyTorch with channels_last.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from ..models.layers import ChannelShuffle, shuffle_order
from ..models.v1 import ShuffleNetV1
from ..models.v2 import ShuffleNetV2, ShuffleUnitV2, consumption_times, convert_routing
from .fuse import fuse_conv_bn


# -- weight permutations ---------------------------------------------------------------------------
def permute_inputs(conv: nn.Conv2d, order: Sequence[int]) -> None:
    """Input channel ``j`` of ``conv`` becomes the old input channel ``order[j]`` (dense conv)."""
    conv.weight = nn.Parameter(conv.weight[:, list(order)].clone())


def permute_outputs(conv: nn.Conv2d, order: Sequence[int]) -> None:
    """Output channel ``j`` becomes the old output channel ``order[j]`` (for a depthwise conv this
    also permutes its inputs, as it must)."""
    conv.weight = nn.Parameter(conv.weight[list(order)].clone())
    conv.bias = nn.Parameter(conv.bias[list(order)].clone())


# -- ShuffleNet V2 without shuffle -----------------------------------------------------------------
Piece = tuple[list[int], int]  # logical channels in storage order, index of the unit that reads them


def split(x: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """``x`` cut along channels; no Split op for a single piece (it would still copy)."""
    return [x] if len(sizes) == 1 else list(x.split(sizes, 1))


class PiecewiseUnitV2(nn.Module):
    """A V2 unit that reads and writes its stage's activations as pieces: channel groups, each read
    by one later unit (or by what follows the stage). The branch reads the concat of the pieces
    ``take``; the pass-through pieces ``keep`` go on untouched (no copy); the branch outputs (and
    the projection's, at stride 2) are split by the unit that will read them."""

    def __init__(self, unit: ShuffleUnitV2, take: list[int], keep: list[int], first_sizes, main_sizes) -> None:
        super().__init__()
        self.branch_proj = getattr(unit, "branch_proj", None)
        self.branch_main = unit.branch_main
        self.take, self.keep = take, keep
        self.first_sizes, self.main_sizes = list(first_sizes), list(main_sizes)

    def forward(self, pieces: list[torch.Tensor]) -> list[torch.Tensor]:
        taken = [pieces[i] for i in self.take]
        x = taken[0] if len(taken) == 1 else torch.cat(taken, 1)
        first = split(self.branch_proj(x), self.first_sizes) if self.branch_proj is not None else [pieces[i] for i in self.keep]
        return [*first, *split(self.branch_main(x), self.main_sizes)]


class PiecewiseStageV2(nn.Module):
    """A stage of ``PiecewiseUnitV2``: one tensor in, the concat of the last unit's pieces out."""

    def __init__(self, units: list[PiecewiseUnitV2]) -> None:
        super().__init__()
        self.units = nn.ModuleList(units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pieces = [x]
        for unit in self.units:
            pieces = unit(pieces)
        return torch.cat(pieces, 1)


def by_reader(channels: list[int], reader: Callable[[int], int]) -> list[Piece]:
    """``channels`` cut into one piece per reading unit, in reading order."""
    ordered = sorted(channels, key=reader)
    return [(list(group), time) for time, group in itertools.groupby(ordered, key=reader)]


def piecewise_unit(unit: ShuffleUnitV2, u: int, pieces: list[Piece], times: list[int]) -> tuple[PiecewiseUnitV2, list[Piece]]:
    """Rewrite unit ``u`` of a stage for its input ``pieces``; return it and its output pieces.

    The torchvision unit's logical output is ``shuffle(cat(first, main))``: ``first[i]`` (the
    pass-through half, or the projection at stride 2) is output channel ``2i``, ``main[i]`` is
    ``2i + 1``; ``times[c]`` says how many units later output channel ``c`` is read.
    """
    half = len(times) // 2

    def reader(c: int) -> int:  # the unit that reads output channel c
        return u + times[c]

    take = [i for i, (_, time) in enumerate(pieces) if time == u]
    keep = [i for i, (_, time) in enumerate(pieces) if time != u]
    read = [c for i in take for c in pieces[i][0]]  # the branch input, in storage order
    main_conv = unit.branch_main[0].conv
    if unit.stride == 2:
        permute_outputs(unit.branch_proj[0].conv, read)  # depthwise: follows its input order
        permute_inputs(unit.branch_proj[1].conv, read)
        permute_inputs(main_conv, read)
        first = by_reader([2 * i for i in range(half)], reader)
        permute_outputs(unit.branch_proj[1].conv, [c // 2 for channels, _ in first for c in channels])
    else:
        permute_inputs(main_conv, [c - half for c in read])
        first = [([2 * c for c in pieces[i][0]], pieces[i][1]) for i in keep]
        if any(c < half for c in read) or any(reader(c) != time for channels, time in first for c in channels):
            raise AssertionError("pieces must be read by the unit the routing sends them to")
    main = by_reader([2 * i + 1 for i in range(half)], reader)
    permute_outputs(unit.branch_main[2].conv, [c // 2 for channels, _ in main for c in channels])
    first_sizes, main_sizes = ([len(channels) for channels, _ in ps] for ps in (first, main))
    return PiecewiseUnitV2(unit, take, keep, first_sizes, main_sizes), first + main


def shuffle_free_v2(model: ShuffleNetV2) -> ShuffleNetV2:
    """An exact copy of a torchvision-layout V2 (BN folded) with no channel shuffle left."""
    if model.layout != "torchvision":
        raise ValueError("shuffle_free_v2 rewrites the torchvision layout (Megvii's has no shuffle to remove)")
    model = fuse_conv_bn(convert_routing(model, "shuffle"))
    stored = list(range(model.stem.conv.out_channels))
    for s, stage in enumerate(model.stages):
        channels = stage[0].branch_main[2].conv.out_channels * 2
        times = consumption_times(len(stage), channels, "shuffle")
        pieces, units = [(stored, 0)], []
        for u, unit in enumerate(stage):
            rewritten, pieces = piecewise_unit(unit, u, pieces, times[u])
            units.append(rewritten)
        model.stages[s] = PiecewiseStageV2(units)
        stored = [c for channels, _ in pieces for c in channels]
    permute_inputs(model.conv_last.conv, stored)
    return model


# -- ShuffleNet V1 -----------------------------------------------------------------------------------
def fold_v1_shuffles(model: ShuffleNetV1) -> ShuffleNetV1:
    """BN folded; the shuffle after a dense (ungrouped) first 1x1 conv folded into its rows; at
    stride 2 the shuffle moved past the depthwise conv (whose weights take the inverse order), where
    it moves a quarter of the data."""
    model = fuse_conv_bn(model)
    for stage in model.stages:
        for unit in stage:
            conv, groups = unit.compress.conv, unit.shuffle_groups
            if groups == 1 or (conv.groups > 1 and unit.stride == 1):
                continue
            order = shuffle_order(conv.out_channels, groups)
            if conv.groups == 1:
                permute_outputs(conv, order)
            else:
                permute_outputs(unit.depthwise.conv, sorted(range(len(order)), key=order.__getitem__))
                unit.depthwise.append(ChannelShuffle(groups))
            unit.shuffle_groups = 1
    return model


def optimize(model: nn.Module) -> nn.Module:
    """The exact inference rewrite of ``model`` (a copy in eval mode; metadata attributes kept)."""
    if isinstance(model, ShuffleNetV2) and model.layout == "torchvision":
        optimized = shuffle_free_v2(model)
    elif isinstance(model, ShuffleNetV1):
        optimized = fold_v1_shuffles(model)
    else:
        optimized = fuse_conv_bn(model)
    return optimized.eval()


# -- runtimes compiled per input shape --------------------------------------------------------------
class ShapeCache:
    """Compiles the model once per input shape (a static batch is faster than a dynamic one) and
    runs it; ``compile(shape)`` returns a function of a contiguous float32 array."""

    def __init__(self, compile: Callable[[tuple[int, ...]], Callable[[np.ndarray], np.ndarray]]) -> None:
        self.compile = compile
        self.compiled: dict[tuple[int, ...], Callable] = {}

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        if array.shape not in self.compiled:
            self.compiled[array.shape] = self.compile(array.shape)
        return torch.from_numpy(self.compiled[array.shape](array))


def openvino_config(threads: int | None, **hints: str) -> dict:
    """OpenVINO's CPU settings: fp32 arithmetic, as the model computes it. Left to itself OpenVINO runs
    in bf16 on CPUs with native bf16 (AVX512_BF16, AMX), where logits then move by ~1e-2."""
    return {"INFERENCE_PRECISION_HINT": "f32", **hints, **({"INFERENCE_NUM_THREADS": threads} if threads else {})}


def static_openvino(proto: onnx.ModelProto, threads: int | None) -> ShapeCache:
    import openvino as ov

    core = ov.Core()
    blob = proto.SerializeToString()
    config = openvino_config(threads, PERFORMANCE_HINT="LATENCY")

    def compile(shape):
        model = core.read_model(blob)
        model.reshape({0: list(shape)})
        request = core.compile_model(model, "CPU", config).create_infer_request()
        # share_inputs avoids copying the input; the output is copied because the request reuses it
        return lambda array: np.array(request.infer({0: array}, share_inputs=True, share_outputs=True)[0])

    return ShapeCache(compile)


def static_onnxruntime(proto: onnx.ModelProto, threads: int | None) -> ShapeCache:
    import onnxruntime as ort

    def compile(shape):
        static = copy.deepcopy(proto)
        for dim, size in zip(static.graph.input[0].type.tensor_type.shape.dim, shape):
            dim.Clear()
            dim.dim_value = size
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(static.SerializeToString(), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda array: session.run(None, {name: array})[0]

    return ShapeCache(compile)


def installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def fast_engine() -> str:
    """The runtime the fast path uses on the CPU here: openvino, onnxruntime or torch."""
    return next((m for m in ("openvino", "onnxruntime") if installed(m)), "torch")


def static_runner(proto: onnx.ModelProto, threads: int | None, engine: str) -> ShapeCache:
    return (static_openvino if engine == "openvino" else static_onnxruntime)(proto, threads)


def channels_last_runner(model: nn.Module, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The rewritten model in PyTorch, channels_last (oneDNN's preferred layout on CPU)."""
    model = model.to(device, memory_format=torch.channels_last)

    @torch.inference_mode()
    def run(batch: torch.Tensor) -> torch.Tensor:
        return model(batch.to(device, memory_format=torch.channels_last)).float().cpu()

    return run
