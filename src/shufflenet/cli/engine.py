"""``shufflenet train`` and ``shufflenet test``: the training and evaluation engine."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import int_at_least
from .table import format_table


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train or fine-tune a model from a YAML recipe",
        description="Train from a recipe in configs/. Runs as is in one process, or under "
        "`torchrun --nproc-per-node N` with DDP.",
    )
    p.add_argument("config", metavar="CONFIG", help="YAML recipe, e.g. configs/cifar10/shufflenet_v2_x1_0.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set optim.lr=0.1 (repeatable)")
    p.add_argument("--work-dir", help="output folder (default runs/<config name>)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                   help="continue from CKPT, or from WORK_DIR/checkpoints/last.pt when given alone (fresh start if none)")
    p.add_argument("--force", action="store_true",
                   help="start afresh even if WORK_DIR holds a run (its checkpoints, metrics and weights are overwritten)")
    p.add_argument("--pretrained", metavar="PATH|TAG",
                   help="start from these weights (the classifier is re-initialised when model.num_classes differs from theirs)")
    p.add_argument("--teacher", dest="teachers", action="append", metavar="PATH|TAG",
                   help="distil from this trained model (distill.teachers; repeat it for an ensemble)")
    p.add_argument("--num-classes", type=int_at_least(1), help="classifier outputs (model.num_classes)")
    p.add_argument("--data", metavar="DIR", help="a folder holding train/ and val/ (data.root)")
    p.add_argument("--epochs", type=int_at_least(1), help="schedule.epochs")
    p.add_argument("--batch-size", type=int_at_least(1), help="images per process and step (train.batch_size)")
    p.add_argument("--lr", type=float, help="optim.lr (at optim.base_batch_size when that is set)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (train.device)")
    p.add_argument("--strict-data", action="store_true", help="stop at an unreadable image instead of skipping it")
    p.set_defaults(func=run_train)

    p = subparsers.add_parser(
        "test",
        help="evaluate a checkpoint: top-1/top-5, per-class accuracy, confusion matrix, throughput",
        description="Evaluate CHECKPOINT (model.safetensors, a training checkpoint, an .onnx export or any "
        "supported checkpoint file) on a labelled image folder; without CHECKPOINT, MODEL's pretrained weights.",
    )
    p.add_argument("source", metavar="CONFIG|MODEL",
                   help="the training recipe, a model name (name.tag picks its weights), or a weights file")
    p.add_argument("checkpoint", metavar="CHECKPOINT", nargs="?", help="default: MODEL's pretrained weights")
    p.add_argument("--data", metavar="DIR", help="labelled images: DIR/val, or DIR itself when it holds the classes")
    p.add_argument("--batch-size", type=int_at_least(1), default=100)
    p.add_argument("--workers", type=int_at_least(0), default=2, help="data-loading processes (0: in the main process)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", metavar="DIR", help="where confusion.png goes (default: next to the weights file, or runs/test/MODEL; "
                   "an existing one is replaced)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.set_defaults(func=run_test)


# -- train ---------------------------------------------------------------------------------------
FLAG_KEYS = {
    "data": "data.root",
    "epochs": "schedule.epochs",
    "batch_size": "train.batch_size",
    "lr": "optim.lr",
    "device": "train.device",
    "num_classes": "model.num_classes",
    "pretrained": "model.pretrained",
    "teachers": "distill.teachers",
}


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The plain flags as ``--set`` items (they win over earlier --set of the same key)."""
    items = [f"{key}={json.dumps(getattr(args, flag))}" for flag, key in FLAG_KEYS.items() if getattr(args, flag) is not None]
    return items + (["data.strict=true"] if args.strict_data else [])


def run_train(args: argparse.Namespace) -> int:
    from ..engine.config import load_config
    from ..engine.distributed import is_main_process
    from ..engine.trainer import final_weights_name, train

    config = load_config(args.config, [*args.overrides, *flag_overrides(args)])
    work_dir = Path(args.work_dir or Path("runs") / Path(args.config).stem)
    summary = train(config, work_dir, resume=args.resume, force=args.force, recipe=args.config)
    if summary.get("final_top1") is not None and is_main_process():  # one line per job, not per torchrun process
        print(f"done: top-1 {summary['final_top1']:.2f}%  top-5 {summary['final_top5']:.2f}%  (best {summary['best_top1']:.2f}%)"
              f"  weights: {work_dir / final_weights_name(config)}")
    return 0


# -- test ----------------------------------------------------------------------------------------
def run_test(args: argparse.Namespace) -> int:
    from ..engine.tester import test

    result = test(args.source, args.checkpoint, args.data, args.batch_size, args.workers, args.device, args.out)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "confusion"}))
        return 0
    weights = " (EMA weights)" if result["weights"] == "ema" else ""
    print(f"{result['model']}{weights}: top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  on {result['images']} images"
          f"  ({result['images_per_s']:.0f} img/s, {result['skipped_images']} skipped)")
    rows = [[name, acc] for name, acc in zip(result["class_names"], result["per_class"])]
    print(format_table(["class", "top-1 %"], rows))
    print(f"confusion matrix: {result['confusion_png']}")
    return 0
