"""The zoo: every model builds, runs, matches the published sizes and works as a backbone."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import shufflenet
from shufflenet.errors import UnknownModelError
from shufflenet.models import ShuffleNetV1, ShuffleNetV2

ALL_MODELS = shufflenet.list_models()


def test_zoo_is_complete():
    v1 = [f"shufflenet_v1_g{g}_x{w}" for g in (1, 2, 3, 4, 8) for w in ("0_25", "0_5", "1_0", "1_5", "2_0")]
    v2 = [f"shufflenet_v2_x{w}" for w in ("0_25", "0_33", "0_5", "1_0", "1_5", "2_0")] + ["shufflenet_v2_x1_0_swish"]
    v2_plus = [f"shufflenet_v2_plus_{s}" for s in ("small", "medium", "large")]
    assert sorted(ALL_MODELS) == sorted(v1 + v2 + v2_plus)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_backward(name):
    model = shufflenet.get_model(name, num_classes=7)
    logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 7)
    logits.logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("width", [0.5, 1.0, 1.5, 2.0])
def test_v2_parameters_equal_torchvision(width):
    name = f"shufflenet_v2_x{str(width).replace('.', '_')}"
    reference = getattr(torchvision.models, name)()
    ours = shufflenet.get_model(name)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    # Same tensors, layer by layer (names differ; shapes and order do not).
    assert [p.shape for p in ours.state_dict().values()] == [p.shape for p in reference.state_dict().values()]


@pytest.mark.parametrize(
    "width,params", [(0.5, 1_365_792), (1.0, 2_278_760), (1.5, 3_506_720), (2.0, 7_402_600)]
)
def test_v2_megvii_layout_parameters(width, params):
    model = ShuffleNetV2(width, layout="megvii")
    assert sum(p.numel() for p in model.parameters()) == params
    assert isinstance(model.head.dropout, nn.Dropout) == (width == 2.0)


def _macs(name: str) -> float:
    return shufflenet.complexity(name).macs / 1e6


# (model, published MACs in millions, tolerance): paper Tables 1-2 and Megvii's README.
MAC_TARGETS = (
    [(f"shufflenet_v1_g{g}_x1_0", m, 0.03) for g, m in zip((1, 2, 3, 4, 8), (143, 140, 137, 133, 137))]
    + [(f"shufflenet_v1_g{g}_x0_5", 38, 0.08) for g in (1, 2, 3, 4, 8)]
    + [(f"shufflenet_v1_g{g}_x0_25", 13, 0.15) for g in (1, 2, 3, 4, 8)]
    + [("shufflenet_v1_g3_x1_5", 292, 0.03), ("shufflenet_v1_g3_x2_0", 524, 0.03)]
    + [("shufflenet_v1_g8_x1_5", 290, 0.03), ("shufflenet_v1_g8_x2_0", 522, 0.03)]
    + [(f"shufflenet_v2_x{w}", m, 0.01) for w, m in zip(("0_5", "1_0", "1_5", "2_0"), (40.5, 144.9, 295.8, 583.3))]
    + [(f"shufflenet_v2_plus_{s}", m, 0.03) for s, m in zip(("small", "medium", "large"), (156, 222, 360))]
)


@pytest.mark.parametrize("name,published,tolerance", MAC_TARGETS)
def test_macs_match_published(name, published, tolerance):
    assert _macs(name) == pytest.approx(published, rel=tolerance)


@pytest.mark.parametrize("width,stages,params", [(0.25, (24, 48, 96, 512), 0.60e6), (0.33, (32, 64, 128, 512), 0.64e6)])
def test_v2_narrow_widths_match_paddleclas(width, stages, params):
    model = ShuffleNetV2(width)
    assert tuple(i["num_chs"] for i in model.feature_info()) == stages  # PaddleClas's stage_out_channels
    assert shufflenet.complexity(model, 32).params == pytest.approx(params, rel=0.012)  # published as 0.60 / 0.64 M
    if width == 0.25:  # Megvii's stride-2 unit would have a main branch of 24 - 24 = 0 channels
        with pytest.raises(ValueError, match="megvii layout needs each stage wider than its input"):
            ShuffleNetV2(width, layout="megvii")


def test_v2_custom_stages_load_from_torchvision_weights(tmp_path, capsys):
    from shufflenet.cli import main
    from shufflenet.models.v2 import convert_routing
    from shufflenet.weights import load_checkpoint

    widths, repeats = (24, 112, 224, 448, 1024), (2, 6, 2)  # torchvision's stages_out_channels / stages_repeats
    torch.manual_seed(0)
    reference = torchvision.models.ShuffleNetV2(list(repeats), list(widths), num_classes=10).eval()
    for module in reference.modules():  # BN statistics that are not the identity
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    torch.save(reference.state_dict(), tmp_path / "aligned.pth")
    assert main(["convert", str(tmp_path / "aligned.pth"), "-o", str(tmp_path / "aligned.safetensors")]) == 0
    assert "(stage_widths [24, 112, 224, 448, 1024], stage_repeats [2, 6, 2])" in capsys.readouterr().out
    ours = load_checkpoint(tmp_path / "aligned.safetensors").eval()
    assert (ours.stage_widths, ours.stage_repeats) == (widths, repeats)
    assert [i["num_chs"] for i in ours.feature_info()] == [112, 224, 448, 1024]
    built = shufflenet.get_model("shufflenet_v2_x1_0", num_classes=10, stage_widths=widths, stage_repeats=repeats)
    assert [p.shape for p in built.state_dict().values()] == [p.shape for p in ours.state_dict().values()]
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = reference(x)
        assert torch.allclose(ours(x), expected, atol=1e-5)
        assert torch.allclose(convert_routing(ours, "even_odd")(x), expected, atol=1e-5)


@pytest.mark.parametrize("kwargs,message", [
    ({"stage_widths": (24, 112, 224, 1024)}, "stage_widths needs 5 entries"),
    ({"stage_widths": (24, 113, 226, 452, 1024)}, "must be even"),
    ({"stage_repeats": (4, 8)}, "stage_widths needs 4 entries"),
    ({"stage_repeats": (4, 0, 4)}, "repeats positive"),
    ({"stage_repeats": ()}, "stage_widths needs 2 entries"),
    ({"stage_widths": (24, 112, 224, 200, 1024), "layout": "megvii"}, "megvii layout needs each stage wider than its input"),
])
def test_v2_bad_stage_plans_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShuffleNetV2(**kwargs)


@pytest.mark.parametrize("size,params", [("small", 5.1e6), ("medium", 5.6e6), ("large", 6.7e6)])
def test_v2_plus_parameters(size, params):
    assert shufflenet.complexity(f"shufflenet_v2_plus_{size}", 32).params == pytest.approx(params, rel=0.03)


@pytest.mark.parametrize(
    "groups,width,stem,stages",
    [  # Megvii's hand-written tables, reproduced by our channel rule
        (3, 0.5, 12, (120, 240, 480)), (3, 1.5, 24, (360, 720, 1440)), (3, 2.0, 48, (480, 960, 1920)),
        (8, 0.5, 16, (192, 384, 768)), (8, 1.0, 24, (384, 768, 1536)), (8, 1.5, 24, (576, 1152, 2304)),
    ],
)
def test_v1_channels_reproduce_megvii(groups, width, stem, stages):
    model = ShuffleNetV1(groups, width)
    assert model.stem.conv.out_channels == stem
    assert tuple(stage[-1].expand.conv.out_channels for stage in model.stages) == stages


def test_v1_shuffle_orders():
    x = torch.randn(1, 3, 64, 64)
    torch.manual_seed(0)
    paper = ShuffleNetV1(3, 0.5).eval()
    outputs = {"paper": paper(x)}
    for order in ("megvii", "none"):
        model = ShuffleNetV1(3, 0.5, shuffle=order).eval()
        model.load_state_dict(paper.state_dict())  # same parameters: only the routing differs
        outputs[order] = model(x)
    assert not torch.allclose(outputs["paper"], outputs["none"])
    assert not torch.allclose(outputs["paper"], outputs["megvii"])
    with pytest.raises(ValueError, match="shuffle must be one of"):
        ShuffleNetV1(3, 0.5, shuffle="inverse")


@pytest.mark.parametrize("name,small_input,strides", [
    ("shufflenet_v1_g3_x0_5", False, (8, 16, 32)),
    ("shufflenet_v1_g3_x0_5", True, (2, 4, 8)),
    ("shufflenet_v2_x0_5", False, (8, 16, 32, 32)),
    ("shufflenet_v2_x0_5", True, (2, 4, 8, 8)),
    ("shufflenet_v2_plus_small", False, (4, 8, 16, 32, 32)),
    ("shufflenet_v2_plus_small", True, (2, 4, 8, 16, 16)),
])
def test_extract_feat_strides_and_feature_info(name, small_input, strides):
    model = shufflenet.get_model(name, small_input=small_input).eval()
    feats = model.extract_feat(torch.randn(1, 3, 96, 128))
    assert tuple(96 // f.shape[2] for f in feats) == strides
    assert tuple(128 // f.shape[3] for f in feats) == strides
    assert feats[-1].shape[1] == model.num_features
    info = model.feature_info()  # what a neck is built from, before any forward pass
    assert [(i["num_chs"], i["reduction"]) for i in info] == [(f.shape[1], s) for f, s in zip(feats, strides)]
    assert [dict(model.named_modules())[i["module"]] for i in info] == model.feature_levels()


def test_info_json_lists_the_feature_levels(capsys):
    from shufflenet.cli import main

    assert main(["info", "shufflenet_v2_x1_0", "--json"]) == 0
    levels = json.loads(capsys.readouterr().out)["feature_info"]
    assert [(i["module"], i["num_chs"], i["reduction"]) for i in levels] == [
        ("stages.0", 116, 8), ("stages.1", 232, 16), ("stages.2", 464, 32), ("conv_last", 1024, 32)]


def test_info_on_a_tag_describes_its_weights_without_fetching_them(capsys, tmp_path, monkeypatch):
    from shufflenet.cli import main

    monkeypatch.setenv("SHUFFLENET_HOME", str(tmp_path))  # an empty cache: nothing may be downloaded
    assert main(["info", "shufflenet_v2_x1_0.chenyaofo_cifar10", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    # the small-input 10-class network at 32 px, with chenyaofo's published 1.26M parameters and 45.00M MAdds
    assert info["settings"]["small_input"] is True and info["settings"]["num_classes"] == 10
    assert info["input_size"] == 32 and round(info["params"] / 1e6, 2) == 1.26 and round(info["macs"] / 1e6, 2) == 45.00
    assert info["class_names"][:2] == ["airplane", "automobile"] and info["preprocessing"]["std"][0] == 0.2023
    assert info["weights"] == {"dataset": "CIFAR-10", "top1": 92.98, "top5": 99.73}
    assert info["source"]["url"].endswith("cifar10_shufflenetv2_x1_0-98807be3.pt") and not any(tmp_path.iterdir())
    assert main(["info", "shufflenet_v2_x1_0.tv_in1k"]) == 0  # an ImageNet tag: 224 px, its hash checked
    out = capsys.readouterr().out
    assert "MACs@224       144.9M" in out and "sha256=5666bf0f80" in out and "ImageNet-1k top-1 69.362" in out
    assert main(["info", "shufflenet_v2_x1_0.nope"]) == 2
    assert "unknown tag shufflenet_v2_x1_0.nope; available: tv_in1k" in capsys.readouterr().err


def test_out_indices_and_small_input():
    model = shufflenet.get_model("shufflenet_v2_x0_5", small_input=True, out_indices=(0, 2)).eval()
    feats = model.extract_feat(torch.randn(1, 3, 32, 32))
    assert [f.shape[1:] for f in feats] == [(48, 16, 16), (192, 4, 4)]
    with pytest.raises(ValueError, match="out_indices"):
        shufflenet.get_model("shufflenet_v2_x0_5", out_indices=(4,))


def test_any_input_size_from_32():
    model = shufflenet.get_model("shufflenet_v1_g8_x0_25").eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)
    assert model(torch.randn(1, 3, 97, 61)).shape == (1, 1000)


def test_frozen_stages_and_norm_eval():
    model = shufflenet.get_model("shufflenet_v2_x0_5", frozen_stages=2)
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(shufflenet.get_model("shufflenet_v2_x0_5", norm_eval=True))
    model.train()
    sync.train()
    frozen = [model.stem, model.stages[0], model.stages[1]]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for m in (model.stages[2], model.conv_last, model.head) for p in m.parameters())
    assert all(not m.training for m in frozen for m in m.modules())
    assert model.stages[2].training
    # norm_eval keeps every BN (here SyncBatchNorm) in eval mode while the rest trains.
    norms = [m for m in sync.modules() if isinstance(m, nn.SyncBatchNorm)]
    assert norms and not any(m.training for m in norms) and sync.head.training
    before = model.stem.bn.running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(model.stem.bn.running_mean, before)


def test_reset_classifier():
    model = shufflenet.get_model("shufflenet_v2_plus_small")
    model.reset_classifier(3)
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModelError, match="did you mean shufflenet_v2_x1_0"):
        shufflenet.get_model("shufflenet_v2_x1_00")


def test_aliases_from_other_zoos():
    assert shufflenet.models.get_spec("shufflenet_v1_g8_15").name == "shufflenet_v1_g8_x1_5"  # mindcv
    assert shufflenet.models.get_spec("shufflenet-v2-1x_16xb64_in1k").name == "shufflenet_v2_x1_0"  # mmpretrain
    assert shufflenet.models.get_spec("shufflenet-v1-1x_16xb64_in1k").name == "shufflenet_v1_g3_x1_0"


def test_metadata():
    spec = shufflenet.models.get_spec("shufflenet_v2_x1_0")
    assert spec.reference("params") == (2_278_604, "torchvision")
    assert {r.source: r.top1 for r in spec.references}["torchvision"] == 69.362
    model = shufflenet.get_model("shufflenet_v2_x1_0")
    assert model.model_name == "shufflenet_v2_x1_0" and model.preprocessing.resize_size == 256


def test_torch_compile():
    model = shufflenet.get_model("shufflenet_v1_g3_x0_25", small_input=True, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model)(x), model(x), rtol=1e-4, atol=1e-4)


def test_onnx_export_dynamic_batch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = shufflenet.get_model("shufflenet_v2_x0_5").eval()
    path = tmp_path / "model.onnx"
    torch.onnx.export(
        model, torch.randn(1, 3, 64, 64), path, input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = torch.randn(batch, 3, 64, 64)
        (onnx_out,) = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(onnx_out), model(x), rtol=1e-4, atol=1e-4)


def test_torch_hub_lists_the_zoo_and_loads_what_get_model_loads(tmp_path):
    """``hubconf.py``: one entry point per model, whose ``pretrained`` takes a tag or any checkpoint
    file; checked against the bundled CIFAR-10 weights and against torchvision on its own weights."""
    repo = str(Path(__file__).resolve().parents[1])
    spec = importlib.util.spec_from_file_location("hubconf", Path(repo) / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    # torch.hub.list's rule (it reads only GitHub repositories): the public callables of hubconf
    entry_points = [f for f in dir(hubconf) if callable(getattr(hubconf, f)) and not f.startswith("_")]
    assert entry_points == sorted(shufflenet.list_models())

    x = torch.randn(2, 3, 32, 32)
    hub = torch.hub.load(repo, "shufflenet_v2_x1_0", source="local", pretrained="cifar10").eval()
    ours = shufflenet.get_model("shufflenet_v2_x1_0.cifar10", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(hub(x), ours(x))

    reference = torchvision.models.shufflenet_v2_x0_5(num_classes=7).eval()
    torch.save(reference.state_dict(), tmp_path / "tv.pth")
    hub = torch.hub.load(repo, "shufflenet_v2_x0_5", source="local", pretrained=str(tmp_path / "tv.pth")).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(hub(x), reference(x), rtol=1e-5, atol=1e-5)


def test_cli_output_into_a_closed_pipe_ends_quietly():
    # `shufflenet list | head -1`: the reader is gone before the listing is written
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # block-buffered, as in a shell pipe
    process = subprocess.Popen([sys.executable, "-m", "shufflenet", "list"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 141
    assert stderr == ""
