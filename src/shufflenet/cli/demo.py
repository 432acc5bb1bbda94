"""``shufflenet demo``: the whole product in one offline run, ending in a report.

Train a small ShuffleNet on the CIFAR-10 subset shipped in ``demo/``, evaluate it, export it to
ONNX, classify sample images with ONNX Runtime and write ``runs/demo/report.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..errors import UserError
from . import int_at_least
from .table import format_table

DEFAULT_CONFIG = "configs/cifar10/shufflenet_v2_x0_5_quick.yaml"
DEFAULT_DATA = "demo/cifar10-subset"
DEFAULT_WORK_DIR = "runs/demo"
SAMPLES_PER_CLASS = 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="train, evaluate, export and run a small ShuffleNet on the shipped CIFAR-10 subset",
        description="The main job, offline: train on demo/cifar10-subset, test, export to ONNX, classify "
        "sample images with ONNX Runtime, and write a Markdown report. Run it from the repository root.",
    )
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"training recipe (default {DEFAULT_CONFIG})")
    p.add_argument("--data", default=DEFAULT_DATA, help=f"folder with train/ and val/ (default {DEFAULT_DATA})")
    p.add_argument("--work-dir", default=DEFAULT_WORK_DIR, help=f"where everything goes (default {DEFAULT_WORK_DIR}, the demo's own)")
    p.add_argument("--epochs", type=int_at_least(1), help="override the recipe's epochs (at least 1)")
    p.add_argument("--force", action="store_true", help="write into a --work-dir other than runs/demo that is not empty")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from ..deploy import export_onnx, max_tensor_rank
    from ..engine import load_config, test, train
    from ..inference import inference_model
    from ..weights import load_model

    for path in (args.config, args.data):
        if not Path(path).exists():
            raise UserError(f"{path} not found: run the demo from the repository root (or pass --config/--data)")
    samples = sample_images(Path(args.data) / "val")  # before training, so a bad folder fails at once
    out = Path(args.work_dir)
    if out.resolve() != Path(DEFAULT_WORK_DIR).resolve() and out.is_dir() and any(out.iterdir()) and not args.force:
        raise UserError(f"{out} is not empty and the demo overwrites what it writes there; pass --force or another --work-dir")
    overrides = [f"data.root={args.data}"] + ([f"schedule.epochs={args.epochs}"] if args.epochs is not None else [])
    config = load_config(args.config, overrides)
    start = time.perf_counter()

    _step(1, f"train {config.model.name} on {args.data} for {config.schedule.epochs} epochs")
    train(config, out / "train", force=True)  # the demo's folder (or --force): each run starts afresh
    weights = out / "train" / "model.safetensors"

    _step(2, "evaluate on the validation images")
    metrics = test(args.config, weights, data=args.data, out=out)

    _step(3, "export to ONNX (BN folded, dynamic batch)")
    onnx_path = out / "model.onnx"
    proto = export_onnx(load_model(weights), onnx_path, dynamic_batch=True)

    _step(4, "classify sample images with ONNX Runtime")
    predictions = inference_model(str(onnx_path), [str(p) for p in samples], topk=3, backend="onnxruntime")

    report = out / "report.md"
    report.write_text(render_report(config, args, metrics, samples, predictions, max_tensor_rank(proto),
                                    time.perf_counter() - start))
    (out / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items() if k != "confusion"}, indent=2))
    print(f"\nval top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  ({len(samples)} samples classified by ONNX Runtime)")
    print(f"report: {report.resolve()}")
    return 0


def _step(number: int, text: str) -> None:
    print(f"\n[{number}/4] {text}", flush=True)


def sample_images(val_dir: Path) -> list[Path]:
    """The first image (sorted, sub-folders searched) of every class folder: one sample per class, in class order."""
    from ..data.datasets import IMAGE_EXTENSIONS, find_images

    if not val_dir.is_dir():
        raise UserError(f"{val_dir}: not found (expected one sub-folder of images per class)")
    samples = []
    for folder in sorted(d for d in val_dir.iterdir() if d.is_dir()):
        images = find_images(folder)
        if not images:
            raise UserError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}), so no sample for this class")
        samples.append(images[0])
    return samples


def render_report(config, args, metrics: dict, samples: list[Path], predictions: list[dict], rank: int, seconds: float) -> str:
    per_class = format_table(
        ["class", "accuracy %"], [[name, acc] for name, acc in zip(metrics["class_names"], metrics["per_class"])]
    )
    rows = [
        [p.parent.name, p.name, pred["pred_class"], f"{pred['pred_score']:.2f}", "yes" if pred["pred_class"] == p.parent.name else "no"]
        for p, pred in zip(samples, predictions)
    ]
    samples_table = format_table(["true class", "file", "predicted", "score", "correct"], rows)
    return f"""# ShuffleNet demo report

Model `{config.model.name}` (small_input={config.model.small_input}) trained from scratch by
`shufflenet train {args.config}` on `{args.data}` for {config.schedule.epochs} epochs, evaluated by
`shufflenet test`, exported to ONNX and run with ONNX Runtime. Whole run: {seconds / 60:.1f} min.

## Results

| metric | value |
|---|---|
| validation top-1 | {metrics['top1']:.2f}% |
| validation top-5 | {metrics['top5']:.2f}% |
| validation images | {metrics['images']} |
| evaluation throughput | {metrics['images_per_s']:.0f} img/s |
| ONNX graph: largest tensor rank | {rank} (converter-friendly: no 5-D shuffle) |

A 2,000-image subset and a few minutes of CPU training: the point is the pipeline, not the
accuracy (the full CIFAR-10 recipes are in `configs/cifar10/`).

## Training curves

![curves](train/curves.png)

## Confusion matrix

![confusion](confusion.png)

## Per-class accuracy

```
{per_class}
```

## Sample images classified by ONNX Runtime (`model.onnx`)

```
{samples_table}
```
"""
