"""One interface over PyTorch, ONNX Runtime and OpenVINO: a callable batch -> logits plus metadata.

``load_runtime(source, backend)`` accepts a model name (``name.tag``), a checkpoint, an ``.onnx``
file (fp32 or INT8, e.g. from ``shufflenet export``) or an ``nn.Module``. The preprocessing and
class names come from the model's attributes or the ONNX metadata, so evaluation (``shufflenet
test``) and prediction treat every kind of file alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from ..data.preprocess import IMAGENET, Preprocessing
from ..engine.distributed import resolve_device
from ..errors import UserError
from ..weights import load_model
from . import fastpath
from .export import read_metadata, to_onnx

BACKENDS = ("fast", "torch", "onnxruntime", "openvino")


@dataclass
class Runtime:
    """``runtime(batch)``: float (N, 3, H, W) tensor -> float logits (N, classes) on the CPU."""

    run: Callable[[torch.Tensor], torch.Tensor]
    backend: str
    preprocessing: Preprocessing = IMAGENET
    class_names: tuple[str, ...] | None = None
    model_name: str | None = None

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.run(batch)


def load_torch_model(source: str | Path | nn.Module) -> nn.Module:
    """An ``nn.Module`` in eval mode from a module, a name (its pretrained weights, ``name.tag``)
    or a checkpoint path in any supported format."""
    if isinstance(source, nn.Module):
        return source.eval()
    return load_model(source)


def is_onnx_file(source: object) -> bool:
    return isinstance(source, (str, Path)) and str(source).lower().endswith(".onnx")


def load_onnx(path: str | Path) -> onnx.ModelProto:
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)  # protobuf parses many a stray file as an empty model
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except Exception as error:  # onnx raises protobuf DecodeError, ValidationError and others for a corrupt file
        raise UserError(f"{path}: not a valid ONNX model ({str(error).strip()})") from None
    return proto


def load_runtime(
    source: str | Path | nn.Module,
    backend: str = "torch",
    device: str | None = None,
    threads: int | None = None,
) -> Runtime:
    """Load ``source`` for ``backend``; an ``.onnx`` file always runs on an ONNX backend
    (``torch`` then means ONNX Runtime). Other sources are exported to ONNX in memory for the
    ONNX backends (BN folded, dynamic batch). ``fast`` is the rewritten model (``fastpath``) on
    OpenVINO or ONNX Runtime compiled per batch shape, or in PyTorch on CUDA or without either."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if threads is not None and threads < 1:
        raise UserError(f"threads must be at least 1, got {threads}")
    resolve_device(device)  # one message for a bad or missing device, whichever backend runs
    if backend == "fast":
        return fast_runtime(source, device, threads)
    if is_onnx_file(source):
        proto, backend = load_onnx(source), "onnxruntime" if backend == "torch" else backend
    else:
        model = load_torch_model(source)
        if backend == "torch":
            return torch_runtime(model, device, threads)
        proto = to_onnx(model, dynamic_batch=True)
    runner = ort_runner(proto, device, threads) if backend == "onnxruntime" else openvino_runner(proto, device, threads)
    runner = in_chunks(runner, fixed_batch_size(proto))
    return Runtime(runner, backend, **read_metadata(proto))


def fast_runtime(source: str | Path | nn.Module, device: str | None = None, threads: int | None = None) -> Runtime:
    target, engine = resolve_device(device), fastpath.fast_engine()
    if is_onnx_file(source):  # run as it is (an INT8 file, for instance)
        if engine == "torch":
            raise UserError("backend fast: an .onnx file needs OpenVINO or ONNX Runtime")
        proto = load_onnx(source)
        return Runtime(fastpath.static_runner(proto, threads, engine), "fast", **read_metadata(proto))
    model = fastpath.optimize(load_torch_model(source))
    if engine != "torch" and target.type == "cpu":
        proto = to_onnx(model, dynamic_batch=True)
        return Runtime(fastpath.static_runner(proto, threads, engine), "fast", **read_metadata(proto))
    if threads:
        torch.set_num_threads(threads)
    return model_runtime(fastpath.channels_last_runner(model, target), "fast", model)


def model_runtime(run: Callable[[torch.Tensor], torch.Tensor], backend: str, model: nn.Module) -> Runtime:
    """A runtime with ``model``'s metadata attributes."""
    return Runtime(
        run, backend, getattr(model, "preprocessing", IMAGENET), getattr(model, "class_names", None),
        getattr(model, "model_name", None),
    )


def torch_runtime(model: nn.Module, device: str | None = None, threads: int | None = None) -> Runtime:
    if threads:
        torch.set_num_threads(threads)
    target = resolve_device(device)
    model = model.to(target).eval()

    @torch.inference_mode()
    def run(batch: torch.Tensor) -> torch.Tensor:
        return model(batch.to(target)).float().cpu()

    return model_runtime(run, "torch", model)


def fixed_batch_size(proto: onnx.ModelProto) -> int | None:
    """The batch size an ONNX model was exported for, or None when its batch dimension is dynamic."""
    return proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value or None


def in_chunks(run: Callable[[torch.Tensor], torch.Tensor], size: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Run a model exported for a fixed batch ``size`` (usually 1) on batches of any multiple of it."""
    if size is None:
        return run
    return lambda batch: torch.cat([run(chunk) for chunk in batch.split(size)])


def ort_runner(proto: onnx.ModelProto, device: str | None, threads: int | None) -> Callable:
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device and device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UserError("device cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=providers)
    input_name = session.get_inputs()[0].name

    def run(batch: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        try:
            return torch.from_numpy(session.run(None, {input_name: array})[0])
        except ort.capi.onnxruntime_pybind11_state.InvalidArgument as error:  # e.g. a static file fed another size
            raise UserError(f"the ONNX model rejects an input of shape {tuple(array.shape)}: {error}") from None

    return run


def openvino_runner(proto: onnx.ModelProto, device: str | None, threads: int | None) -> Callable:
    try:
        import openvino as ov
    except ImportError:
        raise UserError("backend openvino: OpenVINO is not installed (pip install 'shufflenet[openvino]')") from None
    core = ov.Core()
    device = (device or "CPU").upper()
    config = fastpath.openvino_config(threads) if device == "CPU" else {}
    compiled = core.compile_model(core.read_model(proto.SerializeToString()), device, config)

    def run(batch: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(np.array(compiled(array)[0]))

    return run
