"""CUDA checks: the same rewrites, graphs and training loop on a GPU. Skipped where there is none
(CI); run on the device machine with ``python -m pytest tests/test_cuda.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from helpers import randomised, randomize_bn
from shufflenet import get_model
from shufflenet.cli import main
from shufflenet.deploy.bench import benchmark, cuda_graphed
from shufflenet.deploy.fastpath import optimize
from shufflenet.engine.builders import routed
from shufflenet.weights import load_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def exact_float32():
    """TF32 convolutions differ from fp32 by ~1e-3; these checks compare fp32 with fp32."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("name", ["shufflenet_v2_x1_0", "shufflenet_v1_g3_x1_0", "shufflenet_v2_plus_small"])
def test_optimized_model_on_cuda_equals_the_reference(name: str) -> None:
    torch.manual_seed(0)
    model = randomize_bn(get_model(name))  # BN away from a fresh init's, so folding it is tested
    x = torch.randn(4, 3, 224, 224, device="cuda")
    with torch.inference_mode():
        reference = model.cuda()(x)
        fast = optimize(model).cuda().to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)


def test_torchvision_checkpoint_gives_torchvision_outputs_on_cuda(tmp_path: Path) -> None:
    torch.manual_seed(0)
    peer = torchvision.models.shufflenet_v2_x1_0().eval()
    torch.save(peer.state_dict(), tmp_path / "tv.pth")
    ours = load_checkpoint(tmp_path / "tv.pth").cuda()
    x = torch.randn(2, 3, 224, 224, device="cuda")
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), peer.cuda()(x), rtol=1e-4, atol=1e-4)


def test_cuda_graph_replay_equals_eager() -> None:
    model = optimize(get_model("shufflenet_v2_x0_5")).cuda()
    x = torch.randn(1, 3, 224, 224, device="cuda")
    forward = torch.inference_mode()(model)
    expected = forward(x).clone()
    captured = []  # the graph's output tensor, written again by every replay

    def forward_and_keep(t: torch.Tensor) -> torch.Tensor:
        captured.append(forward(t))
        return captured[-1]

    replay = cuda_graphed(forward_and_keep, x)
    captured[-1].zero_()
    replay()
    torch.testing.assert_close(captured[-1], expected)


def test_even_odd_training_steps_match_the_shuffle_routing_on_cuda() -> None:
    """Two SGD steps in each routing: the same function, so the same weights after. In float64:
    batch-8 BN amplifies float32 rounding into differences of ~1e-2 after two steps (on CPU too)."""
    torch.manual_seed(0)
    shuffle = get_model("shufflenet_v2_x0_5", num_classes=10, small_input=True).cuda().double().train()
    even_odd = routed(shuffle, "even_odd")
    x = torch.randn(8, 3, 32, 32, device="cuda", dtype=torch.float64)
    y = torch.randint(0, 10, (8,), device="cuda")
    for model in (shuffle, even_odd):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(2):
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
    back = routed(even_odd, "shuffle").state_dict()
    for key, value in shuffle.state_dict().items():
        torch.testing.assert_close(back[key], value, rtol=1e-9, atol=1e-9)


def test_bf16_compiled_training_run_on_cuda(tmp_path: Path, capsys) -> None:
    """`shufflenet train` end to end on the GPU: bf16 autocast, channels_last, torch.compile."""
    work = tmp_path / "run"
    code = main(["train", str(REPO / "configs/cifar10/shufflenet_v2_x0_5_quick.yaml"), "--epochs", "2",
                 "--work-dir", str(work), "--set", "train.amp=bf16", "--set", "train.compile=true",
                 "--set", "train.device=cuda"])
    assert code == 0
    history = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["val_top1"] > 20.0, history  # 10 classes: chance is 10%


def test_bench_on_cuda_with_graphs() -> None:
    rows = benchmark(get_model("shufflenet_v1_g3_x0_5"), ("eager", "fast"), (1, 64), device="cuda", iters=5, cuda_graphs=True)
    assert {(r["backend"], r["batch_size"]) for r in rows} == {("eager", 1), ("eager", 64), ("fast", 1), ("fast", 64)}
    assert all(r["device"] == "cuda graph" and r["median_ms"] > 0 for r in rows)


def test_batch_augmentation_on_cuda_matches_the_cpu() -> None:
    """``data.augment.on_device``: the same draws give the same images on the GPU, up to the last
    level of bilinear resampling (rotations, shears) where the two devices round differently."""
    from shufflenet.data.batch_augment import BatchAugment
    from shufflenet.data.datasets import decode_file

    paths = sorted((REPO / "demo" / "cifar10-subset" / "train").rglob("*.jpg"))[:256]
    images, seeds = torch.stack([decode_file(str(p)) for p in paths]), torch.arange(256)
    augment = BatchAugment(32, 4, 0.5, trivial_augment=True, interpolation="bilinear")
    difference = (augment(images.cuda(), seeds).cpu().int() - augment(images.clone(), seeds).int()).abs()
    assert difference.max() <= 1 and (difference > 0).float().mean() < 0.01


def test_an_onnx_model_scores_on_cuda_as_on_the_cpu(tmp_path: Path, capsys) -> None:
    """`test MODEL model.onnx` on a GPU machine: ONNX Runtime hands its logits back on the CPU while
    the labels are on the GPU; the scores must be those of a CPU run."""
    from shufflenet.deploy import export_onnx

    model = randomised("shufflenet_v2_x0_5", size=32, num_classes=10, small_input=True)  # logits far from ties
    export_onnx(model, tmp_path / "m.onnx", dynamic_batch=True)
    results = []
    for device in ("cpu", "cuda"):
        assert main(["test", "shufflenet_v2_x0_5", str(tmp_path / "m.onnx"), "--data", str(REPO / "demo/cifar10-subset"),
                     "--device", device, "--workers", "0", "--json", "--out", str(tmp_path)]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[1]["images"] == results[0]["images"] == 500
    assert results[1]["top1"] == pytest.approx(results[0]["top1"], abs=0.2)  # one image: normalised on another device
    assert results[1]["loss"] == pytest.approx(results[0]["loss"], rel=1e-4)
