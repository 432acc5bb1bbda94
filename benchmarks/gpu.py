"""GPU speed of ShuffleNet V2 x1.0: torchvision's model (the peer) against ours, side by side.

    python benchmarks/gpu.py                       # all four sections, about 4 minutes on an H100
    python benchmarks/gpu.py --only latency,infer

Four sections, each timing the peer and ours in alternating rounds after an untimed warm-up
(compilation included there), and each printing its ratio last:

- ``train``: optimizer steps on synthetic 224 px batches (256), SGD with momentum, bf16 autocast,
  channels_last, ``torch.compile``, the same settings for both. Ours is the model that
  ``shufflenet train`` builds (V2 in its even/odd routing, ``train.even_odd_routing``).
- ``infer``: forward passes at batch 1024, bf16, channels_last, under ``inference_mode``. The peer
  is torchvision's model as a user runs it (eager); ours is the exact inference rewrite
  (``deploy.fastpath.optimize``: BN folded, no shuffle left) compiled by ``torch.compile``.
- ``latency``: batch 1, fp32. The peer is torchvision's eager model; ours is the rewrite captured
  in one CUDA graph (``deploy.bench.cuda_graphed``, the capture ``shufflenet bench --cuda-graphs`` uses).
- ``decode``: the data pipeline for 224 px training, measured apart from the model: JPEGs of about
  ImageNet's size (CIFAR-10 val images upscaled to 400x320 and encoded at quality 90; one size, so
  the GPU side can batch its crops without padding) decoded and RandomResizedCrop-ed to 224, either on the CPU by a DataLoader with
  ``--workers`` processes (the peer) or on the GPU by nvJPEG (``torchvision.io.decode_jpeg`` with
  ``device="cuda"``, batched) followed by a batched crop-and-resize on the GPU (ours).
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torch import nn
from torch.nn import functional as F
from torchvision.io import decode_jpeg
from torchvision.transforms import v2

from shufflenet import get_model
from shufflenet.cli.table import format_table
from shufflenet.deploy.bench import cuda_graphed
from shufflenet.deploy.fastpath import optimize
from shufflenet.engine.builders import routed

REPO = Path(__file__).resolve().parents[1]
Run = Callable[[], int]  # one timed unit of work; returns the images it processed


def peer_model() -> nn.Module:
    return torchvision.models.shufflenet_v2_x1_0()


def our_model() -> nn.Module:
    return get_model("shufflenet_v2_x1_0")


# -- the four sections: each returns {side: build} where build() -> Run --------------------------------
def train_section(batch: int) -> dict[str, Callable[[], Run]]:
    def build(model: nn.Module) -> Run:
        model = model.cuda().to(memory_format=torch.channels_last).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=4e-5, fused=True)
        forward = torch.compile(model)
        images = torch.randn(batch, 3, 224, 224, device="cuda").to(memory_format=torch.channels_last)
        labels = torch.randint(0, 1000, (batch,), device="cuda")

        def step() -> int:
            with torch.autocast("cuda", torch.bfloat16):
                loss = F.cross_entropy(forward(images), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return batch

        return step

    return {"peer: torchvision, compiled": lambda: build(peer_model()),
            "ours: even/odd routing, compiled": lambda: build(routed(our_model(), "even_odd"))}


def infer_section(batch: int) -> dict[str, Callable[[], Run]]:
    def build(model: nn.Module, compile_: bool) -> Run:
        model = model.cuda().to(memory_format=torch.channels_last).eval()
        forward = torch.compile(model) if compile_ else model
        images = torch.randn(batch, 3, 224, 224, device="cuda").to(memory_format=torch.channels_last)

        @torch.inference_mode()
        def run() -> int:
            with torch.autocast("cuda", torch.bfloat16):
                forward(images)
            return batch

        return run

    return {"peer: torchvision eager": lambda: build(peer_model(), False),
            "ours: optimized, compiled": lambda: build(optimize(our_model()), True)}


def latency_section() -> dict[str, Callable[[], Run]]:
    def build(model: nn.Module, graph: bool) -> Run:
        model = model.cuda().eval()
        image = torch.randn(1, 3, 224, 224, device="cuda")
        forward = torch.inference_mode()(model)
        call = cuda_graphed(forward, image) if graph else (lambda: forward(image))

        def run() -> int:
            call()
            return 1

        return run

    return {"peer: torchvision eager": lambda: build(peer_model(), False),
            "ours: optimized, CUDA graph": lambda: build(optimize(our_model()), True)}


def sample_jpegs(count: int) -> list[bytes]:
    """``count`` encoded JPEGs of about ImageNet's size (see the module docstring)."""
    val = REPO / "demo" / "cifar10-subset" / "val"
    sources = sorted(val.rglob("*.jpg"))
    blobs = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.open(sources[i % len(sources)]).convert("RGB").resize((400, 320), Image.BICUBIC).save(buffer, "JPEG", quality=90)
        blobs.append(buffer.getvalue())
    return blobs


