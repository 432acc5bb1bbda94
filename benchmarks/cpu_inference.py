"""CPU batch-1 latency of our fast path against the peers, measured alternately in one run.

    python benchmarks/cpu_inference.py                      # V2 x1.0 and V1 g3 x1.0, 2 threads
    python benchmarks/cpu_inference.py --models v2 --rounds 30

Peers: torchvision's ``shufflenet_v2_x1_0`` and mmpretrain's ShuffleNetV1 (g3, 1.0x, linear head),
each run eagerly in PyTorch and in OpenVINO on its plain ONNX export (``torch.onnx.export``,
``dynamo=False``, opset 17, static batch 1, default compile settings). Ours carries the peer's own
weights (converted), so both sides compute the same function; the largest output difference is
printed. Every variant runs ``--calls`` times per round, rounds alternate over all variants, and a
ratio is taken per round, so load from other processes hits both sides alike; the table gives the
median and the min-max spread over rounds, and the issue's ratios are printed last.

Weights are random, with BatchNorm statistics re-estimated on random images for both sides: a
fresh init shrinks activations layer by layer into denormal floats, which x86 runs ~20x slower
and a trained model never produces. PyTorch also flushes denormals to zero.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from shufflenet import get_model
from shufflenet.cli.table import format_table
from shufflenet.deploy import fuse_conv_bn, load_runtime, to_onnx
from shufflenet.deploy.fastpath import fast_engine, optimize, static_onnxruntime, static_openvino
from shufflenet.deploy.quantize import quantize_onnx
from shufflenet.weights.checkpoint import move_shuffle_before_depthwise
from shufflenet.weights.formats import mmpretrain_to_ours, torchvision_to_ours

SIZE = 224


class LogitsOnly(nn.Module):
    """mmpretrain's classifier as a plain ``x -> logits`` module."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x, mode="tensor")


def calibrated_bn(model: nn.Module) -> nn.Module:
    """Re-estimate BN statistics on random images, so activations keep a trained-like scale."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, SIZE, SIZE))
    return model.eval()


def peer_and_ours(family: str) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    if family == "v2":
        from torchvision.models import shufflenet_v2_x1_0

        peer, name, convert = shufflenet_v2_x1_0(), "shufflenet_v2_x1_0", torchvision_to_ours
    else:
        from mmpretrain import get_model as mm_model

        peer, name = LogitsOnly(mm_model("shufflenet-v1-1x_16xb64_in1k")), "shufflenet_v1_g3_x1_0"

        def convert(state):  # mmpretrain shuffles after the depthwise conv, we shuffle before it
            state = mmpretrain_to_ours({k.removeprefix("classifier."): v for k, v in state.items()})
            return move_shuffle_before_depthwise(ours, state)

    peer = calibrated_bn(peer)
    ours = get_model(name)
    ours.load_state_dict(convert(peer.state_dict()))
    return peer, ours.eval()


def plain_onnx(model: nn.Module) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, SIZE, SIZE),), buffer, opset_version=17, dynamo=False)
    return buffer.getvalue()


def openvino_default(blob: bytes, threads: int, precision: str | None = "f32") -> Callable[[np.ndarray], object]:
    """The peer's deployment: OpenVINO's default compile settings, one infer request; in fp32 like ours
    unless ``precision`` is None (OpenVINO's own default: bf16 on CPUs with native bf16)."""
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, **({"INFERENCE_PRECISION_HINT": precision} if precision else {})}
    request = core.compile_model(core.read_model(blob), "CPU", config).create_infer_request()
    return lambda array: request.infer({0: array}, share_inputs=True, share_outputs=True)[0]


def openvino_default_precision() -> str:
    import openvino as ov

    return ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()


def on_input(run: Callable, x: object) -> Callable[[], object]:
    return lambda: run(x)


