"""Latency and throughput of one model across backends, measured the same way for each.

Every variant is a factory ``batch_size -> (zero-argument call, device)``; the call runs one
forward pass on a prepared input, so input preparation is outside the timed region. CUDA work is
synchronised before each clock read.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..engine.distributed import resolve_device
from ..errors import UserError
from .export import example_input, export_onnx
from .fastpath import fast_engine, optimize
from .quantize import quantize_onnx
from .runtimes import load_runtime, openvino_runner, ort_runner

VARIANTS = ("fast", "eager", "fused", "compile", "onnxruntime", "openvino", "int8")
Call = Callable[[], object]


def openvino_installed() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def default_variants() -> tuple[str, ...]:
    return tuple(v for v in VARIANTS if v != "openvino" or openvino_installed())


def time_call(call: Call, warmup: int, iters: int, cuda: bool) -> list[float]:
    """Seconds per call, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(iters):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def cuda_graphed(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Call:
    """Capture ``forward(x)`` once in a CUDA graph; each call replays it (no per-kernel launch cost)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires
        for _ in range(3):
            forward(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        forward(x)
    return graph.replay


class VariantFactory:
    """Builds each variant once (export, quantization, compilation) and a call per batch size.

    A built variant is ``(forward, where it runs, memory format)``; the format is ``None`` for
    the ONNX runtimes, which take CPU tensors.
    """

    def __init__(self, model: nn.Module, device: torch.device, threads: int | None, cuda_graphs: bool, workdir: Path):
        self.model, self.device, self.threads = model.eval(), device, threads
        self.cuda_graphs = cuda_graphs and device.type == "cuda"
        self.workdir = workdir
        self._built: dict[str, tuple] = {}

    def call(self, variant: str, batch_size: int) -> tuple[Call, str]:
        if variant not in self._built:
            self._built[variant] = getattr(self, f"_build_{variant}")()
        forward, where, layout = self._built[variant]
        x = example_input(self.model, batch_size)
        if layout is None:  # an ONNX runtime: takes the CPU tensor
            return (lambda: forward(x)), where
        x = x.to(self.device, memory_format=layout)
        return (cuda_graphed(forward, x) if self.cuda_graphs else lambda: forward(x)), where

    # -- torch -----------------------------------------------------------------------------------
    def _torch(self, model: nn.Module, layout: torch.memory_format) -> tuple:
        model = model.to(self.device, memory_format=layout).eval()
        where = self.device.type + (" graph" if self.cuda_graphs else "")
        return torch.inference_mode()(model), where, layout

    def _build_eager(self) -> tuple:
        return self._torch(self.model, torch.contiguous_format)

    def _build_fused(self) -> tuple:
        return self._torch(optimize(self.model), torch.channels_last)

    def _build_compile(self) -> tuple:
        forward, where, layout = self._torch(optimize(self.model), torch.channels_last)
        return torch.compile(forward), where, layout

    def _build_fast(self) -> tuple:
        """What ``predict`` runs by default (``load_runtime(..., "fast")``)."""
        if self.device.type != "cpu":
            return self._build_fused()
        return load_runtime(self.model, "fast", threads=self.threads), f"cpu {fast_engine()}", None

    # -- ONNX backends ---------------------------------------------------------------------------
    def _fp32_onnx(self) -> Path:
        path = self.workdir / "model.onnx"
        if not path.exists():
            export_onnx(self.model, path, dynamic_batch=True)
        return path

    def _build_onnxruntime(self) -> tuple:
        import onnx

        ort_device = "cuda" if self.device.type == "cuda" else "cpu"
        return ort_runner(onnx.load(str(self._fp32_onnx())), ort_device, self.threads), f"{ort_device} ort", None

    def _build_openvino(self) -> tuple:
        import onnx

        return openvino_runner(onnx.load(str(self._fp32_onnx())), "CPU", self.threads), "cpu openvino", None

    def _build_int8(self) -> tuple:
        """ORT INT8 on the CPU; random calibration data: it sets the scales, not the speed."""
        path = self.workdir / "model.int8.onnx"
        batches = (example_input(self.model, 8).numpy() for _ in range(2))
        proto = quantize_onnx(self._fp32_onnx(), path, batches)
        return ort_runner(proto, "cpu", self.threads), "cpu ort", None


def benchmark(
    model: nn.Module,
    variants: tuple[str, ...] = VARIANTS,
    batch_sizes: tuple[int, ...] = (1, 8, 32),
    device: str | None = None,
    threads: int | None = None,
    warmup: int = 10,
    iters: int = 50,
    cuda_graphs: bool = False,
) -> list[dict]:
    """One row per (variant, batch size): median and p90 latency in ms and images per second."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise UserError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if threads:
        torch.set_num_threads(threads)
    # Randomly initialised weights drive activations into denormal floats, which x86 handles
    # ~20x slower; trained weights do not. Flushing them to zero measures the real speed.
    torch.set_flush_denormal(True)
    target = resolve_device(device)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        factory = VariantFactory(model, target, threads, cuda_graphs, Path(workdir))
        for variant in variants:
            for batch_size in batch_sizes:
                call, where = factory.call(variant, batch_size)
                times = time_call(call, warmup, iters, cuda=target.type == "cuda")
                median = statistics.median(times)
                rows.append({
                    "model": getattr(model, "model_name", None) or type(model).__name__,
                    "backend": variant,
                    "device": where,
                    "batch_size": batch_size,
                    "median_ms": 1000 * median,
                    "p90_ms": 1000 * float(np.percentile(times, 90)),
                    "images_per_s": batch_size / median,
                })
    return rows
