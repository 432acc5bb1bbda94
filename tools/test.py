"""mmpretrain-style entry point: ``python tools/test.py CONFIG CHECKPOINT [options]`` = ``shufflenet test ...``."""

import sys

from shufflenet.cli import main

if __name__ == "__main__":
    sys.exit(main(["test", *sys.argv[1:]]))
