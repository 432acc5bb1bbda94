"""The fast inference path: every graph rewrite keeps the reference model's outputs."""

from __future__ import annotations

import pytest
import torch

from helpers import randomised
from shufflenet.deploy import load_runtime, to_onnx
from shufflenet.deploy.fastpath import optimize, static_onnxruntime
from shufflenet.inference import inference_model

SIZE = 64


def assert_same_logits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = expected.abs().max().item()
    assert scale > 1  # large enough for a relative tolerance to mean something
    assert (actual - expected).abs().max().item() <= 1e-5 * scale


MODELS = [
    ("shufflenet_v2_x0_5", {}), ("shufflenet_v2_x1_0", {}), ("shufflenet_v1_g3_x1_0", {}),
    ("shufflenet_v1_g8_x0_5", {}), ("shufflenet_v2_x0_5", {"layout": "megvii"}),
]


@pytest.mark.parametrize(("name", "kwargs"), MODELS)
def test_rewrite_keeps_outputs(name, kwargs):
    model = randomised(name, **kwargs)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert_same_logits(optimize(model)(x), model(x))


def test_v2_rewrite_leaves_no_shuffle_and_v1_loses_one():
    v2_ops = [n.op_type for n in to_onnx(optimize(randomised("shufflenet_v2_x0_5"))).graph.node]
    assert "Transpose" not in v2_ops and "BatchNormalization" not in v2_ops
    # pieces pass between units: at most one Split and one Concat per unit (16 units), where
    # concatenating each unit's output and cutting it again took 26 Splits and 26 Slices
    assert v2_ops.count("Split") <= 16 and v2_ops.count("Concat") <= 16 and "Slice" not in v2_ops
    v1_reference = [n.op_type for n in to_onnx(randomised("shufflenet_v1_g3_x0_5")).graph.node]
    v1_ops = [n.op_type for n in to_onnx(optimize(randomised("shufflenet_v1_g3_x0_5"))).graph.node]
    assert v1_reference.count("Transpose") == 16 and v1_ops.count("Transpose") == 15


@pytest.mark.parametrize("name", ["shufflenet_v2_x0_5", "shufflenet_v1_g3_x0_5"])
def test_fast_runtime_matches_pytorch_at_each_batch_shape(name):
    model = randomised(name)
    runtime = load_runtime(model, "fast", threads=1)
    assert runtime.backend == "fast" and runtime.preprocessing == model.preprocessing
    for batch in (1, 3, 1):  # one compiled shape each, reused
        x = torch.randn(batch, 3, SIZE, SIZE)
        with torch.no_grad():
            assert_same_logits(runtime(x), model(x))


def test_onnxruntime_engine_matches_pytorch():
    model = randomised("shufflenet_v2_x0_5")
    run = static_onnxruntime(to_onnx(optimize(model), dynamic_batch=True), threads=1)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert_same_logits(run(x), model(x))


def test_predict_defaults_to_the_fast_path_with_the_same_top5():
    model = randomised("shufflenet_v2_x0_5")
    images = [torch.randint(0, 256, (3, 80, 90), dtype=torch.uint8) for _ in range(3)]
    fast = inference_model(model, images)
    reference = inference_model(model, images, backend="torch")
    assert [[p["label"] for p in r["pred_scores"]] for r in fast] == [
        [p["label"] for p in r["pred_scores"]] for r in reference
    ]
