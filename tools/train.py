"""mmpretrain-style entry point: ``python tools/train.py CONFIG [options]`` = ``shufflenet train CONFIG [options]``.

Works under ``torchrun --nproc-per-node N tools/train.py CONFIG`` too.
"""

import sys

from shufflenet.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
