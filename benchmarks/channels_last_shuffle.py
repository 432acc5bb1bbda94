"""Training step time of a channels_last V1 with the NCHW channel shuffle against ours (NHWC kept).

    python benchmarks/channels_last_shuffle.py [--model shufflenet_v1_g3_x0_5] [--rounds 6]

The NCHW shuffle is the usual reshape/transpose, which hands a channels_last network an NCHW tensor
before every group conv. Rounds alternate the two so that machine noise hits both; one thread.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import shufflenet
from shufflenet.models import v1


def nchw_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    _, channels, height, width = x.shape
    return x.reshape(-1, groups, channels // groups, height * width).transpose(1, 2).reshape(-1, channels, height, width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shufflenet_v1_g3_x0_5")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = shufflenet.get_model(args.model).to(memory_format=torch.channels_last)
    x = torch.randn(16, 3, 96, 96).to(memory_format=torch.channels_last)

    def step() -> None:
        model.zero_grad()
        model(x).logsumexp(1).sum().backward()

    variants = {"NCHW shuffle": nchw_shuffle, "ours (keeps NHWC)": v1.channel_shuffle}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, shuffle in variants.items():
            v1.channel_shuffle, kept = shuffle, v1.channel_shuffle  # the unit calls the module-level name
            step()
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - start) / args.steps * 1000)
            v1.channel_shuffle = kept
    for name, values in times.items():
        print(f"{name:18s} median {statistics.median(values):6.1f} ms per forward+backward (batch 16, 96 px)")
    ratio = statistics.median(times["NCHW shuffle"]) / statistics.median(times["ours (keeps NHWC)"])
    print(f"speed-up {ratio:.2f}x")


if __name__ == "__main__":
    main()
