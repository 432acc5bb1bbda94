"""Image classification datasets: ImageFolder directories and ``relative/path label`` list files.

Images are decoded into uint8 tensors exactly as ``predict`` decodes them (``to_rgb``: upright,
8-bit RGB, transparency on white) and augmented as uint8 (transforms v2); conversion to float and
normalisation happen later, on the whole batch, on the training device. An unreadable image becomes
a ``CorruptSample`` instead of an exception, so the training loop can warn, count and go on (or
stop, with ``strict``) in the main process.

Augmentation randomness is a function of (seed, epoch, sample index) — see ``ResumableSampler`` —
so a resumed run, any number of workers and any number of processes see the same augmented images.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset, DistributedSampler
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2.functional import pil_to_tensor

from ..errors import UserError
from ..files import atomic_destination

# The one list of image suffixes: datasets, predict's directory search and INT8 calibration.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".ppm", ".pgm")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# What decoding may raise for a bad file (Pillow: SyntaxError, EOFError for some broken files).
DECODE_ERRORS = (RuntimeError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class CorruptSample(NamedTuple):
    path: str
    reason: str


class ImageDataset(Dataset):
    """(path, label) samples; ``dataset[i]`` or ``dataset[(i, seed)]`` -> (uint8 image, label, seed).

    The seed (-1 when none is given) seeds the transform, and is handed on for augmentation that
    runs later on the whole batch (``data.augment.on_device``)."""

    def __init__(self, samples: list[tuple[str, int]], classes: list[str], transform: Callable | None = None) -> None:
        self.samples = samples
        self.classes = classes
        self.transform = transform
        self.decoded: torch.Tensor | None = None  # (N, 3, H, W) uint8 once ``cache_decoded`` ran
        self.unreadable: dict[int, str] = {}

    @classmethod
    def from_path(cls, path: str | Path, transform: Callable | None = None) -> ImageDataset:
        """An ImageFolder directory (one sub-folder per class) or a list file."""
        path = Path(path)
        if path.is_dir():
            return cls(*_scan_folder(path), transform)
        if path.is_file():
            return cls(*_read_list(path), transform)
        raise UserError(f"dataset not found: {path} (expected a folder with one sub-folder per class, or a list file)")

    def __len__(self) -> int:
        return len(self.samples)

    def first_per_class(self, count: int) -> ImageDataset:
        """The first ``count`` samples of each class, in the dataset's (sorted) order."""
        if count < 1:
            raise UserError(f"data.train_per_class must be at least 1, got {count}")
        seen = [0] * len(self.classes)
        kept = []
        for path, label in self.samples:
            if seen[label] < count:
                seen[label] += 1
                kept.append((path, label))
        return ImageDataset(kept, self.classes, self.transform)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int] | CorruptSample:
        index, seed = key if isinstance(key, tuple) else (key, -1)
        path, label = self.samples[index]
        try:
            image = self._image(index)
        except DECODE_ERRORS as error:
            return CorruptSample(path, str(error).splitlines()[0] if str(error) else type(error).__name__)
        if self.transform is not None:
            if seed >= 0:
                torch.manual_seed(seed)
            image = self.transform(image)
        return image, label, seed

    def _image(self, index: int) -> torch.Tensor:
        if self.decoded is not None:
            if index in self.unreadable:
                raise ValueError(self.unreadable[index])
            return self.decoded[index]
        return decode_file(self.samples[index][0])

    def cache_decoded(self, cache_dir: Path) -> None:
        """Decode every image once into one uint8 tensor (all images must share one size).

        The tensor is saved under ``cache_dir``, keyed by the file list, sizes and modification
        times, so later runs load it in a second instead of decoding again.
        """
        cache = cache_dir / f"decoded-{self._fingerprint()}.pt"
        if cache.is_file():
            saved = torch.load(cache, weights_only=True)
            self.decoded, self.unreadable = saved["images"], dict(saved["unreadable"])
            return
        images, unreadable = [], {}
        for i, (path, _) in enumerate(self.samples):
            try:
                images.append(decode_file(path))
            except DECODE_ERRORS as error:
                unreadable[i] = str(error).splitlines()[0]
                images.append(None)
        shapes = {tuple(im.shape) for im in images if im is not None}
        if len(shapes) != 1:
            raise UserError(f"data.cache_decoded needs images of one size; found {sorted(shapes)[:3]}")
        blank = torch.zeros(shapes.pop(), dtype=torch.uint8)
        self.decoded = torch.stack([blank if im is None else im for im in images])
        self.unreadable = unreadable
        with atomic_destination(cache) as partial:
            torch.save({"images": self.decoded, "unreadable": list(unreadable.items())}, partial)

    def _fingerprint(self) -> str:
        digest = hashlib.sha256(b"to_rgb")  # caches written before decoding matched predict's are not reused
        for path, label in self.samples:
            stat = os.stat(path)
            digest.update(f"{path}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:16]


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as upright 8-bit RGB: the one decoding rule of training, testing and predict.

    Transparent pixels are composited on white rather than dropped: the colour hidden under
    alpha 0 is arbitrary (often black), while white is what a viewer shows.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in SIXTEEN_BIT_MODES:  # Pillow's convert() would clip 16-bit values at 255
        pixels = np.asarray(image, dtype=np.float32) / 257.0
        image = Image.fromarray(pixels.round().astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    return image.convert("RGB")


def decode_file(path: str) -> torch.Tensor:
    """An image file as a uint8 (3, H, W) tensor with exactly the pixels of ``to_rgb``."""
    with open(path, "rb") as file:
        data = file.read()
    if not data:
        raise ValueError("empty file")
    if _decodes_like_to_rgb(data):  # torchvision is the faster decoder
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB, apply_exif_orientation=True)
    with Image.open(path) as image:  # by path, so that Pillow's errors name the file
        return pil_to_tensor(to_rgb(image))


def _decodes_like_to_rgb(data: bytes) -> bool:
    """Whether torchvision's decoder gives ``to_rgb``'s pixels: any JPEG (EXIF orientation and CMYK included)
    and 8-bit grey, RGB or palette PNG without transparency (IHDR: bit depth at byte 24, colour type at 25;
    a tRNS chunk comes before the image data). Not 16-bit, alpha, tRNS, GIF, WebP, BMP, TIFF, PPM/PGM."""
    if data.startswith(b"\xff\xd8\xff"):
        return True
    return (
        data.startswith(PNG_SIGNATURE) and len(data) > 25 and data[24] <= 8 and data[25] in (0, 2, 3)
        and b"tRNS" not in data[: data.find(b"IDAT")]
    )


def find_images(root: str | Path) -> list[Path]:
    """Image files under ``root`` (recursive, by ``IMAGE_EXTENSIONS``), sorted: predict's folder inputs,
    the demo's samples and INT8 calibration."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: not a directory")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _scan_folder(root: Path) -> tuple[list[tuple[str, int]], list[str]]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise UserError(f"{root}: no class sub-folders (expected {root}/<class>/<image>)")
    samples = []
    for label, name in enumerate(classes):
        for directory, _, files in sorted(os.walk(root / name, followlinks=True)):
            samples += [(os.path.join(directory, f), label) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not samples:
        raise UserError(f"{root}: no images with extensions {', '.join(IMAGE_EXTENSIONS)}")
    return samples, classes


def _read_list(path: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """``relative/path label`` per line, paths relative to the list file's folder."""
    samples = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, label = line.strip().rpartition(" ")
        if not name or not label.isdigit():
            raise UserError(f"{path}:{number}: expected 'relative/path label', got {line!r}")
        samples.append((str(path.parent / name.strip()), int(label)))
    if not samples:
        raise UserError(f"{path}: no samples")
    classes = [str(i) for i in range(max(label for _, label in samples) + 1)]
    return samples, classes


class Batch(NamedTuple):
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor
    seeds: torch.Tensor  # each image's augmentation seed (-1: none)
    corrupt: list[CorruptSample]


def collate(samples: list) -> Batch:
    """Stack the readable samples; hand the unreadable ones on for the loop to report."""
    good = [s for s in samples if not isinstance(s, CorruptSample)]
    bad = [s for s in samples if isinstance(s, CorruptSample)]
    if not good:
        return Batch(torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), bad)
    return Batch(torch.stack([s[0] for s in good]), torch.tensor([s[1] for s in good]), torch.tensor([s[2] for s in good]), bad)


