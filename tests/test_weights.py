"""Checkpoint interop: each zoo's format converts to logits equal to the source model's.

torchvision and mmpretrain fixtures come from their own models; Megvii, mindcv, MegEngine and
PaddleClas fixtures are built from the documented layouts, and Megvii's V1 forward (shuffle after the
depthwise conv, inverse permutation) is re-implemented functionally below as the reference.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import pickle
import urllib.error
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

import shufflenet
from helpers import randomize_bn
from shufflenet.cli import main as cli_main
from shufflenet.data.preprocess import IMAGENET, IMAGENET_RESIZE_232, MEGVII
from shufflenet.errors import UserError
from shufflenet.weights import hub, load_checkpoint, load_model, save_checkpoint
from shufflenet.weights.mindspore_ckpt import read_checkpoint, write_checkpoint

TOL = 1e-4


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# -- torchvision ---------------------------------------------------------------------------------
@pytest.mark.parametrize("width", ["0_5", "1_0", "1_5", "2_0"])
def test_torchvision_v2_converts_exactly(tmp_path, width):
    reference = randomize_bn(getattr(torchvision.models, f"shufflenet_v2_x{width}")())
    torch.save(reference.state_dict(), tmp_path / "tv.pth")
    model = load_checkpoint(tmp_path / "tv.pth")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(model(x), reference(x)) <= TOL
    assert model.model_name == f"shufflenet_v2_x{width}" and not model.training
    assert model.preprocessing == (IMAGENET_RESIZE_232 if width in ("1_5", "2_0") else IMAGENET)
    assert model.class_names[0] == "tench" and len(model.class_names) == 1000


# -- mmpretrain (the real package) -----------------------------------------------------------------
@pytest.mark.parametrize("config", ["shufflenet-v1-1x_16xb64_in1k", "shufflenet-v2-1x_16xb64_in1k"])
def test_mmpretrain_converts_exactly(tmp_path, config):
    mmpretrain = pytest.importorskip("mmpretrain")
    reference = randomize_bn(mmpretrain.get_model(config, pretrained=False))
    torch.save({"state_dict": reference.state_dict(), "meta": {"mmpretrain_version": "1.2.0"}}, tmp_path / "mm.pth")
    model = load_checkpoint(tmp_path / "mm.pth")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(model(x), reference(x, mode="tensor")) <= TOL
    assert model.model_name == ("shufflenet_v1_g3_x1_0" if "v1" in config else "shufflenet_v2_x1_0")


# -- Megvii (documented layout, functional reference) --------------------------------------------
MEGVII_V1_KEYS = {"compress.conv": "branch_main_1.0", "compress.bn": "branch_main_1.1",
                  "depthwise.conv": "branch_main_1.3", "depthwise.bn": "branch_main_1.4",
                  "expand.conv": "branch_main_2.0", "expand.bn": "branch_main_2.1"}
MEGVII_V2_KEYS = {"branch_proj.0.conv": "branch_proj.0", "branch_proj.0.bn": "branch_proj.1",
                  "branch_proj.1.conv": "branch_proj.2", "branch_proj.1.bn": "branch_proj.3",
                  "branch_main.0.conv": "branch_main.0", "branch_main.0.bn": "branch_main.1",
                  "branch_main.1.conv": "branch_main.3", "branch_main.1.bn": "branch_main.4",
                  "branch_main.2.conv": "branch_main.5", "branch_main.2.bn": "branch_main.6"}


def megvii_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Random weights under Megvii's key names (layout of ShuffleNet-Series network.py/blocks.py)."""
    table = MEGVII_V1_KEYS if hasattr(model.stages[0][0], "compress") else MEGVII_V2_KEYS
    out, offsets = {}, np.cumsum([0] + [len(s) for s in model.stages])
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue  # Megvii's files may lack it
        parts = key.split(".")
        if parts[0] == "stages":
            unit = offsets[int(parts[1])] + int(parts[2])
            layer = ".".join(parts[3:-1])
            key = f"features.{unit}.{table[layer]}.{parts[-1]}"
        else:
            key = {"stem.conv": "first_conv.0", "stem.bn": "first_conv.1", "conv_last.conv": "conv_last.0",
                   "conv_last.bn": "conv_last.1", "head.fc": "classifier.0"}[".".join(parts[:-1])] + "." + parts[-1]
        out[key] = value.clone()
    return out


