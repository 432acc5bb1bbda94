"""ONNX and TorchScript export with BN folded and the preprocessing carried in the file.

The ONNX graph is converter-friendly: ``channel_shuffle`` only builds rank-4 tensors (onnx2tf,
TFLite and Core ML reject the usual 5-D reshape/transpose), V2's channel split is a ``Slice``,
and the batch dimension (and height and width) can be dynamic.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from ..data.preprocess import IMAGENET, Preprocessing
from ..errors import UserError
from .fuse import fuse_conv_bn

ONNX_OPSETS = range(11, 21)  # the TorchScript-based exporter; the dynamo exporter needs onnxscript and opset >= 18
DEFAULT_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def export_preprocessing(model: nn.Module, input_size: int | None = None) -> Preprocessing:
    """The model's preprocessing, cropping to ``input_size`` (resize scaled alike) when a static file is made for it."""
    prep = getattr(model, "preprocessing", IMAGENET)
    if input_size and input_size != prep.crop_size:
        prep = dataclasses.replace(prep, crop_size=input_size, resize_size=round(prep.resize_size * input_size / prep.crop_size))
    return prep


def model_metadata(model: nn.Module, input_size: int | None = None) -> dict[str, str]:
    """What a runtime needs besides the weights, as ONNX ``metadata_props`` strings; ``input_size``:
    the static input the file was exported for (see ``export_preprocessing``)."""
    class_names = getattr(model, "class_names", None)
    qat_levels = getattr(model, "qat_weight_levels", None)  # deploy/qat.py: its fake quantizers export as Q/DQ
    return {
        "model_name": getattr(model, "model_name", None) or type(model).__name__,
        "preprocessing": json.dumps(export_preprocessing(model, input_size).to_dict()),
        **({"class_names": json.dumps(list(class_names))} if class_names else {}),
        **({"quantization": int8_scheme(qat_levels < 127, "aware-training")} if qat_levels else {}),
    }


def int8_scheme(reduce_range: bool, detail: str = "") -> str:
    """The ``quantization`` metadata of an INT8 file (QDQ, per-channel weights), post-training or aware."""
    return f"int8 qdq per-channel reduce_range={reduce_range}" + (f" {detail}" if detail else "")


def read_metadata(proto: onnx.ModelProto) -> dict:
    """``model_name``, ``preprocessing`` and ``class_names`` of an exported file (ImageNet defaults if absent)."""
    props = {p.key: p.value for p in proto.metadata_props}
    names = props.get("class_names")
    return {
        "model_name": props.get("model_name"),
        "preprocessing": Preprocessing.from_dict(json.loads(props["preprocessing"])) if "preprocessing" in props else IMAGENET,
        "class_names": tuple(json.loads(names)) if names else None,
    }


