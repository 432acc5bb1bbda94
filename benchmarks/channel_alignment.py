"""Batch-1 CPU latency of ShuffleNet V2 1.0x at the paper's widths against hardware-aligned ones.

    python benchmarks/channel_alignment.py [--threads 1] [--rounds 5] [--backend fast]

The paper's 1.0x has 116/232/464 channels per stage, so each branch is 58/116/232 wide, a multiple of
2 only; NanoDet found such a model slower on ncnn than a wider one (RangiLyu/nanodet#220). Each
variant is ``ShuffleNetV2(stage_widths=...)`` with random weights (BN re-estimated on random images, so
no denormals), run through ``load_runtime(model, backend)``; rounds alternate over the variants.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from cpu_inference import SIZE, calibrated_bn, measure  # the sibling script's helpers

from shufflenet import complexity
from shufflenet.cli.table import format_table
from shufflenet.deploy import load_runtime
from shufflenet.models import ShuffleNetV2

PLANS = {  # stem, stages 2-4, conv5
    "paper 116/232/464": (24, 116, 232, 464, 1024),
    "112/224/448 (branch /8)": (24, 112, 224, 448, 1024),
    "120/240/480 (branch /4)": (24, 120, 240, 480, 1024),
    "128/256/512 (branch /64)": (24, 128, 256, 512, 1024),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--backend", default="fast", help="fast, onnxruntime, openvino or torch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    models = {label: calibrated_bn(ShuffleNetV2(stage_widths=plan)) for label, plan in PLANS.items()}
    x = torch.randn(1, 3, SIZE, SIZE)
    runners = {}
    for label, model in models.items():
        runtime = load_runtime(model, args.backend, threads=args.threads)
        runners[label] = lambda runtime=runtime: runtime(x)
    medians = measure(runners, args.rounds, args.calls)
    base = statistics.median(medians["paper 116/232/464"])
    rows = []
    for label, model in models.items():
        size = complexity(model, SIZE)
        ms = statistics.median(medians[label]) * 1000
        spread = f"{min(medians[label]) * 1000:.2f}-{max(medians[label]) * 1000:.2f}"
        rows.append([label, f"{size.params / 1e6:.3f}", f"{size.macs / 1e6:.1f}", f"{ms:.2f}", spread, f"{base * 1000 / ms:.2f}x"])
    print(f"backend {args.backend}, {args.threads} thread(s), batch 1, {SIZE} px, {args.rounds} rounds of {args.calls} calls")
    print(format_table(["stage widths", "params (M)", "MMACs", "median ms", "round medians", "speed vs paper"], rows))


if __name__ == "__main__":
    main()