def megvii_v1_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, groups: int, shuffle_after_dw: bool) -> torch.Tensor:
    """Megvii's (shuffle after DW) or mindcv's (shuffle before DW) V1, written from their layout."""
    def bn(t, p):
        return F.batch_norm(t, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"])

    def conv(t, p, stride=1, g=1):
        w = sd[p + ".weight"]
        return F.conv2d(t, w, None, stride, w.shape[-1] // 2, 1, g)

    def shuffle(t):  # reshape (B, C/g, g) -> permute: Megvii's inverse of the paper's shuffle
        b, c, h, w = t.shape
        return t.reshape(b, c // groups, groups, h, w).permute(0, 2, 1, 3, 4).reshape(b, c, h, w)

    x = F.max_pool2d(F.relu(bn(conv(x, "first_conv.0", 2), "first_conv.1")), 3, 2, 1)
    n = 0
    for repeats in (4, 8, 4):
        for i in range(repeats):
            p, stride = f"features.{n}.", 2 if i == 0 else 1
            out = F.relu(bn(conv(x, p + "branch_main_1.0", g=1 if n == 0 else groups), p + "branch_main_1.1"))
            out = out if shuffle_after_dw else shuffle(out)
            out = bn(conv(out, p + "branch_main_1.3", stride, out.shape[1]), p + "branch_main_1.4")
            out = shuffle(out) if shuffle_after_dw else out
            out = bn(conv(out, p + "branch_main_2.0", g=groups), p + "branch_main_2.1")
            x = torch.cat((F.avg_pool2d(x, 3, 2, 1), F.relu(out)), 1) if stride == 2 else F.relu(x + out)
            n += 1
    return F.linear(x.mean((2, 3)), sd["classifier.0.weight"])


def _megvii_v1_fixture(groups: int) -> dict[str, torch.Tensor]:
    donor = randomize_bn(shufflenet.get_model(f"shufflenet_v1_g{groups}_x0_5", shuffle="megvii", fc_bias=False))
    return megvii_state(donor)


@pytest.mark.parametrize("groups", [3, 8])  # g8 0.5x is the case a canonical-shuffle model cannot host
def test_megvii_v1_converts_exactly_with_bgr_preprocessing(tmp_path, groups):
    sd = _megvii_v1_fixture(groups)
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, tmp_path / "snet.pth.tar")
    model = load_checkpoint(tmp_path / "snet.pth.tar")
    x = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        assert max_diff(model(x), megvii_v1_forward(sd, x, groups, shuffle_after_dw=True)) <= TOL
    assert model.model_name == f"shufflenet_v1_g{groups}_x0_5"
    assert model.preprocessing == MEGVII and model.preprocessing.channel_order == "BGR"


def megvii_eval_input(image: Image.Image) -> torch.Tensor:
    """Megvii's evaluation transform (ShuffleNet-Series utils.py): OpencvResize(256), CenterCrop(224), ToBGRTensor."""
    cv2 = pytest.importorskip("cv2")
    rgb = np.asarray(image)
    height, width, _ = rgb.shape
    size = (int(256 / height * width + 0.5), 256) if height < width else (256, int(256 / width * height + 0.5))
    bgr = cv2.resize(np.ascontiguousarray(rgb[:, :, ::-1]), size, interpolation=cv2.INTER_LINEAR)
    cropped = np.asarray(torchvision.transforms.CenterCrop(224)(Image.fromarray(bgr[:, :, ::-1].copy())))
    return torch.from_numpy(np.ascontiguousarray(cropped[:, :, ::-1].transpose(2, 0, 1))).float()


@pytest.mark.parametrize("height,width", [(300, 451), (480, 333)])  # 451 and 333: the long side rounds up, not down
def test_megvii_preprocessing_matches_its_opencv_evaluation(height, width):
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (height // 15 + 1, width // 15 + 1, 3)), np.ones((15, 15, 1)))[:height, :width]
    image = Image.fromarray(np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8))
    reference = megvii_eval_input(image)
    ours = MEGVII.transform()(image)
    assert ours.shape == reference.shape == (3, 224, 224)
    assert (ours - reference).abs().max() <= 1  # cv2 interpolates uint8 in fixed point: off by one at most
    antialiased = dataclasses.replace(MEGVII, resize_backend="torchvision").transform()(image)
    assert (antialiased - reference).abs().mean() > 2  # what the previous preprocessing fed Megvii's weights
    geometry = torchvision.transforms.v2.Compose(MEGVII.geometry_steps())  # also takes PIL images directly
    assert torch.equal(geometry(image), geometry(torchvision.transforms.v2.functional.pil_to_tensor(image)))


def test_preprocessing_metadata_names_the_resize_only_when_it_is_not_the_default():
    assert MEGVII.to_dict()["resize_backend"] == "opencv" and "resize_backend" not in IMAGENET.to_dict()
    for preprocessing in (MEGVII, IMAGENET):  # files without the key stay readable by earlier releases
        assert type(preprocessing).from_dict(preprocessing.to_dict()) == preprocessing


def test_megvii_v2_converts_to_megvii_layout(tmp_path):
    donor = randomize_bn(shufflenet.get_model("shufflenet_v2_x1_0", layout="megvii"))
    torch.save({"state_dict": {"module." + k: v for k, v in megvii_state(donor).items()}}, tmp_path / "v2.pth.tar")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matching tries every width: none may build a broken variant on the way
        model = load_checkpoint(tmp_path / "v2.pth.tar")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(model(x), donor(x)) <= TOL
    assert model.layout == "megvii" and model.preprocessing == MEGVII


# -- mindcv (.ckpt protobuf) -----------------------------------------------------------------------
BN_TO_MINDSPORE = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


def mindcv_ckpt(sd: dict[str, torch.Tensor], groups: int = 1) -> bytes:
    """mindcv's V1/V2 layout: Megvii's names, BN gamma/beta/moving_*, V1 1x1 convs split per group."""
    arrays = {"global_step": np.array([3], np.int32), "moments.first_conv.0.weight": np.zeros(1, np.float32)}
    v1_moves = {"branch_main_1.3": "branch_main_2.0", "branch_main_1.4": "branch_main_2.1",
                "branch_main_2.0": "branch_main_2.2", "branch_main_2.1": "branch_main_2.3"}
    for key, value in sd.items():
        prefix, name = key.rsplit(".", 1)
        prefix = next((prefix[: -len(old)] + new for old, new in v1_moves.items() if prefix.endswith(old)), prefix)
        if name in BN_TO_MINDSPORE and value.ndim == 1 and not prefix.startswith("classifier"):
            name = BN_TO_MINDSPORE[name]
        if prefix == "classifier.0":
            prefix = "classifier"
        is_group_conv = prefix.endswith(("branch_main_1.0", "branch_main_2.2"))
        if is_group_conv:
            n = 1 if prefix == "features.0.branch_main_1.0" else groups
            for k, part in enumerate(value.chunk(n, 0)):
                arrays[f"{prefix}.convs.{k}.{name}"] = part.numpy()
        else:
            arrays[f"{prefix}.{name}"] = value.numpy()
    return write_checkpoint(arrays)


def test_mindspore_ckpt_round_trip_and_truncation():
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([7], np.int32)}
    data = write_checkpoint(arrays)
    back = read_checkpoint(data)
    assert set(back) == {"a", "b"} and np.array_equal(back["a"], arrays["a"]) and back["b"].dtype == np.int32
    with pytest.raises(ValueError):
        read_checkpoint(data[:-5])


def test_mindcv_v1_converts_exactly(tmp_path):
    sd = _megvii_v1_fixture(3)
    (tmp_path / "v1.ckpt").write_bytes(mindcv_ckpt(sd, groups=3))
    model = load_checkpoint(tmp_path / "v1.ckpt")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(model(x), megvii_v1_forward(sd, x, 3, shuffle_after_dw=False)) <= TOL
    assert model.model_name == "shufflenet_v1_g3_x0_5"


def test_mindcv_v2_converts_exactly(tmp_path):
    donor = randomize_bn(shufflenet.get_model("shufflenet_v2_x0_5", layout="megvii"))
    (tmp_path / "v2.ckpt").write_bytes(mindcv_ckpt(megvii_state(donor)))
    model = load_checkpoint(tmp_path / "v2.ckpt")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(model(x), donor(x)) <= TOL


# -- MegEngine (.pkl of numpy arrays) --------------------------------------------------------------
def test_megengine_pickle_converts_and_refuses_code(tmp_path):
    donor = randomize_bn(shufflenet.get_model("shufflenet_v2_x0_5", layout="megvii"))
    arrays = {k: (v.reshape(1, -1, 1, 1) if v.ndim == 1 else v).numpy() for k, v in megvii_state(donor).items()}
    (tmp_path / "snet.pkl").write_bytes(pickle.dumps(arrays))
    model = load_checkpoint(tmp_path / "snet.pkl")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(model(x), donor(x)) <= TOL
    assert model.preprocessing.channel_order == "BGR"

    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"w": Exploit()}))
    with pytest.raises(UserError, match="refusing"):
        load_checkpoint(tmp_path / "evil.pkl")