def sample_seed(seed: int, epoch: int, index: int, copy: int = 0) -> int:
    """A per-sample seed that differs by epoch, index and repeated copy (63-bit, no collisions in practice)."""
    key = f"{seed}:{epoch}:{index}" + (f":{copy}" if copy else "")
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class ResumableSampler(DistributedSampler):
    """DistributedSampler that yields (index, augmentation seed) and can start mid-epoch.

    With one process it is a plain shuffled sampler; with N, rank r takes every N-th index of the
    same permutation, so N processes of batch B see the samples one process of batch N·B sees.

    ``repeats`` > 1 is repeated augmentation (Hoffer et al. 2020; DeiT's and torchvision's
    ``RASampler``): each image of the permutation appears ``repeats`` times in a row, each copy with
    its own augmentation seed, dealt round-robin to the ranks; the epoch keeps the length of a
    plain one, so it draws 1/repeats of the images, and the copies of one image land in the same
    step (on different ranks; with one process, in the same batch unless it straddles two).
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool, seed: int, repeats: int = 1) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.repeats = repeats
        self.start = 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch ``epoch`` from its ``start``-th sample of this rank."""
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        picks = self._repeated() if self.repeats > 1 else [(i, 0) for i in super().__iter__()]
        return iter([(i, sample_seed(self.seed, self.epoch, i, copy)) for i, copy in picks[self.start :]])

    def _repeated(self) -> list[tuple[int, int]]:
        """(index, copy) pairs of this rank's epoch under repeated augmentation."""
        n = len(self.dataset)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist() if self.shuffle else range(n)
        copies = [(i, copy) for i in order for copy in range(self.repeats)]
        return copies[self.rank :: self.num_replicas][: self.num_samples]

    def __len__(self) -> int:
        return self.num_samples - self.start


def shard_indices(length: int, rank: int, world_size: int) -> list[int]:
    """Evaluation shard: every sample exactly once across ranks (no padding duplicates)."""
    return list(range(rank, length, world_size)) if world_size > 1 else list(range(length))
