"""The CIFAR recipe's training augmentation, per image in the loader against the batch on the device.

    python benchmarks/batch_augment.py [--device cuda] [--batch-size 256] [--rounds 5]

Pad-4 crop to 32, flip, TrivialAugmentWide on uint8 CIFAR-10 images from the shipped subset:

- loader: ``data.preprocess.train_transform`` (torchvision v2, one image at a time, seeded per image
  as the dataset does), in this process; a DataLoader spreads it over its workers, so divide by their number;
- batch: ``data.batch_augment.BatchAugment`` on the whole batch on ``--device`` (``data.augment.on_device``).

Rounds alternate so that machine noise hits both; prints images/s per round and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from shufflenet.cli.table import format_table
from shufflenet.data.batch_augment import BatchAugment
from shufflenet.data.datasets import decode_file
from shufflenet.data.preprocess import train_transform

SUBSET = Path(__file__).resolve().parents[1] / "demo" / "cifar10-subset" / "train"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    paths = sorted(SUBSET.rglob("*.jpg"))[: args.batch_size]
    images = torch.stack([decode_file(str(p)) for p in paths])
    seeds = torch.arange(len(images))
    per_image = train_transform("pad", 32, padding=4, hflip=0.5, auto_augment="trivial_augment_wide")
    batched = BatchAugment(32, 4, 0.5, trivial_augment=True, interpolation="bilinear")

    def loader_path() -> None:
        for image, seed in zip(images, seeds.tolist()):
            torch.manual_seed(seed)
            per_image(image)

    on_device = images.to(device)

    def batch_path() -> None:
        batched(on_device, seeds)
        if device.type == "cuda":
            torch.cuda.synchronize()

    batch_path()  # warm-up: kernels, caches
    rows, speeds = [], {"loader": [], "batch": []}
    for round_ in range(args.rounds):
        for name, run in (("loader", loader_path), ("batch", batch_path)):
            start = time.perf_counter()
            run()
            speeds[name].append(len(images) / (time.perf_counter() - start))
            rows.append([round_ + 1, name, "cpu" if name == "loader" else str(device), f"{speeds[name][-1]:,.0f}"])
    print(format_table(["round", "path", "device", "img/s"], rows))
    loader, batch = statistics.median(speeds["loader"]), statistics.median(speeds["batch"])
    print(f"median: loader {loader:,.0f} img/s per process, batch {batch:,.0f} img/s on {device}: {batch / loader:.1f}x")


if __name__ == "__main__":
    main()