def describe_onnx(proto: onnx.ModelProto) -> dict:
    """An exported file at a glance: its metadata, input shape, opset, quantization and stored weights
    (the elements of its conv and classifier weights and biases, BN folded, int8 or float)."""
    metadata = read_metadata(proto)
    graph = proto.graph
    dims = [d.dim_param or str(d.dim_value) for d in graph.input[0].type.tensor_type.shape.dim]
    weights = {n.input[0] for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}  # int8, fake int8
    weights |= {name for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul") for name in n.input[1:]}
    quantization = {p.key: p.value for p in proto.metadata_props}.get("quantization")
    if not quantization and any(n.op_type == "QuantizeLinear" for n in graph.node):  # a file made elsewhere
        quantization = "int8 qdq"
    class_names = metadata["class_names"]
    return {
        "model": metadata["model_name"],
        "class_names": list(class_names) if class_names else None,
        "params": sum(math.prod(t.dims) for t in graph.initializer if t.name in weights),
        "input": f"{graph.input[0].name} [{', '.join(dims)}]",
        "opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        "quantization": quantization,
        "preprocessing": metadata["preprocessing"].to_dict(),
    }


def set_metadata(proto: onnx.ModelProto, metadata: dict[str, str]) -> None:
    kept = [p for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)


def example_input(model: nn.Module, batch_size: int = 1, input_size: int | None = None) -> torch.Tensor:
    size = input_size or getattr(model, "preprocessing", IMAGENET).crop_size
    return torch.randn(batch_size, 3, size, size)


def to_onnx(
    model: nn.Module,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    input_size: int | None = None,
    dynamic_size: bool = False,
    fp16: bool = False,
) -> onnx.ModelProto:
    """Export ``model`` (BN folded, eval mode) to a checked ONNX model with metadata. ``dynamic_size``
    makes height and width symbolic too: no op has a fixed size (the head pools globally), so any size runs.
    ``fp16`` stores weights and computes in float16 between a float32 input and float32 logits."""
    if opset not in ONNX_OPSETS:
        raise UserError(f"ONNX opset {opset} is not supported; choose {ONNX_OPSETS.start} to {ONNX_OPSETS.stop - 1}")
    fused = fuse_conv_bn(model).cpu()
    if fp16:
        fused = Float16Body(fused)
    buffer = io.BytesIO()
    dynamic_axes: dict[str, dict[int, str]] = {INPUT_NAME: {}, OUTPUT_NAME: {}}
    if dynamic_size:
        dynamic_axes[INPUT_NAME].update({0: "batch", 2: "height", 3: "width"})
        dynamic_axes[OUTPUT_NAME][0] = "batch"
    with warnings.catch_warnings():  # the legacy exporter's deprecation and tracer notes are not the user's concern
        warnings.simplefilter("ignore")
        torch.onnx.export(
            fused, (example_input(model, 1, input_size),), buffer, opset_version=opset, dynamo=False,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    if dynamic_batch and not dynamic_size:
        free_batch_dimension(proto)
    metadata = model_metadata(model, None if dynamic_size else input_size)
    set_metadata(proto, {**metadata, "quantization": "fp16, fp32 input and logits"} if fp16 else metadata)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def free_batch_dimension(proto: onnx.ModelProto) -> None:
    """Make a graph traced at batch 1 take any batch. Every reshape of ours passes the batch on as -1,
    so only the input and output declare it. Tracing with a symbolic batch instead would compute the
    fixed channel and spatial sizes at run time (about 300 Shape/Gather/Unsqueeze/Concat ops in V2:
    20% slower at 32 px, and harder for converters); the traced intermediate shapes are dropped."""
    for value in (proto.graph.input[0], proto.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    del proto.graph.value_info[:]


class Float16Body(nn.Module):
    """The network in float16 between a float32 input and float32 logits: the graph casts at its two
    ends (onnxconverter-common's ``keep_io_types``), so every runtime feeds and reads it as the fp32 file."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half()).float()


def max_tensor_rank(proto: onnx.ModelProto) -> int:
    """The highest rank of any tensor in the graph, after ONNX shape inference."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    graph = inferred.graph
    values = [*graph.input, *graph.output, *graph.value_info]
    ranks = [len(v.type.tensor_type.shape.dim) for v in values if v.type.tensor_type.HasField("shape")]
    ranks += [len(t.dims) for t in graph.initializer]
    return max(ranks)


def export_onnx(model: nn.Module, path: str | Path, **options) -> onnx.ModelProto:
    proto = to_onnx(model, **options)
    onnx.save(proto, str(path))
    return proto


def export_torchscript(model: nn.Module, path: str | Path, input_size: int | None = None) -> None:
    """A traced TorchScript file (BN folded) with the metadata as the extra file ``shufflenet.json``."""
    fused = fuse_conv_bn(model).cpu()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(fused, example_input(model, 1, input_size))
    torch.jit.save(traced, str(path), _extra_files={"shufflenet.json": json.dumps(model_metadata(model, input_size))})
