"""``shufflenet predict``, ``shufflenet export`` and ``shufflenet bench``."""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from ..errors import UserError
from ..files import atomic_destination, check_output
from . import int_at_least
from .table import format_table

positive_int = int_at_least(1)

BACKEND_HELP = (
    "fast (default: exact rewrite on OpenVINO/ONNX Runtime, see docs/benchmarks.md), torch, onnxruntime or "
    "openvino; an .onnx model always runs on an ONNX backend"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_predict(subparsers)
    _register_export(subparsers)
    _register_bench(subparsers)


def int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be at least 1, got {text!r}")
    return values


def name_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


# -- predict ---------------------------------------------------------------------------------------
def _register_predict(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="classify images",
        description="Classify image files, directories (recursive) or globs. Exit status: 0 when every image "
        "was classified, 1 when some could not be read, 2 for usage errors.",
    )
    p.add_argument("model", metavar="MODEL", help="name[.tag], checkpoint path or .onnx file")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, directories or glob patterns")
    p.add_argument("--topk", type=positive_int, default=5, help="predictions per image (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--backend", default="fast", help=BACKEND_HELP)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--workers", type=positive_int, default=min(8, os.cpu_count() or 1), help="decoding threads")
    p.set_defaults(func=run_predict)


def expand_inputs(patterns: Sequence[str]) -> tuple[list[Path], list[str]]:
    """(image files, error lines) for files, directories (recursive) and glob patterns."""
    from ..data.datasets import find_images

    files: list[Path] = []
    errors: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        found = [p for p in map(Path, matches) if p.exists()]
        for path in found:
            if path.is_dir():
                images = find_images(path)
                files += images
                errors += [] if images else [f"{path}: no image files in this directory"]
            else:  # a file named explicitly is tried whatever its suffix
                files.append(path)
        if not found:
            errors.append(f"{pattern}: no such file" if matches == [pattern] else f"{pattern}: matches no file")
    return files, errors


def prefetched_batches(
    pool: ThreadPoolExecutor, items: Sequence, batch_size: int, decode: Callable, depth: int = 2
) -> Iterator[list]:
    """Decode batches in ``pool`` while the caller works on the previous one (bounded memory)."""
    queue: deque[list[Future]] = deque()
    for start in range(0, len(items), batch_size):
        queue.append([pool.submit(decode, item) for item in items[start : start + batch_size]])
        if len(queue) > depth:
            yield [f.result() for f in queue.popleft()]
    while queue:
        yield [f.result() for f in queue.popleft()]


def format_prediction(path: Path, result: dict) -> str:
    top = ", ".join(f"{p['class']} ({p['score']:.3f})" for p in result["pred_scores"])
    return f"{path}: {top}"


def run_predict(args: argparse.Namespace) -> int:
    # Pillow only warns between 1x and 2x MAX_IMAGE_PIXELS; the CLI refuses those images too.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return predict_files(args)


def predict_files(args: argparse.Namespace) -> int:
    from ..inference import Predictor

    files, errors = expand_inputs(args.inputs)
    for line in errors:
        print(line, file=sys.stderr)
    if not files:
        return 1
    predictor = Predictor(args.model, args.backend, args.device, args.topk)

    def decode(path: Path) -> tuple[Path, torch.Tensor | None, str | None]:
        try:
            return path, predictor.preprocess(path), None
        except UserError as error:
            return path, None, str(error)

    failed = len(errors)
    with ThreadPoolExecutor(args.workers) as pool, tqdm(
        total=len(files), unit="img", disable=len(files) < 50 or None, file=sys.stderr
    ) as progress:
        for batch in prefetched_batches(pool, files, args.batch_size, decode):
            good = [(path, tensor) for path, tensor, _ in batch if tensor is not None]
            for _, _, error in batch:
                if error:
                    failed += 1
                    progress.write(error, file=sys.stderr)
            results = predictor.predict(torch.stack([t for _, t in good])) if good else []
            for (path, _), result in zip(good, results):
                print(json.dumps({"file": str(path), **result}) if args.json else format_prediction(path, result))
            progress.update(len(batch))
    return 1 if failed else 0


# -- export ----------------------------------------------------------------------------------------
def _register_export(subparsers: argparse._SubParsersAction) -> None:
    from ..deploy.export import DEFAULT_OPSET, ONNX_OPSETS

    p = subparsers.add_parser(
        "export", help="export to ONNX (fp32 or INT8) or TorchScript",
        description="Export with BatchNorm folded into the convolutions and the preprocessing and class "
        "names stored in the file. ONNX graphs contain no tensor of rank > 4.",
    )
    p.add_argument("model", metavar="MODEL", help="name[.tag] or checkpoint path")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET,
        help=f"ONNX opset, {ONNX_OPSETS.start} to {ONNX_OPSETS.stop - 1} (default {DEFAULT_OPSET})",
    )
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: variable batch size")
    p.add_argument("--dynamic-size", action="store_true", help="ONNX: variable height and width (detection/segmentation inputs)")
    p.add_argument("--input-size", type=positive_int, help="square input size (default: the model's crop size)")
    p.add_argument("--fp16", action="store_true", help="ONNX: float16 weights and compute, float32 input and logits")
    p.add_argument("--int8", action="store_true", help="ONNX: static INT8 quantization (QDQ, per-channel weights)")
    p.add_argument("--calib", metavar="DIR", help="calibration images for --int8 (searched recursively)")
    p.add_argument("--calib-size", type=positive_int, default=256, help="calibration images used (default 256)")
    p.add_argument(
        "--int8-float", metavar="MODULES", type=name_list, default=[],
        help="with --int8: modules kept in float, comma-separated (e.g. stem or stem,head)",
    )
    p.add_argument("-o", "--output", help="output file (default: derived from MODEL)")
    p.add_argument("--force", action="store_true", help="overwrite the output file if it exists")
    p.set_defaults(func=run_export)