def variants(peer: nn.Module, ours: nn.Module, threads: int, workdir: Path, int8: bool) -> dict[str, Callable]:
    """name -> zero-argument call; after the first three, the optimisation steps in order."""
    x = torch.randn(1, 3, SIZE, SIZE)
    fast_proto = to_onnx(optimize(ours))
    channels_last = optimize(ours).to(memory_format=torch.channels_last)
    calls = {  # the two compared most closely come first, in adjacent turns
        "peer OpenVINO (plain export, fp32)": on_input(openvino_default(plain_onnx(peer), threads), x.numpy()),
        f"ours fast path ({fast_engine()}, rewritten)": on_input(load_runtime(ours, "fast", threads=threads), x),
        "peer eager (PyTorch)": on_input(torch.inference_mode()(peer), x),
        "ours eager, rewritten + channels_last": on_input(
            torch.inference_mode()(channels_last), x.contiguous(memory_format=torch.channels_last)),
        "ours OpenVINO, BN folded, dynamic batch": on_input(load_runtime(ours, "openvino", threads=threads), x),
        "ours OpenVINO, BN folded, static shape": on_input(static_openvino(to_onnx(fuse_conv_bn(ours)), threads), x),
        "ours ONNX Runtime, rewritten, static shape": on_input(static_onnxruntime(fast_proto, threads), x),
    }
    default = openvino_default_precision()
    if default != "f32":  # this CPU computes in bf16 natively: the peer as OpenVINO runs it when not told otherwise
        calls[f"peer OpenVINO, its default precision ({default})"] = on_input(openvino_default(plain_onnx(peer), threads, None), x.numpy())
    if int8:
        fp32_path, int8_path = workdir / "fast.onnx", workdir / "fast.int8.onnx"
        fp32_path.write_bytes(fast_proto.SerializeToString())
        batches = (torch.randn(1, 3, SIZE, SIZE).numpy() for _ in range(8))  # sets scales; speed is what is measured
        int8_proto = quantize_onnx(fp32_path, int8_path, batches)
        calls["ours INT8 QDQ, ONNX Runtime"] = on_input(static_onnxruntime(int8_proto, threads), x)
        calls["ours INT8 QDQ, fast path"] = on_input(load_runtime(int8_path, "fast", threads=threads), x)
    return calls


def measure(runners: dict[str, Callable], rounds: int, calls: int, settle: int = 3) -> dict[str, list[float]]:
    """Per variant, the median seconds per call of each round. Rounds alternate over the variants,
    in reverse order every other round; each turn starts with ``settle`` untimed calls, because
    the previous runtime's worker threads keep spinning for a while after its last call."""
    medians = {name: [] for name in runners}
    for round_index in range(rounds):
        order = list(runners) if round_index % 2 == 0 else list(reversed(runners))
        for name in order:
            for _ in range(settle):
                runners[name]()
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                runners[name]()
                times.append(time.perf_counter() - start)
            medians[name].append(statistics.median(times))
    return medians


def max_difference(peer: nn.Module, ours: nn.Module, threads: int) -> float:
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        return (peer(x) - load_runtime(ours, "fast", threads=threads)(x)).abs().max().item()


def report(family: str, medians: dict[str, list[float]]) -> list[str]:
    names = list(medians)
    peer_ov = medians["peer OpenVINO (plain export, fp32)"]
    rows = []
    for name in names:
        ratios = [t / p for t, p in zip(medians[name], peer_ov)]
        rows.append([
            family, name, f"{1000 * statistics.median(medians[name]):.2f}",
            f"{statistics.median(ratios):.3f}", f"{min(ratios):.3f}-{max(ratios):.3f}",
        ])
    print(format_table(["model", "variant", "median ms", "x peer OpenVINO", "spread over rounds"], rows))
    fast = next(n for n in names if n.startswith("ours fast path"))
    lines = [
        f"{family}: ours/peer-OpenVINO = {ratio(medians[fast], peer_ov)}",
        f"{family}: peer-eager/ours = {ratio(medians['peer eager (PyTorch)'], medians[fast])}",
    ]
    int8 = [n for n in names if "INT8" in n]
    if int8:
        best = min(int8, key=lambda n: statistics.median(medians[n]))
        lines.append(f"{family}: int8/peer-OpenVINO = {ratio(medians[best], peer_ov)} ({best})")
    return lines


def ratio(numerator: list[float], denominator: list[float]) -> str:
    ratios = [a / b for a, b in zip(numerator, denominator)]
    return f"{statistics.median(ratios):.3f} (rounds {min(ratios):.3f}-{max(ratios):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="v2,v1", help="comma-separated: v2 (x1.0), v1 (g3 x1.0)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=20, help="timed calls per variant per round")
    parser.add_argument("--no-int8", dest="int8", action="store_false")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    summary = []
    with tempfile.TemporaryDirectory() as workdir:
        for family in args.models.split(","):
            peer, ours = peer_and_ours(family)
            print(f"{family}: max |peer - ours fast path| = {max_difference(peer, ours, args.threads):.2e}")
            runners = variants(peer, ours, args.threads, Path(workdir), args.int8)
            summary += report(family, measure(runners, args.rounds, args.calls))
    print("\n".join(summary))


if __name__ == "__main__":
    main()
