"""``shufflenet demo``: the README's main job."""

from __future__ import annotations

import argparse

from .zoo import run_info


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="show the zoo: every model's size beside the published numbers")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    return run_info(argparse.Namespace(models=[], input_size=224, json=False))