def default_output(source: str, suffix: str) -> Path:
    name = Path(source).stem if Path(source).exists() else source
    return Path(name + suffix)


def run_export(args: argparse.Namespace) -> int:
    from ..data.datasets import find_images
    from ..deploy.export import export_onnx, export_torchscript, max_tensor_rank, read_metadata
    from ..deploy.quantize import calibration_sample, image_batches, quantize_onnx
    from ..deploy.runtimes import load_torch_model

    flags = {"--dynamic-batch": args.dynamic_batch, "--dynamic-size": args.dynamic_size, "--fp16": args.fp16, "--int8": args.int8}
    onnx_only = [flag for flag, given in flags.items() if given]
    if args.format != "onnx" and onnx_only:
        raise UserError(f"{', '.join(onnx_only)}: ONNX options; drop them or use --format onnx")
    if args.int8 and not args.calib:
        raise UserError("--int8 needs --calib DIR (calibration images)")
    if args.fp16 and args.int8:
        raise UserError("--fp16 and --int8 exclude each other")
    if args.int8_float and not args.int8:
        raise UserError("--int8-float needs --int8")
    calibration = calibration_sample(find_images(args.calib), args.calib_size) if args.int8 else []
    if args.int8 and not calibration:
        raise UserError(f"{args.calib}: no images found for calibration")
    suffix = {"torchscript": ".pt", "onnx": ".int8.onnx" if args.int8 else ".fp16.onnx" if args.fp16 else ".onnx"}[args.format]
    output = check_output(Path(args.output) if args.output else default_output(args.model, suffix), args.force, args.model)
    if (output.suffix.lower() == ".onnx") != (args.format == "onnx"):  # runtimes tell the two apart by the suffix
        rule = "an ONNX file needs the .onnx suffix" if args.format == "onnx" else "a TorchScript file must not end in .onnx"
        raise UserError(f"-o {output}: {rule}")
    model = load_torch_model(args.model)
    qat = hasattr(model, "qat_weight_levels")  # a training state of `train.qat`: its export is the INT8 model
    if qat and (args.int8 or args.fp16):
        raise UserError(f"{args.model} is quantization-aware and exports as INT8 as it is; drop --int8/--fp16")
    if args.format == "torchscript":
        with atomic_destination(output) as partial:
            export_torchscript(model, partial, args.input_size)
        print(f"wrote {output} (TorchScript, BN folded)")
        return 0
    options = {"opset": args.opset, "dynamic_batch": args.dynamic_batch, "dynamic_size": args.dynamic_size,
               "input_size": args.input_size, "fp16": args.fp16}
    with atomic_destination(output) as partial:
        if not args.int8:
            proto = export_onnx(model, partial, **options)
        else:
            with tempfile.TemporaryDirectory() as workdir:
                fp32 = Path(workdir) / "fp32.onnx"
                prep = read_metadata(export_onnx(model, fp32, **options))["preprocessing"]  # what the graph takes
                batches = image_batches(calibration, prep, batch_size=16 if args.dynamic_batch else 1)
                proto = quantize_onnx(fp32, partial, batches, keep_float=args.int8_float)
    batch = ("dynamic batch" if args.dynamic_batch else "batch 1") + (", dynamic height/width" if args.dynamic_size else "")
    kind = (f"INT8 calibrated on {len(calibration)} images" if args.int8 else "fp16, fp32 input and logits" if args.fp16
            else "INT8 from quantization-aware training" if qat else "fp32")
    print(f"wrote {output} (ONNX opset {args.opset}, {batch}, {kind}, max tensor rank {max_tensor_rank(proto)})")
    return 0


