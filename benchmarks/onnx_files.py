"""Batch-1 latency of ONNX files side by side in ONNX Runtime: two exports of one model, for instance.

    python benchmarks/onnx_files.py A.onnx B.onnx ... [--size 32] [--threads 1] [--rounds 7] [--calls 200]

Each file runs in its own plain ``InferenceSession`` (default optimisations, nothing of ours around
it), on one random image; rounds alternate over the files (``cpu_inference.measure``). Used in
docs/deployment.md for the dynamic-batch export and for quantization-aware training's INT8 files.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import onnxruntime as ort
from cpu_inference import measure  # the sibling script's helper

from shufflenet.cli.table import format_table


def runner(path: Path, size: int, threads: int):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal((1, 3, size, size), np.float32)}
    return lambda: session.run(None, feed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--size", type=int, default=32, help="input height and width")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    runners = {str(path): runner(path, args.size, args.threads) for path in args.files}
    medians = measure(runners, args.rounds, args.calls)
    first = statistics.median(medians[str(args.files[0])])
    rows = [[name, f"{statistics.median(m) * 1e3:.3f}", f"{min(m) * 1e3:.3f}-{max(m) * 1e3:.3f}",
             f"{statistics.median(m) / first:.2f}x"] for name, m in medians.items()]
    print(format_table(["file", "median ms", "round range", "vs first"], rows))


if __name__ == "__main__":
    main()
