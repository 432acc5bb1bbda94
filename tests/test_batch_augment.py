"""On-device batch augmentation (``data.augment.on_device``): each image gets torchvision's own crop,
flip and TrivialAugmentWide operation for its draw, whatever batch it is in, with the loader
path's distribution of draws."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from torchvision.transforms.v2 import functional as F

from shufflenet.data.batch_augment import BatchAugment
from shufflenet.data.datasets import decode_file

SUBSET = Path(__file__).resolve().parents[1] / "demo" / "cifar10-subset"


def cifar_images(count: int) -> torch.Tensor:
    paths = sorted((SUBSET / "train").rglob("*.jpg"))
    return torch.stack([decode_file(str(p)) for p in paths[:: len(paths) // count][:count]])


def one_image(augment: BatchAugment, image: torch.Tensor, draw) -> torch.Tensor:
    """The same draw on one (C, H, W) image with torchvision's per-image functions."""
    out = F.crop(F.pad(image, [augment.padding]), draw.top, draw.left, augment.crop_size, augment.crop_size)
    if draw.flip:
        out = F.horizontal_flip(out)
    if draw.operation != "Identity":
        trivial = augment.trivial
        out = trivial._apply_image_or_video_transform(out, draw.operation, draw.magnitude,
                                                      interpolation=trivial.interpolation, fill=trivial._fill)
    return out


def test_each_image_gets_exactly_torchvisions_operations_for_its_draw() -> None:
    augment = BatchAugment(crop_size=32, padding=4, hflip=0.5, trivial_augment=True, interpolation="bilinear")
    images, seeds = cifar_images(256), torch.arange(256) * 7919
    out = augment(images.clone(), seeds)
    draws = [augment.draw(seed, 32, 32) for seed in seeds.tolist()]
    assert len({d.operation for d in draws}) == 14, "every TrivialAugmentWide operation is exercised"
    assert out.dtype == torch.uint8 and out.shape == images.shape
    for image, draw, got in zip(images, draws, out):
        assert torch.equal(got, one_image(augment, image, draw)), draw
    # an image's augmentation depends on its seed only, not on the batch it is in (DDP, resume)
    assert torch.equal(augment(images[:5].clone(), seeds[:5]), out[:5])


def test_draws_follow_the_loader_transforms_distribution() -> None:
    """Uniform crop offsets over the 9 positions of pad 4, flips with p = 0.5, each of the 14
    operations with p = 1/14 and each sign with p = 1/2 (v2.RandomCrop, RandomHorizontalFlip,
    TrivialAugmentWide); 14,000 draws, bounds at about 5 standard deviations."""
    augment = BatchAugment(crop_size=32, padding=4, hflip=0.5, trivial_augment=True)
    draws = [augment.draw(seed, 32, 32) for seed in range(14_000)]
    assert all(abs(n - 14_000 / 9) < 190 for n in Counter(d.top for d in draws).values())
    assert all(abs(n - 14_000 / 9) < 190 for n in Counter(d.left for d in draws).values())
    assert abs(sum(d.flip for d in draws) - 7_000) < 300
    operations = Counter(d.operation for d in draws)
    assert len(operations) == 14 and all(abs(n - 1_000) < 160 for n in operations.values())
    rotations = [d.magnitude for d in draws if d.operation == "Rotate"]
    assert abs(sum(m < 0 for m in rotations) - len(rotations) / 2) < 80
    assert max(abs(m) for m in rotations) == pytest.approx(135.0)


def test_without_trivial_augment_it_is_pad_crop_and_flip() -> None:
    augment = BatchAugment(crop_size=28, padding=0, hflip=1.0, trivial_augment=False)
    images = cifar_images(8)
    out = augment(images.clone(), torch.arange(8))
    for image, seed, got in zip(images, range(8), out):
        draw = augment.draw(seed, 32, 32)
        assert torch.equal(got, F.horizontal_flip(F.crop(image, draw.top, draw.left, 28, 28)))
