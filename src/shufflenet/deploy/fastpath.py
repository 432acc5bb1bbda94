"""The fast CPU inference path: exact graph rewrites, then a runtime compiled for the batch shape used.

Rewrites (each keeps the outputs equal to the reference model, tested in tests/test_fastpath.py):
- BatchNorm folded into the convolutions (``fuse_conv_bn``).
- ShuffleNet V2 (torchvision layout) without channel shuffle: each unit's output is stored with its
  channels sorted by *when they are consumed* (by the next unit's branch, the one after, ...). The
  branch input is then a contiguous prefix, the pass-through half a contiguous suffix, and the
  permutations go into the weights of the convolutions that read them; a unit is Split + Concat,
  with no reshape/transpose (OpenVINO's ShuffleChannels) left.
- ShuffleNet V1: the first unit of stage 2 has a dense first 1x1 conv, whose output rows absorb the
  shuffle. The other shuffles sit between two grouped convs and cannot be folded without making
  one of them dense.
Runtime: OpenVINO when installed, else ONNX Runtime, each compiled for the static input shape of
each batch size seen; without either, the rewritten model in PyTorch with channels_last.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from ..models.layers import channel_shuffle
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
class SortedUnitV2(nn.Module):
    """A V2 unit whose input and output channels are stored in consumption order.

    The output is a Concat of pieces taken alternately from two sources, the first (``first``:
    the projection branch, or the passed-through channels) and the main branch; ``first_sizes``
    and ``main_sizes`` split the sources, ``pieces`` lists (source, index) in output order.
    """

    def __init__(self, unit: ShuffleUnitV2, consumed: int, first_sizes, main_sizes, pieces) -> None:
        super().__init__()
        self.stride, self.consumed = unit.stride, consumed
        self.branch_proj = getattr(unit, "branch_proj", None)
        self.branch_main = unit.branch_main
        self.sizes = (list(first_sizes), list(main_sizes))
        self.pieces = list(pieces)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            sources = (self.branch_proj(x), self.branch_main(x))
        else:
            sources = (x[:, self.consumed :], self.branch_main(x[:, : self.consumed]))
        if len(self.pieces) == 2:  # one group: a plain concat
            return torch.cat(sources, 1)
        parts = [s.split(sizes, 1) for s, sizes in zip(sources, self.sizes)]
        return torch.cat([parts[source][index] for source, index in self.pieces], 1)


def group_sizes(times: Sequence[int]) -> list[int]:
    """Sizes of the runs of equal values in sorted ``times``."""
    values = sorted(set(times))
    return [sum(t == v for t in times) for v in values]


def sort_unit(unit: ShuffleUnitV2, stored: list[int], times: list[int]) -> tuple[SortedUnitV2, list[int]]:
    """Rewrite ``unit`` for inputs stored as ``stored`` (storage j holds logical channel stored[j])
    so that its output is sorted by ``times``; return it and the output's storage order.

    The torchvision unit's logical output is ``shuffle(cat(first, main))``: ``first[i]`` is output
    channel ``2i``, ``main[i]`` is ``2i + 1``.
    """
    half = len(times) // 2
    main_conv = unit.branch_main[0].conv
    if unit.stride == 2:
        permute_outputs(unit.branch_proj[0].conv, stored)  # depthwise: follows its input order
        permute_inputs(unit.branch_proj[1].conv, stored)
        permute_inputs(main_conv, stored)
        first = sorted(range(half), key=lambda i: times[2 * i])  # proj output rows, in storage order
        permute_outputs(unit.branch_proj[1].conv, first)
        consumed = len(stored)
    else:
        consumed = sum(c >= half for c in stored)
        permute_inputs(main_conv, [c - half for c in stored[:consumed]])
        first = stored[consumed:]  # passed through in their stored order
        if [times[2 * i] for i in first] != sorted(times[2 * i] for i in first):
            raise AssertionError("pass-through channels must already be in consumption order")
    main = sorted(range(half), key=lambda i: times[2 * i + 1])
    permute_outputs(unit.branch_main[2].conv, main)
    first_times, main_times = [times[2 * i] for i in first], [times[2 * i + 1] for i in main]
    pieces, order = [], []
    offsets = [0, 0]
    for value in sorted(set(times)):
        for source, (indices, source_times) in enumerate(((first, first_times), (main, main_times))):
            count = source_times.count(value)
            if count:
                pieces.append((source, len(set(source_times[: offsets[source]]))))
                order += [2 * i + source for i in indices[offsets[source] : offsets[source] + count]]
                offsets[source] += count
    return SortedUnitV2(unit, consumed, group_sizes(first_times), group_sizes(main_times), pieces), order


def shuffle_free_v2(model: ShuffleNetV2) -> ShuffleNetV2:
    """An exact copy of a torchvision-layout V2 (BN folded) with no channel shuffle left."""
    if model.layout != "torchvision":
        raise ValueError("shuffle_free_v2 rewrites the torchvision layout (Megvii's has no shuffle to remove)")
    model = fuse_conv_bn(convert_routing(model, "shuffle"))
    stored = list(range(model.stem.conv.out_channels))
    for stage in model.stages:
        channels = stage[0].branch_main[2].conv.out_channels * 2
        times = consumption_times(len(stage), channels, "shuffle")
        for u, unit in enumerate(stage):
            stage[u], stored = sort_unit(unit, stored, times[u])
    permute_inputs(model.conv_last.conv, stored)
    return model


# -- ShuffleNet V1 -----------------------------------------------------------------------------------
def fold_v1_dense_shuffle(model: ShuffleNetV1) -> ShuffleNetV1:
    """BN folded, and the shuffle after every dense (ungrouped) first 1x1 conv folded into its rows."""
    model = fuse_conv_bn(model)
    for stage in model.stages:
        for unit in stage:
            conv = unit.compress.conv
            if conv.groups == 1 and unit.shuffle_groups > 1:
                index = torch.arange(conv.out_channels, dtype=torch.float32).view(1, -1, 1, 1)
                permute_outputs(conv, channel_shuffle(index, unit.shuffle_groups).flatten().long().tolist())
                unit.shuffle_groups = 1
    return model


def optimize(model: nn.Module) -> nn.Module:
    """The exact inference rewrite of ``model`` (a copy in eval mode; metadata attributes kept)."""
    if isinstance(model, ShuffleNetV2) and model.layout == "torchvision":
        optimized = shuffle_free_v2(model)
    elif isinstance(model, ShuffleNetV1):
        optimized = fold_v1_dense_shuffle(model)
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


def static_openvino(proto: onnx.ModelProto, threads: int | None) -> ShapeCache:
    import openvino as ov

    core = ov.Core()
    blob = proto.SerializeToString()
    config = {"PERFORMANCE_HINT": "LATENCY", **({"INFERENCE_NUM_THREADS": threads} if threads else {})}

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
