"""Deployment: BN folding, ONNX/TorchScript export, INT8 quantization, runtimes and benchmarks."""

from .export import export_onnx, export_torchscript, max_tensor_rank, read_metadata, to_onnx
from .fuse import fuse_conv_bn
from .runtimes import BACKENDS, Runtime, load_runtime

__all__ = [
    "BACKENDS", "Runtime", "export_onnx", "export_torchscript", "fuse_conv_bn", "load_runtime",
    "max_tensor_rank", "read_metadata", "to_onnx",
]
