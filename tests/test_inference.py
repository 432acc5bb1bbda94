"""inference_model and `shufflenet predict` on every odd kind of image a user may have."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from shufflenet import get_model
from shufflenet.cli import main
from shufflenet.data.preprocess import Preprocessing
from shufflenet.errors import UserError
from shufflenet.inference import Predictor, inference_model, load_image, to_rgb
from shufflenet.weights import save_checkpoint

CLASSES = tuple(f"class{i}" for i in range(10))
# Not ImageNet's recipe, so a hard-coded default would show up as a mismatch.
PREPROCESSING = Preprocessing(crop_size=40, resize_size=48, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    net = get_model("shufflenet_v2_x0_5", num_classes=10, small_input=True)
    torch.nn.init.normal_(net.head.fc.weight, 0, 1.0)  # spread the scores so the top-k order is meaningful
    net.preprocessing, net.class_names = PREPROCESSING, CLASSES
    return net.eval()


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ckpt") / "small.safetensors"
    save_checkpoint(model, path)
    return str(path)


def photo(size=(50, 40)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# Every odd image a camera, a scanner or the web produces, saved the way it arrives.
ODD_IMAGES = {
    "gray.png": lambda: photo().convert("L"),
    "cmyk.jpg": lambda: photo().convert("CMYK"),
    "palette.png": lambda: photo().convert("P"),
    "rgba.png": lambda: photo().convert("RGBA"),
    "gray_alpha.png": lambda: photo().convert("LA"),
    "sixteen.png": lambda: Image.fromarray(np.full((30, 30), 40000, dtype=np.uint16)),
    "tiny.png": lambda: Image.new("RGB", (1, 1), "red"),
    "huge.jpg": lambda: Image.new("RGB", (4000, 3000), "green"),
}


@pytest.fixture(scope="module")
def odd_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("odd")
    for name, make in ODD_IMAGES.items():
        make().save(folder / name)
    return folder


@pytest.mark.parametrize("name", ODD_IMAGES)
def test_odd_images_decode_to_rgb(odd_dir, name):
    image = load_image(odd_dir / name)
    assert image.mode == "RGB"
    assert image.size == Image.open(odd_dir / name).size


def test_sixteen_bit_is_scaled_not_clipped(odd_dir):
    assert load_image(odd_dir / "sixteen.png").getpixel((0, 0)) == (156, 156, 156)  # 40000 / 257


def test_transparent_pixels_become_white():
    clear = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_rgb(clear).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (20, 10), "blue")
    image.paste((255, 0, 0), (0, 0, 10, 10))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    upright = load_image(tmp_path / "rotated.jpg")
    assert upright.size == (10, 20)
    red, _, blue = upright.getpixel((5, 5))  # the left half is now on top
    assert red > 200 and blue < 60


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.jpg", b"", "empty file"),
        ("notes.jpg", b"just some text\n", "not an image"),
        ("truncated.jpg", None, "cannot decode image"),
    ],
)
def test_bad_files_name_the_file_and_the_reason(tmp_path, name, content, reason):
    path = tmp_path / name
    if content is None:
        photo((200, 200)).save(path)
        content = path.read_bytes()[:600]
    path.write_bytes(content)
    with pytest.raises(UserError, match=f"{name}: {reason}"):
        load_image(path)


def test_decompression_bomb_guard(tmp_path, monkeypatch):
    photo((30, 30)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 900 pixels > 2 x 100: Pillow's hard limit
    with pytest.raises(UserError, match=re.escape("bomb.png: refused by the decompression-bomb guard")):
        load_image(tmp_path / "bomb.png")


def test_inference_applies_the_model_preprocessing(model, odd_dir):
    image = load_image(odd_dir / "rgba.png")
    with torch.no_grad():
        expected = model(PREPROCESSING.transform()(image)[None]).softmax(1)[0]
    result = inference_model(model, odd_dir / "rgba.png", topk=3)
    top = expected.topk(3)
    assert result["pred_label"] == top.indices[0].item()
    assert result["pred_class"] == CLASSES[result["pred_label"]]
    assert [p["label"] for p in result["pred_scores"]] == top.indices.tolist()
    assert result["pred_score"] == pytest.approx(top.values[0].item(), abs=1e-6)


def test_every_input_kind_gives_the_same_answer(checkpoint, odd_dir):
    path = odd_dir / "gray.png"
    pil = load_image(path)
    inputs = [str(path), pil, np.asarray(pil), torch.from_numpy(np.array(pil)).permute(2, 0, 1)]
    results = inference_model(checkpoint, inputs, topk=2)
    assert isinstance(results, list) and len(results) == 4
    scores = [r["pred_score"] for r in results]
    assert scores == pytest.approx([scores[0]] * 4, abs=1e-5)
    assert {r["pred_label"] for r in results} == {results[0]["pred_label"]}


@pytest.mark.parametrize("flag", ["IMREAD_COLOR", "IMREAD_UNCHANGED"])  # BGR, and BGRA for a PNG with alpha
def test_arrays_as_cv2_reads_them_with_array_order_bgr(checkpoint, tmp_path, flag):
    cv2 = pytest.importorskip("cv2")
    rgba = np.random.default_rng(0).integers(0, 256, (40, 48, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(np.arange(48) < 24, 255, 90)  # half opaque, half translucent
    Image.fromarray(rgba).save(tmp_path / "photo.png")
    array = cv2.imread(str(tmp_path / "photo.png"), getattr(cv2, flag))
    from_file = Predictor(checkpoint, "torch").preprocess(tmp_path / "photo.png")
    if flag == "IMREAD_COLOR":  # cv2 drops the alpha channel, the file reader composites it on white
        from_file = Predictor(checkpoint, "torch").preprocess(Image.fromarray(rgba[..., :3]))
    torch.testing.assert_close(Predictor(checkpoint, "torch", array_order="BGR").preprocess(array), from_file, rtol=0, atol=0)
    assert not torch.allclose(Predictor(checkpoint, "torch").preprocess(array), from_file)  # the default reads RGB
    expected = inference_model(checkpoint, from_file.unsqueeze(0), backend="torch")[0]
    assert inference_model(checkpoint, array, backend="torch", array_order="BGR") == expected
    gray_alpha = rgba[..., 1:3].copy()  # no colour channels to swap: read as it is
    torch.testing.assert_close(Predictor(checkpoint, "torch", array_order="BGR").preprocess(gray_alpha),
                               Predictor(checkpoint, "torch").preprocess(gray_alpha), rtol=0, atol=0)


def test_onnxruntime_backend_agrees_with_torch(model, odd_dir):
    paths = [odd_dir / name for name in ("gray.png", "cmyk.jpg")]
    by_torch = inference_model(model, paths, backend="torch", device="cpu")
    by_ort = inference_model(model, paths, backend="onnxruntime")
    for a, b in zip(by_torch, by_ort):
        assert a["pred_label"] == b["pred_label"]
        assert a["pred_score"] == pytest.approx(b["pred_score"], abs=1e-4)


def test_predict_cli_classifies_a_directory(checkpoint, odd_dir, capsys):
    assert main(["predict", checkpoint, str(odd_dir), "--json", "--topk", "3", "--batch-size", "3"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(r["file"].rsplit("/", 1)[1] for r in lines) == sorted(ODD_IMAGES)
    assert all(len(r["pred_scores"]) == 3 and r["pred_class"] in CLASSES for r in lines)


def test_predict_cli_reports_bad_files_and_goes_on(checkpoint, odd_dir, tmp_path, capsys):
    (tmp_path / "empty.jpg").write_bytes(b"")
    status = main(["predict", checkpoint, str(tmp_path / "empty.jpg"), str(odd_dir / "*.png"), "missing.jpg", "--json"])
    captured = capsys.readouterr()
    assert status == 1
    assert len(captured.out.splitlines()) == sum(name.endswith(".png") for name in ODD_IMAGES)
    assert "empty.jpg: empty file" in captured.err and "missing.jpg: no such file" in captured.err
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("argv", [["no_such_model", "x.jpg"], ["{ckpt}", "x.jpg", "--topk", "0"], ["{ckpt}", "x.jpg", "--backend", "tvm"],
                                  ["{ckpt}", "x.jpg", "--device", "tpu9"],
                                  pytest.param(["{ckpt}", "x.jpg", "--device", "cuda:0", "--backend", "torch"], id="no-cuda",
                                               marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is there"))])
def test_predict_cli_usage_errors_exit_2(checkpoint, odd_dir, argv, capsys):
    argv = [a.format(ckpt=checkpoint) for a in argv]
    argv[1] = str(odd_dir / "gray.png")
    try:
        status = main(["predict", *argv])
    except SystemExit as exit_:  # argparse rejects bad option values itself
        status = exit_.code
    assert status == 2 and "Traceback" not in capsys.readouterr().err
