"""Ship a finished training run as a pretrained tag: ``src/shufflenet/weights/bundled/<model>.<tag>.safetensors``.

    python tools/bundle_weights.py RUNS/cifar10/shufflenet_v2_x1_0 --tag cifar10 \\
        --command "shufflenet train configs/cifar10/shufflenet_v2_x1_0.yaml ..." [--data DIR/val]

The file is discovered as ``<model>.<tag>`` (no other edit): ``shufflenet list --pretrained``.
"""

import argparse
import sys

from shufflenet.errors import UserError
from shufflenet.weights.hub import BUNDLED_DIR, bundle_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a `shufflenet train` work dir that finished")
    parser.add_argument("--tag", required=True, help="the tag name, e.g. cifar10")
    parser.add_argument("--command", required=True, help="the command that trained the run (stored as provenance)")
    parser.add_argument("--data", help="re-evaluate on this labelled folder instead of reading summary.json")
    parser.add_argument("--dataset", default="CIFAR-10", help="dataset name stored with the weights (default CIFAR-10)")
    parser.add_argument("--out-dir", default=str(BUNDLED_DIR), help=f"where to write (default {BUNDLED_DIR})")
    parser.add_argument("--force", action="store_true", help="replace an existing file")
    args = parser.parse_args(argv)
    try:
        info = bundle_run(args.run_dir, args.tag, args.command, args.out_dir, args.data, args.dataset, args.force)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    size_mb = info.path.stat().st_size / 1e6
    print(f"{info.full_name}: {info.path} ({size_mb:.2f} MB), {info.dataset} top-1 {info.top1:.2f} top-5 {info.top5:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
