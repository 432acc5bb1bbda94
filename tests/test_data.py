"""Dataset decoding: training and testing see every image exactly as ``predict`` does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor

from shufflenet.data.datasets import CorruptSample, ImageDataset, _decodes_like_to_rgb, collate
from shufflenet.inference import load_image


def photo(mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).convert(mode)


def rotated() -> tuple[Image.Image, dict]:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    return photo(), {"exif": exif, "quality": 95}


def transparent() -> tuple[Image.Image, dict]:
    pixels = np.array(photo("RGBA"))
    pixels[:8, :, 3] = 0  # fully transparent rows: stored colour kept, predict shows white
    pixels[8:16, :, 3] = 128
    return Image.fromarray(pixels), {}


# (file name, image and save options): the fast torchvision path and each case that needs Pillow.
IMAGES = {
    "plain.jpg": lambda: (photo(), {}),
    "plain.png": lambda: (photo(), {}),
    "gray.png": lambda: (photo("L"), {}),
    "palette.png": lambda: (photo("P"), {}),
    "cmyk.jpg": lambda: (photo("CMYK"), {}),
    "rotated.jpg": rotated,
    "rgba.png": transparent,
    "palette_trns.png": lambda: (photo("P"), {"transparency": 0}),
    "gray_alpha.png": lambda: (photo("LA"), {}),
    "sixteen.png": lambda: (Image.fromarray(np.full((24, 32), 40000, dtype=np.uint16)), {}),
    "plain.bmp": lambda: (photo(), {}),
    "plain.tif": lambda: (photo(), {}),
    "plain.ppm": lambda: (photo(), {}),
    "gray.pgm": lambda: (photo("L"), {}),
    "plain.gif": lambda: (photo(), {}),
    "rgba.webp": lambda: (transparent()[0], {"lossless": True}),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    (root / "class0").mkdir()
    for name, make in IMAGES.items():
        image, options = make()
        image.save(root / "class0" / name, **options)
    return root


@pytest.fixture(scope="module")
def dataset(folder):
    return ImageDataset.from_path(folder)


def test_every_image_suffix_is_found(dataset):
    assert sorted(path.rsplit("/", 1)[1] for path, _ in dataset.samples) == sorted(IMAGES)


@pytest.mark.parametrize("name", IMAGES)
def test_the_dataset_decodes_like_predict(dataset, folder, name):
    index = [path for path, _ in dataset.samples].index(str(folder / "class0" / name))
    image, _, _ = dataset[index]
    assert image.dtype == torch.uint8
    assert torch.equal(image, pil_to_tensor(load_image(folder / "class0" / name)))


def test_rotation_and_transparency_are_applied(dataset, folder):
    decoded = {path.rsplit("/", 1)[1]: dataset[i][0] for i, (path, _) in enumerate(dataset.samples)}
    assert decoded["rotated.jpg"].shape == (3, 32, 24)
    assert (decoded["rgba.png"][:, :8] == 255).all()


@pytest.mark.parametrize(("name", "fast"), [("plain.jpg", True), ("cmyk.jpg", True), ("plain.png", True), ("palette.png", True),
                                            ("rgba.png", False), ("palette_trns.png", False), ("sixteen.png", False)])
def test_plain_jpeg_and_png_take_torchvisions_fast_path(folder, name, fast):
    assert _decodes_like_to_rgb((folder / "class0" / name).read_bytes()) is fast


def test_sixteen_bit_png_is_scaled_to_uint8_in_batches_and_the_decoded_cache(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(tmp_path / "a" / "sixteen.png")
    photo().resize((8, 8)).save(tmp_path / "a" / "plain.png")
    dataset = ImageDataset.from_path(tmp_path)
    batch = collate([dataset[0], dataset[1]])
    assert batch.images.dtype == torch.uint8 and not batch.corrupt
    assert (batch.images[1] == 156).all()  # 40000 / 257, as predict scales it
    dataset.cache_decoded(tmp_path / "cache")
    assert torch.equal(dataset.decoded, batch.images)


@pytest.mark.parametrize(("name", "content"), [("empty.png", b""), ("text.tif", b"not an image\n"), ("truncated.bmp", None)])
def test_unreadable_files_of_every_decoder_become_corrupt_samples(tmp_path, name, content):
    (tmp_path / "a").mkdir()
    path = tmp_path / "a" / name
    if content is None:
        photo().save(path)
        content = path.read_bytes()[:100]
    path.write_bytes(content)
    assert isinstance(ImageDataset.from_path(tmp_path)[0], CorruptSample)
