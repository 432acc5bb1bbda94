"""Regenerate demo/cifar10-subset from the CIFAR-10 JPEG tarballs (deterministic: the first files by name).

    python tools/make_cifar_subset.py --source /work/shared/data --train-per-class 200 --val-per-class 50
"""

from __future__ import annotations

import argparse
import shutil
import tarfile
from collections import defaultdict
from pathlib import Path


def extract_subset(archive: Path, split: str, per_class: int, out: Path) -> int:
    """Copy the ``per_class`` first (by file name) images of each class of ``split`` into ``out/split``."""
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")]
        by_class: dict[str, list[tarfile.TarInfo]] = defaultdict(list)
        for member in members:
            _, member_split, class_name, _ = member.name.split("/")  # cifar10/<split>/<class>/NNNN.jpg
            if member_split == split:
                by_class[class_name].append(member)
        count = 0
        for class_name, items in sorted(by_class.items()):
            target = out / split / class_name
            target.mkdir(parents=True, exist_ok=True)
            for member in sorted(items, key=lambda m: m.name)[:per_class]:
                (target / Path(member.name).name).write_bytes(tar.extractfile(member).read())
                count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=Path("/work/shared/data"), help="folder with cifar10-{train,val}.tar.gz")
    parser.add_argument("--out", type=Path, default=Path("demo/cifar10-subset"))
    parser.add_argument("--train-per-class", type=int, default=200)
    parser.add_argument("--val-per-class", type=int, default=50)
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    for split, per_class in (("train", args.train_per_class), ("val", args.val_per_class)):
        count = extract_subset(args.source / f"cifar10-{split}.tar.gz", split, per_class, args.out)
        print(f"{split}: {count} images -> {args.out / split}")


if __name__ == "__main__":
    main()