# -- bench -----------------------------------------------------------------------------------------
def _register_bench(subparsers: argparse._SubParsersAction) -> None:
    from ..deploy.bench import VARIANTS

    p = subparsers.add_parser(
        "bench", help="latency and throughput across backends",
        description="Median and p90 latency and throughput after warm-up, for each backend and batch size.",
    )
    p.add_argument("model", nargs="?", metavar="MODEL", help="name or checkpoint (weights do not change speed)")
    p.add_argument(
        "--backend", default=None,
        help=f"comma-separated subset of {','.join(VARIANTS)} (default: all installed)",
    )
    p.add_argument("--batch-size", type=int_list, default=(1, 8, 32), help="comma-separated (default 1,8,32)")
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch and the ONNX runtimes")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--cuda-graphs", action="store_true", help="replay torch variants as CUDA graphs")
    p.add_argument("--warmup", type=positive_int, default=10, help="untimed runs first (default 10)")
    p.add_argument("--iters", type=positive_int, default=50, help="timed runs (default 50)")
    p.add_argument("--vs", choices=("alexnet",), help="compare with AlexNet as in the ShuffleNet V1 paper")
    p.add_argument("--json", action="store_true", help="one JSON object per measurement")
    p.set_defaults(func=run_bench)


def bench_model(source: str) -> torch.nn.Module:
    """A checkpoint if ``source`` is a file, else the architecture with random weights."""
    from ..deploy.runtimes import is_onnx_file, load_torch_model
    from ..models import get_model
    from ..weights import is_checkpoint_path

    if is_onnx_file(source):
        raise UserError(f"{source}: bench exports and runs PyTorch models itself; give a model name or a weights file")
    return load_torch_model(source) if is_checkpoint_path(source) else get_model(source)


def alexnet() -> torch.nn.Module:
    from torchvision.models import alexnet as build

    model = build()  # random weights: speed only
    model.model_name = "alexnet"
    return model


def run_bench(args: argparse.Namespace) -> int:
    from ..deploy.bench import benchmark, default_variants

    if not args.model and not args.vs:
        raise UserError("give a MODEL, or --vs alexnet")
    variants = tuple(args.backend.split(",")) if args.backend else default_variants()
    models = [bench_model(args.model or "shufflenet_v1_g3_x0_5")] + ([alexnet()] if args.vs else [])
    options = {
        "variants": variants, "batch_sizes": args.batch_size, "device": args.device, "threads": args.threads,
        "warmup": args.warmup, "iters": args.iters, "cuda_graphs": args.cuda_graphs,
    }
    rows = [row for model in models for row in benchmark(model, **options)]
    if args.vs:
        add_speedups(rows)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    headers = ["model", "backend", "device", "batch", "median ms", "p90 ms", "img/s"]
    table = [[r["model"], r["backend"], r["device"], r["batch_size"], r["median_ms"], r["p90_ms"], f"{r['images_per_s']:.1f}"]
             for r in rows]
    if args.vs:
        headers.append(f"speed-up vs {args.vs}")
        table = [[*t, f"{r['speedup']:.1f}x" if "speedup" in r else None] for t, r in zip(table, rows)]
    print(format_table(headers, table))
    return 0


def add_speedups(rows: list[dict]) -> None:
    """Speed-up of the first model over the reference (last) model, per backend and batch size."""
    reference = rows[-1]["model"]
    times = {(r["backend"], r["batch_size"]): r["median_ms"] for r in rows if r["model"] == reference}
    for row in rows:
        if row["model"] != reference:
            row["speedup"] = times[row["backend"], row["batch_size"]] / row["median_ms"]