class CpuJpegs(torch.utils.data.Dataset):
    def __init__(self, blobs: list[bytes]) -> None:
        self.blobs = blobs
        self.augment = v2.Compose([v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.augment(decode_jpeg(torch.frombuffer(bytearray(self.blobs[i]), dtype=torch.uint8)))


def gpu_random_resized_crop(images: list[torch.Tensor], size: int) -> torch.Tensor:
    """RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) and flip of decoded GPU images, as one batch:
    each crop box becomes an affine grid, and one ``grid_sample`` resizes them all."""
    thetas = []
    for image in images:
        top, left, h, w = v2.RandomResizedCrop.get_params(image, (0.08, 1.0), (3 / 4, 4 / 3))
        H, W = image.shape[-2:]
        flip = -1.0 if torch.rand(()) < 0.5 else 1.0
        thetas.append([[flip * w / W, 0.0, (2 * left + w) / W - 1], [0.0, h / H, (2 * top + h) / H - 1]])
    theta = torch.tensor(thetas, device="cuda")
    same_size = torch.stack(images).float()  # the sample JPEGs share one size
    grid = F.affine_grid(theta, [len(images), 3, size, size], align_corners=False)
    return F.grid_sample(same_size, grid, mode="bilinear", align_corners=False).to(torch.uint8)


def decode_section(batch: int, workers: int) -> dict[str, Callable[[], Run]]:
    blobs = sample_jpegs(batch * 8)

    def cpu() -> Run:
        loader = torch.utils.data.DataLoader(CpuJpegs(blobs), batch_size=batch, shuffle=True, num_workers=workers,
                                             persistent_workers=True, pin_memory=True, drop_last=True)
        batches = iter(())

        def run() -> int:
            nonlocal batches
            try:
                images = next(batches)
            except StopIteration:
                batches = iter(loader)
                images = next(batches)
            images.cuda(non_blocking=True)
            return len(images)

        return run

    def gpu() -> Run:
        encoded = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        position = 0

        def run() -> int:
            nonlocal position
            chunk = encoded[position : position + batch]
            position = (position + batch) % len(encoded)
            gpu_random_resized_crop(decode_jpeg(chunk, device="cuda"), 224)
            return batch

        return run

    return {f"peer: CPU decode, {workers} workers": cpu, "ours: GPU decode (nvJPEG)": gpu}


# -- timing ---------------------------------------------------------------------------------------------
def images_per_second(run: Run, seconds: float) -> float:
    torch.cuda.synchronize()
    start, images = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        images += run()
    torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


def latency_ms(run: Run, seconds: float) -> float:
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.cuda.synchronize()
        t = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def compare(title: str, sides: dict[str, Callable[[], Run]], rounds: int, seconds: float, per_image: bool) -> tuple[str, float]:
    runs = {}
    for name, build in sides.items():
        runs[name] = build()
        images_per_second(runs[name], seconds)  # warm-up: compilation, autotuning, cuDNN plans, workers
    measure = latency_ms if per_image else images_per_second
    results: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            results[name].append(measure(run, seconds))
    unit = "median ms" if per_image else "images/s"
    rows = [[name, f"{statistics.median(v):,.3f}" if per_image else f"{statistics.median(v):,.0f}",
             ", ".join(f"{x:,.3f}" if per_image else f"{x:,.0f}" for x in v)] for name, v in results.items()]
    print(f"\n## {title}\n" + format_table(["side", unit, "rounds"], rows), flush=True)
    peer, ours = (statistics.median(v) for v in results.values())
    return title, (ours / peer if per_image else peer / ours)  # < 1: ours faster


def environment() -> str:
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            check=False, capture_output=True, text=True).stdout.strip()
    return (f"{torch.cuda.get_device_name()}, driver {driver}, CUDA {torch.version.cuda}, torch {torch.__version__}, "
            f"torchvision {torchvision.__version__}, Python {platform.python_version()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="train,infer,latency,decode", help="comma-separated sections")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per side and round")
    parser.add_argument("--train-batch", type=int, default=256)
    parser.add_argument("--infer-batch", type=int, default=1024)
    parser.add_argument("--decode-batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=16, help="DataLoader processes of the CPU decode")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu.py: error: no CUDA device", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    print(environment())
    sections = {
        "train": lambda: (f"training, 224 px, batch {args.train_batch}, bf16", train_section(args.train_batch), False),
        "infer": lambda: (f"inference, 224 px, batch {args.infer_batch}, bf16", infer_section(args.infer_batch), False),
        "latency": lambda: ("latency, batch 1, fp32", latency_section(), True),
        "decode": lambda: (f"JPEG decode + RandomResizedCrop to 224, batch {args.decode_batch}",
                           decode_section(args.decode_batch, args.workers), False),
    }
    ratios = []
    for name in args.only.split(","):
        title, sides, per_image = sections[name]()
        ratios.append(compare(title, sides, args.rounds, args.seconds, per_image))
    print("\nours / peer time (below 1: ours is faster)")
    for title, ratio in ratios:
        print(f"  {title}: {ratio:.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