# -- PaddleClas (.pdparams: paddle.save's pickle of numpy arrays) -----------------------------------
PADDLE_BN = {"weight": "weight", "bias": "bias", "running_mean": "_mean", "running_var": "_variance"}
PADDLECLAS_WIDTHS = {"0_25": [24, 24, 48, 96, 512], "1_0": [24, 116, 232, 464, 1024]}  # ppcls ShuffleNet's tables


def paddleclas_pdparams(tv: torch.nn.Module, conv_bn: tuple[str, str] = ("_conv", "_batch_norm")) -> bytes:
    """A torchvision V2's weights as PaddleClas saves its ShuffleNet: ppcls layer names (``_conv1``,
    units ``<stage>_<n>`` with ``_conv_dw_1``... in stride-2 units, ``ConvBNLayer`` = ``_conv`` +
    ``_batch_norm`` with ``_mean``/``_variance``), its Linear as (in, out), numpy arrays, and
    paddle.save's name table, pickled with protocol 4. ``conv_bn=("0", "1")``: paddle.vision's copy,
    whose layers are ``ConvNormActivation`` Sequentials."""
    arrays = {}
    for key, value in tv.state_dict().items():
        *path, name = key.split(".")
        if name == "num_batches_tracked":  # Paddle's BatchNorm keeps no counter
            continue
        if path == ["fc"]:
            arrays[f"_fc.{name}"] = (value.t() if name == "weight" else value).numpy()
            continue
        if path[0] in ("conv1", "conv5"):  # Sequential(conv, bn, relu)
            layer, is_bn = {"conv1": "_conv1", "conv5": "_last_conv"}[path[0]], path[1] == "1"
        else:  # stageS.I.branch1 = (dw, bn, pw, bn, relu); branch2 = (pw, bn, relu, dw, bn, pw, bn, relu)
            stage, unit, branch, index = int(path[0][5:]), int(path[1]), path[2], int(path[3])
            if branch == "branch1":
                kind, is_bn = ("_conv_dw_1", "_conv_linear_1")[index // 2], index % 2 == 1
            else:
                kind = {0: "_conv_pw", 1: "_conv_pw", 3: "_conv_dw", 4: "_conv_dw", 5: "_conv_linear", 6: "_conv_linear"}[index]
                kind, is_bn = kind + ("_2" if unit == 0 else ""), index in (1, 4, 6)
            layer = f"{stage}_{unit + 1}.{kind}"
        arrays[f"{layer}.{conv_bn[1]}.{PADDLE_BN[name]}" if is_bn else f"{layer}.{conv_bn[0]}.weight"] = value.numpy()
    arrays["StructuredToParameterName@@"] = {key: f"create_parameter_{i}.w_0" for i, key in enumerate(arrays)}
    return pickle.dumps(arrays, protocol=4)


@pytest.mark.parametrize(("width", "conv_bn"), [("0_25", ("_conv", "_batch_norm")), ("1_0", ("_conv", "_batch_norm")), ("1_0", ("0", "1"))])
def test_paddleclas_pdparams_convert_exactly_by_file_and_by_tag(width, conv_bn, tmp_path, monkeypatch):
    """x1.0 from a file, as PaddleClas and as paddle.vision save it; x0.25, whose only public weights
    are PaddleClas's, through its default tag. torchvision's ShuffleNetV2 built with PaddleClas's
    channel table is the reference."""
    monkeypatch.setenv("SHUFFLENET_HOME", str(tmp_path / "home"))
    tv = randomize_bn(torchvision.models.ShuffleNetV2([4, 8, 4], PADDLECLAS_WIDTHS[width])).eval()
    payload, requested = paddleclas_pdparams(tv, conv_bn), []
    if width == "1_0":
        (tmp_path / "ShuffleNetV2_x1_0_pretrained.pdparams").write_bytes(payload)
        model = load_checkpoint(tmp_path / "ShuffleNetV2_x1_0_pretrained.pdparams")
    else:
        monkeypatch.setattr(hub, "_open_url", lambda url: requested.append(url) or io.BytesIO(payload))
        model = shufflenet.get_model(f"shufflenet_v2_x{width}", pretrained=True)
        assert requested == [f"https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/ShuffleNetV2_x{width}_pretrained.pdparams"]
        assert model.source["tag"] == f"shufflenet_v2_x{width}.paddle_in1k"
    assert model.model_name == f"shufflenet_v2_x{width}" and model.preprocessing == IMAGENET
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(model(x), tv(x)) <= TOL


def test_paddleclas_swish_is_x1_0_with_silu_by_tag_or_by_name(tmp_path, monkeypatch):
    """ShuffleNetV2_swish has x1.0's shapes: its tag, its file name or its model name build swish
    (torchvision's x1.0 with every ReLU a SiLU is the reference); the weights alone read as ReLU x1.0.
    A saved swish V2 keeps its activation."""
    monkeypatch.setenv("SHUFFLENET_HOME", str(tmp_path / "home"))
    tv = randomize_bn(torchvision.models.shufflenet_v2_x1_0()).eval()
    for parent in list(tv.modules()):
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.ReLU):
                setattr(parent, name, torch.nn.SiLU())
    payload, requested = paddleclas_pdparams(tv), []
    monkeypatch.setattr(hub, "_open_url", lambda url: requested.append(url) or io.BytesIO(payload))
    model = shufflenet.get_model("shufflenet_v2_x1_0_swish", pretrained=True)
    assert requested == ["https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/ShuffleNetV2_swish_pretrained.pdparams"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = tv(x)
        assert max_diff(model(x), expected) <= TOL
        (tmp_path / "ShuffleNetV2_swish_pretrained.pdparams").write_bytes(payload)
        (tmp_path / "renamed.pdparams").write_bytes(payload)
        assert max_diff(load_checkpoint(tmp_path / "ShuffleNetV2_swish_pretrained.pdparams")(x), expected) <= TOL
        assert load_checkpoint(tmp_path / "renamed.pdparams").model_name == "shufflenet_v2_x1_0"
        named = load_checkpoint(tmp_path / "renamed.pdparams", spec=shufflenet.models.registry.get_spec("shufflenet_v2_x1_0_swish"))
        assert max_diff(named(x), expected) <= TOL
        half = shufflenet.get_model("shufflenet_v2_x0_5", activation="silu").eval()
        save_checkpoint(half, tmp_path / "half.safetensors")
        assert torch.equal(load_model(str(tmp_path / "half.safetensors"))(x), half(x))


# -- our format, errors, CLI -----------------------------------------------------------------------
def test_safetensors_round_trip_keeps_metadata(tmp_path):
    model = shufflenet.get_model("shufflenet_v1_g8_x0_5", shuffle="megvii", fc_bias=False, num_classes=7).eval()
    model.class_names = tuple("abcdefg")
    model.preprocessing = MEGVII
    save_checkpoint(model, tmp_path / "m.safetensors", {"epoch": 3})
    loaded = load_model(str(tmp_path / "m.safetensors"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.class_names == tuple("abcdefg") and loaded.preprocessing == MEGVII
    assert loaded.stages[0][1].shuffle_groups == model.stages[0][1].shuffle_groups != 8
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


def test_bad_checkpoints_fail_clearly_with_exit_2(tmp_path, capsys):
    tv = torchvision.models.shufflenet_v2_x0_5()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    good = (tmp_path / "tv.pth").read_bytes()
    (tmp_path / "trunc.pth").write_bytes(good[: len(good) // 2])
    assert cli_main(["convert", str(tmp_path / "trunc.pth"), "-o", str(tmp_path / "a.safetensors")]) == 2
    assert "weights_only" in capsys.readouterr().err
    # wrong architecture: a 0.5x file forced into 1.0x names the mismatched shapes
    assert cli_main(["convert", str(tmp_path / "tv.pth"), "-o", str(tmp_path / "b.safetensors"),
                     "--model", "shufflenet_v2_x1_0"]) == 2
    assert "mismatched shapes" in capsys.readouterr().err
    state = tv.state_dict()
    del state["fc.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(UserError, match=r"missing keys \(1\): head.fc.weight.*unexpected keys \(1\): extra.weight"):
        load_checkpoint(tmp_path / "broken.pth", spec=shufflenet.models.registry.get_spec("shufflenet_v2_x0_5"))
    (tmp_path / "c.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    with pytest.raises(UserError, match="malformed or truncated"):
        load_checkpoint(tmp_path / "c.safetensors")
    assert not (tmp_path / "a.safetensors").exists() and not (tmp_path / "b.safetensors").exists()
    diverged = tv.state_dict()  # a run saved after its loss went NaN (megvii-model/ShuffleNet-Series#4)
    diverged["conv1.1.running_var"][3] = float("inf")
    diverged["fc.weight"][0, 0] = float("nan")
    torch.save(diverged, tmp_path / "nan.pth")
    assert cli_main(["convert", str(tmp_path / "nan.pth"), "-o", str(tmp_path / "d.safetensors")]) == 2
    assert "is damaged: tensors with NaN or inf (2): stem.bn.running_var, head.fc.weight" in capsys.readouterr().err


def test_cli_convert_then_get_model_with_fine_tuning(tmp_path, capsys, caplog):
    reference = randomize_bn(torchvision.models.shufflenet_v2_x0_5())
    torch.save(reference.state_dict(), tmp_path / "tv.pth")
    out = tmp_path / "tv.safetensors"
    assert cli_main(["convert", str(tmp_path / "tv.pth"), "-o", str(out), "--from", "torchvision"]) == 0
    assert "shufflenet_v2_x0_5" in capsys.readouterr().out
    assert cli_main(["convert", str(tmp_path / "tv.pth"), "-o", str(out)]) == 2  # never overwrites silently
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(shufflenet.get_model("shufflenet_v2_x0_5", pretrained=str(out))(x), reference(x)) <= TOL
    with caplog.at_level(logging.INFO, logger="shufflenet"):
        tuned = shufflenet.get_model("shufflenet_v2_x0_5", pretrained=str(out), num_classes=10)
    assert tuned.head.fc.out_features == 10 and tuned.class_names is None
    assert torch.equal(tuned.stem.conv.weight, reference.conv1[0].weight)
    assert sum("re-initialised for 10 classes" in r.message for r in caplog.records) == 1


# -- tags, cache and download (the network is monkeypatched) -----------------------------------------
@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """torchvision's x0.5 tag served from memory; returns (payload, reference model, requested URLs)."""
    monkeypatch.setenv("SHUFFLENET_HOME", str(tmp_path / "home"))
    reference = randomize_bn(torchvision.models.shufflenet_v2_x0_5())
    buffer = io.BytesIO()
    torch.save(reference.state_dict(), buffer)
    payload, requested = buffer.getvalue(), []

    def open_url(url):
        requested.append(url)
        return io.BytesIO(payload)

    monkeypatch.setattr(hub, "_open_url", open_url)
    tag = hub.TAGS["shufflenet_v2_x0_5"]["tv_in1k"]
    prefix = hashlib.sha256(payload).hexdigest()[:10]
    monkeypatch.setitem(hub.TAGS["shufflenet_v2_x0_5"], "tv_in1k", dataclasses.replace(tag, sha256_prefix=prefix))
    return payload, reference, requested


@pytest.mark.parametrize("width", ["0_5", "1_0", "1_5", "2_0"])
def test_torchvision_tags_are_torchvisions_own_weights(width):
    weights = getattr(torchvision.models, f"ShuffleNet_V2_X{width.upper()}_Weights").IMAGENET1K_V1
    tag = hub.get_tag(f"shufflenet_v2_x{width}", "tv_in1k")
    published = weights.meta["_metrics"]["ImageNet-1K"]
    assert (tag.url, tag.top1, tag.top5) == (weights.url, published["acc@1"], published["acc@5"])
    assert tag.url.rsplit("-", 1)[1].startswith(tag.sha256_prefix)  # torchvision names files by their hash
    evaluation = weights.transforms()
    assert (tag.preprocessing.resize_size, tag.preprocessing.crop_size) == (evaluation.resize_size[0], evaluation.crop_size[0])
    assert (tag.preprocessing.mean, tag.preprocessing.std) == (tuple(evaluation.mean), tuple(evaluation.std))


def test_pretrained_downloads_once_then_works_offline(fake_hub, monkeypatch):
    _, reference, requested = fake_hub
    model = shufflenet.get_model("shufflenet_v2_x0_5.tv_in1k", pretrained=True)
    assert requested == ["https://download.pytorch.org/models/shufflenetv2_x0.5-f707e7126e.pth"]

    def offline(url):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(hub, "_open_url", offline)
    again = load_model("shufflenet_v2_x0_5")  # default tag, from the cache
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(again(x), reference(x)) <= TOL and torch.equal(model(x), again(x))
    assert again.source["tag"] == "shufflenet_v2_x0_5.tv_in1k"


def test_offline_and_bad_hash_fail_clearly_and_leave_no_file(fake_hub, monkeypatch, tmp_path):
    def offline(url):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(hub, "_open_url", offline)
    with pytest.raises(UserError, match=r"shufflenetv2_x1-5666bf0f80\.pth.*put it at .*home/weights/shufflenetv2_x1"):
        shufflenet.get_model("shufflenet_v2_x1_0", pretrained=True)
    monkeypatch.setattr(hub, "_open_url", lambda url: io.BytesIO(b"not the published file"))
    with pytest.raises(UserError, match="does not start with the published 5666bf0f80"):
        shufflenet.get_model("shufflenet_v2_x1_0", pretrained="tv_in1k")
    assert not any((tmp_path / "home" / "weights").iterdir())
    with pytest.raises(UserError, match=r"1drv\.ms.*put it at .*shufflenet_v1_g8_x0_5\.megvii_in1k\.pth\.tar"):
        shufflenet.get_model("shufflenet_v1_g8_x0_5", pretrained=True)


def test_tags_choose_the_architecture_variant(capsys):
    assert hub.tag_model_kwargs("shufflenet_v1_g8_x0_5", "megvii_in1k") == {"shuffle": "megvii", "fc_bias": False}
    assert hub.tag_model_kwargs("shufflenet_v2_x1_0", "mindcv_in1k") == {"layout": "megvii"}
    assert hub.tag_model_kwargs("shufflenet_v2_x1_0", "tv_in1k") == {}
    assert shufflenet.get_model("shufflenet_v1_g3_05").head.fc.bias is None  # mindcv alias -> its tag's variant
    with pytest.raises(UserError, match="available: tv_in1k, mmpretrain_in1k"):
        hub.tag_model_kwargs("shufflenet_v2_x1_0", "imagenet")
    assert cli_main(["list", "--pretrained", "shufflenet_v2_x1_5*"]) == 0
    out = capsys.readouterr().out
    assert "shufflenet_v2_x1_5.tv_in1k" in out and "72.996" in out


# -- chenyaofo/pytorch-cifar-models: CIFAR weights for the small-input V2 (network monkeypatched) ----
CHENYAOFO_URL = "https://github.com/chenyaofo/pytorch-cifar-models/releases/download/shufflenetv2/"
# its README's params / MAdds (M) per network, the logs' (branch `logs`) normalisation per dataset
CHENYAOFO_COUNTS = {"cifar10": {"0_5": (0.35, 10.90), "1_0": (1.26, 45.00), "1_5": (2.49, 94.26), "2_0": (5.37, 187.81)},
                    "cifar100": {"0_5": (0.44, 10.99), "1_0": (1.36, 45.09), "1_5": (2.58, 94.35), "2_0": (5.55, 188.00)}}
CHENYAOFO_NORM = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
                  "cifar100": ((0.507, 0.4865, 0.4409), (0.2673, 0.2564, 0.2761))}


def chenyaofo_shufflenet_v2(width: str, num_classes: int) -> torch.nn.Module:
    """chenyaofo's network (pytorch_cifar_models/shufflenetv2.py): torchvision's with conv1's stride 2 -> 1
    and no max-pool; random BN statistics and logits of order 10, so a wrong stem or BN shows."""
    model = getattr(torchvision.models, f"shufflenet_v2_x{width}")(num_classes=num_classes)
    model.conv1[0].stride = (1, 1)
    model.maxpool = torch.nn.Identity()
    torch.nn.init.normal_(model.fc.weight, 0, 0.5)
    return randomize_bn(model)


@pytest.mark.parametrize(("width", "dataset"), [("1_0", "cifar10"), ("0_5", "cifar100")])
def test_chenyaofo_tags_load_exactly_and_classify_as_its_evaluation(width, dataset, tmp_path, monkeypatch):
    """The file is chenyaofo's torch.save(state_dict()): same logits, its classes, and inference with its
    evaluation transform (ToTensor, Normalize with the logs' mean/std) on a 32x32 image."""
    monkeypatch.setenv("SHUFFLENET_HOME", str(tmp_path / "home"))
    classes = 10 if dataset == "cifar10" else 100
    reference = chenyaofo_shufflenet_v2(width, classes)
    buffer = io.BytesIO()
    torch.save(reference.state_dict(), buffer)
    requested = []
    monkeypatch.setattr(hub, "_open_url", lambda url: requested.append(url) or io.BytesIO(buffer.getvalue()))
    name = f"shufflenet_v2_x{width}.chenyaofo_{dataset}"
    model = shufflenet.get_model(name, pretrained=True)
    suffix = {"cifar10": "98807be3", "cifar100": "1977720f"}[dataset]  # its README's links
    assert requested == [f"{CHENYAOFO_URL}{dataset}_shufflenetv2_x{width}-{suffix}.pt"]
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert max_diff(model(x), reference(x)) <= 1e-5
    assert model.head.fc.out_features == classes and model.stem.conv.stride == (1, 1) and not model.training
    assert model.source == {"format": "torchvision", "tag": name, "url": requested[0]}
    if dataset == "cifar10":
        assert model.class_names == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    else:  # the dataset's fine labels: alphabetical, as its meta file (and mmpretrain's copy) lists them
        assert len(model.class_names) == 100 and list(model.class_names) == sorted(set(model.class_names))
        assert model.class_names[:3] == ("apple", "aquarium_fish", "baby") and model.class_names[-1] == "worm"
    mean, std = CHENYAOFO_NORM[dataset]
    assert (model.preprocessing.crop_size, model.preprocessing.resize_size) == (32, 32)
    assert (model.preprocessing.mean, model.preprocessing.std) == (mean, std)

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    evaluation = torchvision.transforms.Compose([torchvision.transforms.ToTensor(), torchvision.transforms.Normalize(mean, std)])
    with torch.no_grad():
        expected = reference(evaluation(image).unsqueeze(0)).softmax(1)[0]
    result = shufflenet.inference_model(name, image, backend="torch")  # from the cache now
    assert len(requested) == 1
    assert result["pred_label"] == expected.argmax().item() and result["pred_class"] == model.class_names[result["pred_label"]]
    assert result["pred_score"] == pytest.approx(expected.max().item(), abs=1e-5)


def test_chenyaofo_tags_build_its_networks_without_weights():
    """Each tag's variant (small_input: stride-1 stem, no max-pool) has the parameters and multiply-adds
    at 32 px that chenyaofo's README states for its network."""
    for dataset, counts in CHENYAOFO_COUNTS.items():
        classes = 10 if dataset == "cifar10" else 100
        for width, (params, macs) in counts.items():
            name = f"shufflenet_v2_x{width}"
            assert hub.tag_model_kwargs(name, f"chenyaofo_{dataset}") == {"small_input": True, "num_classes": classes}
            tag = hub.get_tag(name, f"chenyaofo_{dataset}")
            assert tag.sha256_prefix is None and tag.dataset == f"CIFAR-{classes}"  # no documented hash
            ours = shufflenet.complexity(shufflenet.get_model(tag.full_name), 32)
            assert (round(ours.params / 1e6, 2), round(ours.macs / 1e6, 2)) == (params, macs), tag.full_name
    assert hub.get_tag("shufflenet_v2_x1_0").tag == "tv_in1k"  # pretrained=True still means ImageNet


def test_a_zoo_file_under_its_published_name_loads_as_its_tag(tmp_path, capsys):
    """chenyaofo's file as torch.hub caches it (~/.cache/torch/hub/checkpoints/<its URL's name>) has
    torchvision's keys and shapes: only its name tells the CIFAR stem, classes and preprocessing, by path
    and through `convert` too. Under another name it is read as torchvision's network (documented)."""
    names = [t.cache_name for tags in hub.TAGS.values() for t in tags.values()]
    assert len(names) == len(set(names))  # a published name identifies one tag
    reference = chenyaofo_shufflenet_v2("1_0", 10)
    tag = hub.get_tag("shufflenet_v2_x1_0", "chenyaofo_cifar10")
    torch.save(reference.state_dict(), tmp_path / tag.cache_name)
    model = shufflenet.get_model("shufflenet_v2_x1_0", pretrained=str(tmp_path / tag.cache_name))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert max_diff(model(x), reference(x)) <= 1e-5
    assert model.preprocessing == tag.preprocessing and model.class_names[0] == "airplane"
    assert model.source == {"format": "torchvision", "file": tag.cache_name, "tag": tag.full_name, "url": tag.url}

    assert cli_main(["convert", str(tmp_path / tag.cache_name), "-o", str(tmp_path / "c.safetensors")]) == 0
    converted = load_checkpoint(tmp_path / "c.safetensors")
    assert converted.stem.conv.stride == (1, 1) and converted.preprocessing == tag.preprocessing
    with torch.no_grad():
        assert max_diff(converted(x), reference(x)) <= 1e-5

    (tmp_path / tag.cache_name).rename(tmp_path / "renamed.pt")
    assert load_checkpoint(tmp_path / "renamed.pt").stem.conv.stride == (2, 2)  # ImageNet's stem: use the tag


def test_a_file_that_is_not_chenyaofos_fails_clearly(tmp_path, monkeypatch, capsys):
    """ImageNet weights put by hand where the CIFAR-10 tag's file belongs: a one-line error, no traceback."""
    monkeypatch.setenv("SHUFFLENET_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(hub, "_open_url", lambda url: pytest.fail("the network was touched"))
    tag = hub.get_tag("shufflenet_v2_x0_5", "chenyaofo_cifar10")
    hub.cache_dir().mkdir(parents=True)
    torch.save(torchvision.models.shufflenet_v2_x0_5().state_dict(), hub.cache_dir() / tag.cache_name)
    mismatch = r"does not fit shufflenet_v2_x0_5: mismatched shapes \(2\): head\.fc\.weight \(1000, 1024\) vs model \(10, 1024\)"
    with pytest.raises(UserError, match=mismatch):
        shufflenet.get_model(tag.full_name, pretrained=True)
    Image.new("RGB", (32, 32)).save(tmp_path / "img.png")
    assert cli_main(["predict", tag.full_name, str(tmp_path / "img.png")]) == 2
    assert "cifar10_shufflenetv2_x0_5-1308b4e9.pt does not fit" in capsys.readouterr().err


@pytest.mark.parametrize("with_ema", [True, False])
def test_a_training_state_loads_as_its_ema_weights_else_its_model(tmp_path, with_ema):
    """`shufflenet train`'s last.pt/best.pt (model, optimizer, EMA, position, recipe...): its EMA, which
    best.pt was chosen by and model.safetensors holds, or the model's weights in a run without one."""
    from shufflenet.engine.builders import build_ema
    from shufflenet.engine.config import load_config

    config = load_config(None, ["model.name=shufflenet_v2_x0_5", "model.num_classes=3", "train.ema_decay=0.5"])
    model = randomize_bn(shufflenet.get_model("shufflenet_v2_x0_5", num_classes=3))
    ema = build_ema(model, config.train)
    ema.update_parameters(model)
    for parameter in model.parameters():  # the model moves on from its average
        parameter.data.add_(1.0)
    state = {"model": model.state_dict(), "ema": ema.state_dict() if with_ema else None, "position": {"epoch": 1},
             "config": config.to_dict(), "class_names": ["a", "b", "c"]}
    torch.save(state, tmp_path / "best.pt")
    loaded = load_model(str(tmp_path / "best.pt"))  # as `predict` and `convert` load it
    expected = (ema.module if with_ema else model).state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in loaded.state_dict().items())
    assert loaded.class_names == ("a", "b", "c") and loaded.source["weights"] == ("ema" if with_ema else "model")
