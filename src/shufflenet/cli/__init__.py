"""The ``shufflenet`` command line: one sub-command module per area, dispatched here.

Each module in ``COMMAND_MODULES`` has ``register(subparsers)``, which adds its sub-commands and
sets ``func`` (a function taking the parsed arguments and returning the exit status).
Errors a user can cause raise ``UserError``: printed as one line, no traceback, exit status its
``exit_code`` (2; a diverged run 3, a run stopped by a signal 128 + its number; a closed output pipe 141).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

from ..errors import UserError

COMMAND_MODULES = ("zoo", "convert", "engine", "deploy", "demo")  # the order of `shufflenet --help`


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than ``minimum`` (argparse reports the rest as usage errors)."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in "invalid int value: 'x'"
    return parse


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="shufflenet", description="ShuffleNet V1/V2/V2+ model zoo and tools.")
    parser.add_argument("--version", action="version", version=f"shufflenet {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, where the handler below still runs
        return status
    except UserError as error:
        if error.printed:
            print(f"shufflenet {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"shufflenet {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not _stdout_is_closed():
            raise  # another pipe broke: not the reader going away
        return 128 + 13  # SIGPIPE's number, as a shell reports a command killed by it


def _stdout_is_closed() -> bool:
    """Whether the reader of stdout went away (`shufflenet list | head -1`); if so, stop quietly as
    `cat` does, with stdout pointed at /dev/null so that the flush at exit cannot fail again."""
    try:
        sys.stdout.flush()
        return False
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return True
