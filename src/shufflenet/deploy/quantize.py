"""Static INT8 quantization with ONNX Runtime: QDQ format, per-channel weights, calibrated on images.

Weights are signed int8 per output channel, activations unsigned int8 per tensor (U8S8, ONNX
Runtime's fast x86 path). Without AVX-512 VNNI, x86 runs U8S8 through VPMADDUBSW, whose 16-bit
intermediate sums can saturate; ``reduce_range=True`` (7-bit weights) avoids that at a small
accuracy cost. ``auto`` picks it when the CPU lacks VNNI (see docs/deployment.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from ..data.preprocess import Preprocessing
from ..errors import UserError
from .export import INPUT_NAME, int8_scheme, set_metadata


def calibration_sample(images: Sequence[Path], count: int) -> list[Path]:
    """``count`` images evenly spaced over the sorted list: from an ImageFolder tree the first
    ``count`` would all be one class, and a one-class calibration sets the wrong ranges."""
    n = min(count, len(images))
    return [images[i * len(images) // n] for i in range(n)]


def cpu_has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: assume a recent CPU
        return True
    return any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def image_batches(images: Sequence[Path], preprocessing: Preprocessing, batch_size: int = 16) -> Iterator[np.ndarray]:
    """Calibration batches: the images preprocessed as the model expects."""
    from ..inference import load_image  # inference imports deploy, so import on use

    if not images:
        raise UserError("INT8 calibration needs at least one image (--calib DIR)")
    transform = preprocessing.transform()
    return (
        torch.stack([transform(load_image(p)) for p in images[start : start + batch_size]]).numpy()
        for start in range(0, len(images), batch_size)
    )


class BatchReader(CalibrationDataReader):
    def __init__(self, batches: Iterable[np.ndarray]) -> None:
        self.batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def module_nodes(graph: onnx.GraphProto, modules: Sequence[str]) -> list[str]:
    """Names of the nodes exported from ``modules`` (qualified names: ``stem``, ``stages.0``, ``head.fc``)."""
    paths = {n.name: node_module(n.name) for n in graph.node}
    found = []
    for module in modules:
        nodes = [name for name, path in paths.items() if path == module or path.startswith(module + ".")]
        if not nodes:
            top = sorted({path.split(".")[0] for path in paths.values() if path} - {""})
            raise UserError(f"no module {module!r} in the exported graph; its top-level modules: {', '.join(top)}")
        found += nodes
    return found


def node_module(node_name: str) -> str:
    """The qualified name of the module a node was exported from. The exporter names each scope by
    its attribute, but a container's child as ``container.index``, which then replaces the container:
    ``/stages.1/stages.1.3/branch_main/branch_main.0/conv/Conv`` is ``stages.1.3.branch_main.0.conv``."""
    parts: list[str] = []
    for scope in node_name.split("/")[1:-1]:
        if parts and scope.startswith(parts[-1] + "."):
            parts[-1] = scope
        else:
            parts.append(scope)
    return ".".join(parts)


def quantize_onnx(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration_batches: Iterable[np.ndarray],
    reduce_range: bool | None = None,
    keep_float: Sequence[str] = (),
) -> onnx.ModelProto:
    """Write a statically quantized copy of the fp32 ONNX model at ``fp32_path`` to ``out_path``.

    ``calibration_batches`` are preprocessed inputs (N, 3, H, W), e.g. from ``image_batches``;
    ``reduce_range=None`` chooses 7-bit weights exactly when this CPU has no VNNI; ``keep_float``
    names modules (``stem``, ``head``, ``stages.0``) left in float, the usual remedy when a small
    model loses too much in INT8 (keep the first conv in float: Tencent/ncnn#571).
    """
    fp32 = onnx.load(str(fp32_path))
    reduce_range = not cpu_has_vnni() if reduce_range is None else reduce_range
    quantize_static(
        str(fp32_path), str(out_path), BatchReader(calibration_batches),
        quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        nodes_to_exclude=module_nodes(fp32.graph, keep_float),
    )
    quantized = onnx.load(str(out_path))  # quantize_static drops the metadata: put it back
    props = {p.key: p.value for p in fp32.metadata_props}
    scheme = int8_scheme(reduce_range, f"float={','.join(keep_float)}" if keep_float else "")
    set_metadata(quantized, {**props, "quantization": scheme})
    onnx.save(quantized, str(out_path))
    return quantized
