"""Write the public CIFAR-10 as the JPEG folders the CIFAR recipes read: OUT/{train,val}/<class>/NNNN.jpg.

    python tools/cifar10_folders.py DATA/cifar10                      # downloads into DATA/cifar10/.download
    python tools/cifar10_folders.py DATA/cifar10 --val-per-class 500  # half the test split, as in docs/results.md

torchvision's ``CIFAR10`` downloads the arrays (about 170 MB, once). Each image is saved as Pillow's
default JPEG (quality 75, 4:2:0), the encoding of the 50,000 / 5,000 images our CIFAR-10 figures were
measured on; ``val`` is the official test split, or its first N images per class. Our figures used half
the test split, 500 per class, and which half is not recorded, so a full-split evaluation can differ
from them by a few tenths.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from PIL import Image


def write_split(images: Iterable[tuple[Image.Image, int]], classes: list[str], out: Path, per_class: int | None = None) -> int:
    """Save ``(image, label)`` pairs as ``out/<class>/NNNN.jpg``, numbered per class in dataset order."""
    counts: Counter[int] = Counter()
    for image, label in images:
        if per_class is not None and counts[label] >= per_class:
            continue
        folder = out / classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{counts[label]:04d}.jpg")  # Pillow's defaults: quality 75, 4:2:0
        counts[label] += 1
    return sum(counts.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to create (train/ and val/ go inside)")
    parser.add_argument("--download-dir", type=Path, help="where torchvision keeps the arrays (default: OUT/.download)")
    parser.add_argument("--val-per-class", type=int, help="only the first N test images of each class (default: all 1,000)")
    args = parser.parse_args()
    from torchvision.datasets import CIFAR10

    cache = args.download_dir or args.out / ".download"
    for split, train, per_class in (("train", True, None), ("val", False, args.val_per_class)):
        dataset = CIFAR10(str(cache), train=train, download=True)
        count = write_split(dataset, dataset.classes, args.out / split, per_class)
        print(f"{args.out / split}: {count} images")


if __name__ == "__main__":
    main()
