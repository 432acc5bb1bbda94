"""Training augmentation of a whole batch on the training device (``data.augment.on_device``).

The loader then only reads the decoded images, and the per-image work that bounds small-image
training on a GPU (TrivialAugmentWide in the loader workers: about 6,000 img/s for CIFAR-10 on an
H100 machine's CPUs, docs/results.md) runs as tensor operations next to the model.

Each image's parameters come from its own seed (the sampler's, a function of the run's seed, the
epoch and the index), so a resumed run and any number of processes see the same augmentations, as
in the loader path; they are not the draws the loader path makes, which come from torch's generator.
Pad-crop and flip are one gather and one select for the batch. TrivialAugmentWide groups the images
by (operation, magnitude) and applies torchvision's own operation once per group, so every image
gets exactly what ``v2.TrivialAugmentWide`` does for that draw; a batch of 128 makes about 90 groups,
one of 1,024 about 420.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import NamedTuple

import torch
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from ..errors import UserError


class Draw(NamedTuple):
    top: int
    left: int
    flip: bool
    operation: str
    magnitude: float


class BatchAugment:
    """Zero-pad ``padding`` pixels and take a random ``crop_size`` crop, flip with probability
    ``hflip``, then TrivialAugmentWide when ``trivial_augment``: the CIFAR recipe's loader
    transforms (``data.preprocess.train_transform`` with ``crop="pad"``), on uint8 (N, C, H, W)."""

    def __init__(self, crop_size: int, padding: int, hflip: float, trivial_augment: bool, interpolation: str = "nearest") -> None:
        self.crop_size, self.padding, self.hflip = crop_size, padding, hflip
        self.trivial = v2.TrivialAugmentWide(interpolation=InterpolationMode(interpolation)) if trivial_augment else None
        # TrivialAugmentWide's operations with their magnitude bins (None: no magnitude) and signedness, once
        self.operations: list[tuple[str, list[float] | None, bool]] = []
        if self.trivial is not None:
            for operation, (magnitudes, signed) in self.trivial._AUGMENTATION_SPACE.items():
                values = magnitudes(self.trivial.num_magnitude_bins, crop_size, crop_size)
                self.operations.append((operation, None if values is None else [float(v) for v in values], signed))

    def draw(self, seed: int, height: int, width: int) -> Draw:
        """One image's parameters, from a generator of its own."""
        rng = random.Random(seed)
        spare_rows, spare_cols = height + 2 * self.padding - self.crop_size, width + 2 * self.padding - self.crop_size
        if min(spare_rows, spare_cols) < 0:
            raise UserError(f"data.augment.crop_size {self.crop_size} is larger than the padded {height}x{width} images")
        top, left = rng.randrange(spare_rows + 1), rng.randrange(spare_cols + 1)
        flip = rng.random() < self.hflip
        operation, magnitude = "Identity", 0.0
        if self.operations:  # as TrivialAugmentWide.forward: an operation, a magnitude bin, a sign
            operation, values, signed = self.operations[rng.randrange(len(self.operations))]
            if values is not None:
                magnitude = values[rng.randrange(len(values))]
                if signed and rng.random() <= 0.5:
                    magnitude = -magnitude
        return Draw(top, left, flip, operation, magnitude)

    def __call__(self, images: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        _, _, height, width = images.shape
        draws = [self.draw(seed, height, width) for seed in seeds.tolist()]
        images = self._crop(images, draws)
        flip = torch.tensor([d.flip for d in draws], device=images.device)
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        if self.trivial is not None:
            groups: dict[tuple[str, float], list[int]] = defaultdict(list)
            for i, d in enumerate(draws):
                if d.operation != "Identity":
                    groups[d.operation, d.magnitude].append(i)
            for (operation, magnitude), members in groups.items():
                index = torch.tensor(members, device=images.device)
                images[index] = self.trivial._apply_image_or_video_transform(
                    images[index], operation, magnitude, interpolation=self.trivial.interpolation, fill=self.trivial._fill)
        return images

    def _crop(self, images: torch.Tensor, draws: list[Draw]) -> torch.Tensor:
        """Each image's own crop of the zero-padded batch, as ``v2.RandomCrop(size, padding)``."""
        padded = F.pad(images, [self.padding]) if self.padding else images
        offsets = torch.arange(self.crop_size, device=images.device)
        rows = torch.tensor([d.top for d in draws], device=images.device)[:, None] + offsets
        cols = torch.tensor([d.left for d in draws], device=images.device)[:, None] + offsets
        batch = torch.arange(len(draws), device=images.device)[:, None, None]
        return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()
