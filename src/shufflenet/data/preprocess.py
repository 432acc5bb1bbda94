"""Evaluation preprocessing as metadata: every model and every set of weights says what it expects.

A silent preprocessing mismatch is the most common cause of "the pretrained model predicts
garbage" (Megvii's weights expect BGR 0-255 without normalisation; torchvision's x1.5/x2.0 were
evaluated at resize 232). Carrying the recipe with the weights makes inference apply it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode, v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class Preprocessing:
    """Resize the short side, centre-crop, scale to [0, 1], normalise, order the channels.

    ``mean``/``std`` are in [0, 1] units; Megvii's unnormalised 0-255 input is ``mean=0, std=1/255``.
    ``resize_backend`` is the resize the weights were evaluated with: ``torchvision`` (antialiased, long
    side truncated) or ``opencv`` (``cv2.resize`` INTER_LINEAR: no antialiasing, long side rounded half
    up, as Megvii's ``OpencvResize``).
    """

    crop_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"
    interpolation: str = "bilinear"
    resize_backend: str = "torchvision"

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if self.resize_backend not in ("torchvision", "opencv"):
            raise ValueError(f"resize_backend must be 'torchvision' or 'opencv', got {self.resize_backend!r}")

    def transform(self) -> v2.Compose:
        """A transform from a PIL image or uint8 tensor (C, H, W) to the model's input tensor."""
        return v2.Compose([v2.ToImage(), *self.geometry_steps(), *self.tensor_steps()])

    def geometry_steps(self) -> list[nn.Module]:
        """Resize and centre-crop: the part that works on uint8 images, before batching."""
        interpolation = InterpolationMode(self.interpolation)
        if self.resize_backend == "opencv":
            resize: nn.Module = OpenCVResize(self.resize_size, interpolation)
        else:
            resize = v2.Resize(self.resize_size, interpolation=interpolation, antialias=True)
        return [resize, v2.CenterCrop(self.crop_size)]

    def tensor_steps(self) -> list[nn.Module]:
        """The steps after geometry: dtype, normalisation, channel order."""
        steps: list[nn.Module] = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]
        if self.channel_order == "BGR":
            steps.append(FlipChannels())
        return steps

    def to_dict(self) -> dict:
        values = asdict(self)
        if values["resize_backend"] == "torchvision":  # the default: files stay readable by releases without the key
            del values["resize_backend"]
        return values

    @classmethod
    def from_dict(cls, values: dict) -> Preprocessing:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown preprocessing keys {sorted(unknown)}; valid keys: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


class OpenCVResize(nn.Module):
    """Short side to ``size`` as ``cv2.resize`` does it in OpenCV-based evaluation code: no antialiasing,
    and the long side rounded half up (torchvision truncates it), so the centre crop sees the same pixels."""

    def __init__(self, size: int, interpolation: InterpolationMode) -> None:
        super().__init__()
        self.size, self.interpolation = size, interpolation

    def forward(self, image: torch.Tensor | Image.Image) -> torch.Tensor:
        if isinstance(image, Image.Image):  # PIL's own resize always antialiases
            image = v2.functional.pil_to_tensor(image)
        short, long = sorted(image.shape[-2:])
        long = int(self.size / short * long + 0.5)
        shape = [self.size, long] if image.shape[-2] < image.shape[-1] else [long, self.size]
        return v2.functional.resize(image, shape, interpolation=self.interpolation, antialias=False)


class FlipChannels(nn.Module):
    """RGB <-> BGR on a (..., 3, H, W) tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-3)


IMAGENET = Preprocessing()
IMAGENET_RESIZE_232 = Preprocessing(resize_size=232)
MEGVII = Preprocessing(mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255), channel_order="BGR", resize_backend="opencv")
CIFAR10 = Preprocessing(crop_size=32, resize_size=32, mean=CIFAR10_MEAN, std=CIFAR10_STD)


def train_transform(
    crop: str = "random_resized",
    crop_size: int = 224,
    scale: tuple[float, float] = (0.08, 1.0),
    padding: int = 4,
    hflip: float = 0.5,
    color_jitter: float = 0.0,
    auto_augment: str | None = None,
    random_erasing: float = 0.0,
    interpolation: str = "bilinear",
) -> v2.Compose:
    """Training augmentation on uint8 (C, H, W) tensors; the tensor steps follow on the batch.

    ``crop="random_resized"`` is the ImageNet recipe (RandomResizedCrop); ``crop="pad"`` the CIFAR
    one (zero-pad ``padding`` pixels, random ``crop_size`` crop).
    """
    if crop == "random_resized":
        mode = InterpolationMode(interpolation)
        steps: list[nn.Module] = [v2.RandomResizedCrop(crop_size, scale=scale, interpolation=mode, antialias=True)]
    elif crop == "pad":
        steps = [v2.RandomCrop(crop_size, padding=padding)]
    else:
        raise ValueError(f"crop must be 'random_resized' or 'pad', got {crop!r}")
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if auto_augment == "trivial_augment_wide":
        steps.append(v2.TrivialAugmentWide(interpolation=InterpolationMode(interpolation)))
    elif auto_augment is not None:
        raise ValueError(f"auto_augment must be 'trivial_augment_wide' or None, got {auto_augment!r}")
    if color_jitter > 0:
        steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    if random_erasing > 0:
        steps.append(v2.RandomErasing(random_erasing))
    return v2.Compose(steps)
