"""``shufflenet convert``: any supported checkpoint -> our safetensors file with metadata."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from ..files import check_output
from ..models.registry import get_spec
from ..weights import FORMATS, load_checkpoint, save_checkpoint


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a torchvision/mmpretrain/Megvii/mindcv/MegEngine checkpoint to safetensors",
        description="Convert a checkpoint to our safetensors format. The source format and the "
        "architecture variant are detected from the file unless --from/--model say otherwise.",
    )
    p.add_argument("source", metavar="SRC", help="checkpoint file (.pth, .pth.tar, .ckpt, .pkl, .safetensors)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output .safetensors file")
    p.add_argument("--from", dest="source_format", default="auto", choices=["auto", *FORMATS],
                   help="source format (default: auto)")
    p.add_argument("--model", help="registered model name the weights must fit (default: detected)")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if output.suffix != ".safetensors":
        raise UserError(f"output must end in .safetensors, got {output.name!r}")
    check_output(output, args.force, source=args.source)
    spec = get_spec(args.model) if args.model else None
    model = load_checkpoint(args.source, args.source_format, spec=spec)
    save_checkpoint(model, output)
    source = model.source or {}
    plan = ", ".join(f"{key} {list(value)}" for key in ("stage_widths", "stage_repeats") if (value := getattr(model, key, None)))
    print(f"{args.source} ({source.get('format', 'ours')}) -> {output}: {model.model_name}{f' ({plan})' if plan else ''}, "
          f"{model.head.fc.out_features} classes, input {model.preprocessing.channel_order} "
          f"mean={model.preprocessing.mean} std={tuple(round(s, 5) for s in model.preprocessing.std)}")
    return 0
