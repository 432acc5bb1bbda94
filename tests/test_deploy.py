"""Export (ONNX, TorchScript), BN folding, INT8 and the benchmark, checked against PyTorch's outputs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from helpers import randomised
from shufflenet import get_model
from shufflenet.cli import main
from shufflenet.data.preprocess import CIFAR10
from shufflenet.deploy import export_onnx, fuse_conv_bn, load_runtime, max_tensor_rank, to_onnx
from shufflenet.deploy.bench import benchmark
from shufflenet.deploy.export import export_torchscript
from shufflenet.deploy.quantize import node_module
from shufflenet.errors import UserError
from shufflenet.weights import save_checkpoint

SIZE = 64  # small inputs keep export and inference fast; the graph is the same at 224


@pytest.fixture(scope="module")
def v2() -> torch.nn.Module:
    return randomised("shufflenet_v2_x0_5")


@pytest.mark.parametrize("name", ["shufflenet_v1_g3_x0_5", "shufflenet_v2_plus_small"])
def test_bn_folding_keeps_outputs(name):
    model = randomised(name)
    x = torch.randn(2, 3, SIZE, SIZE)
    fused = fuse_conv_bn(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("opset", [11, 17])
def test_onnx_runtime_matches_pytorch_at_two_batch_sizes(v2, opset, tmp_path):
    export_onnx(v2, tmp_path / "m.onnx", opset=opset, dynamic_batch=True)
    runtime = load_runtime(tmp_path / "m.onnx", "onnxruntime")
    for batch in (1, 7):
        x = torch.randn(batch, 3, SIZE, SIZE)
        with torch.no_grad():
            expected = v2(x)
        assert expected.abs().max() > 1  # logits large enough for the tolerance to mean something
        assert (runtime(x) - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("name", ["shufflenet_v1_g3_x0_5", "shufflenet_v2_x0_5", "shufflenet_v2_plus_small"])
def test_dynamic_size_export_runs_any_input_size(name, tmp_path, capsys):
    model = randomised(name)
    save_checkpoint(model, tmp_path / "m.safetensors")
    assert main(["export", str(tmp_path / "m.safetensors"), "--dynamic-batch", "--dynamic-size", "-o", str(tmp_path / "m.onnx")]) == 0
    assert "dynamic batch, dynamic height/width" in capsys.readouterr().out
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim] == ["batch", "", "height", "width"]
    assert max_tensor_rank(proto) == 4
    runtime = load_runtime(tmp_path / "m.onnx", "onnxruntime")
    for shape in ((1, 3, 64, 64), (2, 3, 96, 128), (3, 3, 75, 41)):  # odd sizes: every stride-2 step rounds up
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(runtime(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["shufflenet_v1_g3_x0_5", "shufflenet_v2_x0_5"])
def test_fp16_export_halves_the_file_and_keeps_the_answers(name, tmp_path, capsys):
    model = randomised(name)
    save_checkpoint(model, tmp_path / "m.safetensors")
    for flags, out in (([], "m.onnx"), (["--fp16"], "m.fp16.onnx")):
        assert main(["export", str(tmp_path / "m.safetensors"), "--dynamic-batch", *flags, "-o", str(tmp_path / out)]) == 0
    assert "fp16, fp32 input and logits" in capsys.readouterr().out
    assert (tmp_path / "m.fp16.onnx").stat().st_size < 0.55 * (tmp_path / "m.onnx").stat().st_size
    proto = onnx.load(str(tmp_path / "m.fp16.onnx"))
    float16, float32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    assert {t.data_type for t in proto.graph.initializer if len(t.dims) == 4} == {float16}  # every conv weight
    assert [v.type.tensor_type.elem_type for v in (*proto.graph.input, *proto.graph.output)] == [float32, float32]
    assert main(["info", str(tmp_path / "m.fp16.onnx"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["quantization"] == "fp16, fp32 input and logits"
    x = torch.randn(8, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = model(x)
    got = load_runtime(tmp_path / "m.fp16.onnx", "onnxruntime")(x)
    assert got.dtype == torch.float32
    assert (got - expected).abs().max() <= 1e-3 * expected.abs().max()  # measured: 3e-4 (V1), 4e-4 (V2)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    assert main(["export", str(tmp_path / "m.safetensors"), "--fp16", "--int8", "--calib", str(tmp_path)]) == 2
    assert "--fp16 and --int8 exclude each other" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "m.safetensors"), "--format", "torchscript", "--dynamic-size", "--fp16"]) == 2
    assert "--dynamic-size, --fp16: ONNX options" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("shufflenet_v1_g3_x0_5", {}), ("shufflenet_v1_g8_x0_5", {}), ("shufflenet_v2_x0_5", {}),
     ("shufflenet_v2_x0_5", {"layout": "megvii"}), ("shufflenet_v2_plus_small", {})],
)
def test_dynamic_batch_graph_is_static_but_for_the_batch(name, kwargs):
    """No tensor above rank 4 and no shape arithmetic (converters want both), and any batch runs."""
    model = randomised(name, **kwargs)
    proto = to_onnx(model, opset=13, dynamic_batch=True)
    assert max_tensor_rank(proto) == 4
    ops = {node.op_type for node in proto.graph.node}
    assert not ops & {"BatchNormalization", "Shape", "Gather"}  # BN folded into the convolutions
    runtime = load_runtime(model, "onnxruntime")  # exported as above
    for batch in (1, 3):
        x = torch.randn(batch, 3, SIZE, SIZE)
        with torch.no_grad():
            torch.testing.assert_close(runtime(x), model(x), rtol=1e-4, atol=1e-4)


def test_metadata_travels_with_the_onnx_file(v2, tmp_path):
    v2.class_names = tuple(f"c{i}" for i in range(1000))
    try:
        export_onnx(v2, tmp_path / "m.onnx", opset=18)
    finally:
        v2.class_names = None
    runtime = load_runtime(tmp_path / "m.onnx")
    assert runtime.backend == "onnxruntime"
    assert runtime.preprocessing == v2.preprocessing
    assert runtime.class_names[3] == "c3" and runtime.model_name == "shufflenet_v2_x0_5"
    batch_dim = onnx.load(str(tmp_path / "m.onnx")).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_value == 1  # static batch unless asked for a dynamic one


def test_a_static_input_size_is_the_crop_size_the_file_asks_for(v2, tmp_path):
    assert (v2.preprocessing.crop_size, v2.preprocessing.resize_size) == (SIZE, 72)
    export_onnx(v2, tmp_path / "m.onnx", input_size=96)
    runtime = load_runtime(tmp_path / "m.onnx")
    assert (runtime.preprocessing.crop_size, runtime.preprocessing.resize_size) == (96, 108)  # resize scaled alike
    assert runtime(torch.randn(2, 3, 96, 96)).shape == (2, 1000)
    with pytest.raises(UserError, match=r"the ONNX model rejects an input of shape \(1, 3, 64, 64\)"):
        runtime(torch.randn(1, 3, SIZE, SIZE))


def test_unsupported_opset_is_a_user_error(v2):
    with pytest.raises(UserError, match="opset 9"):
        to_onnx(v2, opset=9)


def test_a_file_that_is_not_onnx_fails_clearly_in_every_command(v2, tmp_path, capsys):
    good = to_onnx(v2).SerializeToString()
    (tmp_path / "text.onnx").write_text("x\n")  # protobuf reads this as an empty model
    (tmp_path / "half.onnx").write_bytes(good[: len(good) // 2])
    Image.new("RGB", (SIZE, SIZE)).save(tmp_path / "a.png")
    for name in ("text.onnx", "half.onnx"):
        for command in (["info", str(tmp_path / name)], ["predict", str(tmp_path / name), str(tmp_path / "a.png")]):
            assert main(command) == 2
            assert f"{name}: not a valid ONNX model (" in capsys.readouterr().err


def test_torchscript_export(v2, tmp_path):
    export_torchscript(v2, tmp_path / "m.pt")
    extra = {"shufflenet.json": ""}
    loaded = torch.jit.load(str(tmp_path / "m.pt"), _extra_files=extra)
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), v2(x), atol=1e-4, rtol=1e-4)
    assert json.loads(extra["shufflenet.json"])["model_name"] == "shufflenet_v2_x0_5"


def test_openvino_matches_pytorch(v2):
    pytest.importorskip("openvino")
    runtime = load_runtime(v2, "openvino")
    x = torch.randn(7, 3, SIZE, SIZE)
    with torch.no_grad():
        assert (runtime(x) - v2(x)).abs().max() <= 1e-3


# -- INT8 on a small trained model ------------------------------------------------------------------
def coloured_squares(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """32x32 noise images with a bright square in the channel given by the label (3 classes)."""
    labels = rng.integers(0, 3, count)
    images = rng.integers(0, 120, (count, 32, 32, 3)).astype(np.uint8)
    for image, label in zip(images, labels):
        top, left = rng.integers(0, 16, 2)
        image[top : top + 16, left : left + 16, label] += 120
    return images, labels


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """V2 x0.5 (CIFAR stem) trained for a few seconds until it separates the three classes."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = get_model("shufflenet_v2_x0_5", num_classes=3, small_input=True)
    model.preprocessing, model.class_names = CIFAR10, ("red", "green", "blue")
    transform = CIFAR10.transform()

    def batch(count):
        images, labels = coloured_squares(count, rng)
        return torch.stack([transform(Image.fromarray(i)) for i in images]), torch.as_tensor(labels)

    optimizer = torch.optim.AdamW(model.parameters(), 3e-3)
    for _ in range(25):
        x, y = batch(32)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for module in model.modules():  # re-estimate BN statistics with the final weights
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        for _ in range(4):
            model(batch(64)[0])
    folder = tmp_path_factory.mktemp("int8")
    calib = folder / "calib"
    calib.mkdir()
    for i, image in enumerate(coloured_squares(48, rng)[0]):
        Image.fromarray(image).save(calib / f"{i:03d}.png")
    save_checkpoint(model.eval(), folder / "small.safetensors")
    return model, folder, batch(256)


@pytest.mark.parametrize("batch_flag", [["--dynamic-batch"], []])
def test_int8_export_stays_close_to_fp32(trained, capsys, batch_flag):
    model, folder, (x, y) = trained
    out = folder / f"small{len(batch_flag)}.int8.onnx"  # one file per case: export never overwrites without --force
    status = main(["export", str(folder / "small.safetensors"), "--int8", "--calib", str(folder / "calib"),
                   *batch_flag, "-o", str(out)])
    assert status == 0 and "INT8 calibrated on 48 images" in capsys.readouterr().out
    quantized = onnx.load(str(out))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in quantized.graph.node}
    int8 = load_runtime(out)
    assert int8.class_names == ("red", "green", "blue") and int8.preprocessing == CIFAR10
    with torch.no_grad():
        fp32 = model(x)
    fp32_accuracy = (fp32.argmax(1) == y).float().mean().item()
    int8_accuracy = (int8(x).argmax(1) == y).float().mean().item()
    assert fp32_accuracy > 0.9  # the model did learn, so the comparison means something
    assert int8_accuracy >= fp32_accuracy - 0.01
    assert (int8(x).argmax(1) == fp32.argmax(1)).float().mean() >= 0.98


def test_int8_float_keeps_the_named_modules_in_float(trained, capsys):
    model, folder, (x, _) = trained
    out = folder / "mixed.int8.onnx"
    args = ["export", str(folder / "small.safetensors"), "--int8", "--calib", str(folder / "calib"), "-o", str(out)]
    assert main([*args, "--int8-float", "stem,stemm"]) == 2 and not out.exists()
    assert "no module 'stemm' in the exported graph; its top-level modules: " in capsys.readouterr().err
    assert main([*args, "--int8-float", "stem,head.fc"]) == 0
    quantized = onnx.load(str(out))
    graph = quantized.graph
    produced_by = {output: node.op_type for node in graph.node for output in node.output}
    weight_source = {node.name: produced_by.get(node.input[1], "initializer") for node in graph.node if node.op_type in ("Conv", "Gemm")}
    float_nodes = {name for name, source in weight_source.items() if source == "initializer"}
    assert float_nodes == {"/stem/conv/Conv", "/head/fc/Gemm"}
    assert set(weight_source.values()) == {"initializer", "DequantizeLinear"}
    assert {p.key: p.value for p in quantized.metadata_props}["quantization"].endswith(" float=stem,head.fc")
    assert node_module("/stages.1/stages.1.3/branch_main/branch_main.0/conv/Conv") == "stages.1.3.branch_main.0.conv"
    with torch.no_grad():
        assert (load_runtime(out)(x).argmax(1) == model(x).argmax(1)).float().mean() >= 0.98



def test_a_qat_model_exports_as_the_int8_model_onnx_runtime_runs(trained, tmp_path):
    """Every conv of the exported QAT model becomes an integer QLinearConv in ONNX Runtime, and it
    answers as the PyTorch simulation does."""
    from shufflenet.deploy.qat import prepare_qat

    model, _, (x, _) = trained
    qat = prepare_qat(model)
    with torch.no_grad():
        for batch in x.split(64):  # observe the activation ranges, as the first training steps do
            qat(batch)
    qat.eval()
    qat(x[:8]).logsumexp(1).sum().backward()  # straight-through gradients reach the weights
    assert all(p.grad is not None for p in qat.parameters())
    with torch.no_grad():
        simulated, exact = qat(x), model(x)
    assert (simulated.argmax(1) == exact.argmax(1)).float().mean() >= 0.98
    ops = onnx_runtime_ops(qat, tmp_path)
    assert ops["QLinearConv"] == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) and "Conv" not in ops
    assert ops["QLinearConcat"] == 16 and "Concat" not in ops
    # one quantizer per tensor: ONNX Runtime keeps no QuantizeLinear between two convs, only at the
    # input and before the classifier
    assert ops["QuantizeLinear"] == 2
    int8 = load_runtime(tmp_path / "qat.onnx")(x)
    assert (int8.argmax(1) == simulated.argmax(1)).float().mean() >= 0.98
    # not bit-equal: a last-bit difference between two float kernels can move a value across a
    # rounding boundary, and the one-step difference then travels on (ORT without optimisations too)
    assert (int8 - simulated).abs().mean() <= 0.02 * simulated.abs().max()


def test_a_qat_v1_runs_its_pooled_shortcuts_and_concats_in_integers(tmp_path):
    """V1's stride-2 units (average-pooled shortcut, concat) become QLinearAveragePool and QLinearConcat,
    its residual adds QLinearAdd: the graph of the post-training file, quantized at the input and the
    classifier only."""
    from shufflenet.deploy.qat import prepare_qat

    model = randomised("shufflenet_v1_g3_x0_5", size=32, num_classes=10, small_input=True).eval()
    qat = prepare_qat(model)
    x = torch.randn(32, 3, 32, 32)
    with torch.no_grad():
        qat(x)
        simulated = qat.eval()(x)
    ops = onnx_runtime_ops(qat, tmp_path)
    assert ops["QLinearConv"] == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert ops["QLinearAveragePool"] == ops["QLinearConcat"] == 3 and ops["QLinearAdd"] == 13
    assert not {"Conv", "AveragePool", "Concat", "Add", "Relu"} & set(ops) and ops["QuantizeLinear"] == 2
    int8 = load_runtime(tmp_path / "qat.onnx")(x)
    assert (int8.argmax(1) == simulated.argmax(1)).float().mean() >= 0.9


def onnx_runtime_ops(model: torch.nn.Module, folder: Path) -> Counter[str]:
    """How many nodes of each type ONNX Runtime runs for ``model`` exported to ``folder``/qat.onnx."""
    import onnxruntime as ort

    export_onnx(model, folder / "qat.onnx", dynamic_batch=True)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    ort.InferenceSession(str(folder / "qat.onnx"), options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(str(folder / "optimized.onnx")).graph.node)


def test_int8_calibrates_at_the_static_input_size(trained, capsys):
    _, folder, _ = trained
    out = folder / "at48.int8.onnx"
    assert main(["export", str(folder / "small.safetensors"), "--int8", "--calib", str(folder / "calib"),
                 "--input-size", "48", "-o", str(out)]) == 0
    assert load_runtime(out).preprocessing.crop_size == 48


def test_int8_needs_calibration_images(trained, tmp_path):
    _, folder, _ = trained
    assert main(["export", str(folder / "small.safetensors"), "--int8"]) == 2
    assert main(["export", str(folder / "small.safetensors"), "--int8", "--calib", str(tmp_path)]) == 2


# -- benchmark --------------------------------------------------------------------------------------
def test_benchmark_measures_each_backend(trained):
    model = trained[0]
    rows = benchmark(model, ("eager", "fused", "onnxruntime"), (1, 4), device="cpu", threads=1, warmup=1, iters=3)
    assert [(r["backend"], r["batch_size"]) for r in rows] == [
        (b, n) for b in ("eager", "fused", "onnxruntime") for n in (1, 4)
    ]
    for row in rows:
        assert 0 < row["median_ms"] <= row["p90_ms"]
        assert row["images_per_s"] == pytest.approx(1000 * row["batch_size"] / row["median_ms"])


def test_bench_cli_json_and_usage_errors(trained, capsys):
    checkpoint = str(trained[1] / "small.safetensors")
    assert main(["bench", checkpoint, "--backend", "eager", "--batch-size", "2", "--iters", "2", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["backend"] == "eager" and row["batch_size"] == 2
    assert main(["bench", checkpoint, "--backend", "tensorrt"]) == 2
    assert main(["bench"]) == 2


def test_calibration_sample_spans_every_class_folder():
    from shufflenet.data.datasets import find_images
    from shufflenet.deploy.quantize import calibration_sample

    images = find_images(Path(__file__).parents[1] / "demo" / "cifar10-subset" / "train")  # 10 classes x 200
    sample = calibration_sample(images, 50)
    assert len(sample) == 50 and len({p.parent.name for p in sample}) == 10
    assert calibration_sample(images[:7], 50) == images[:7]


@pytest.mark.parametrize("per_class", [100, 50])  # 1,000 and 500 images: neither a multiple of the count
def test_calibration_sample_is_spread_evenly_over_the_whole_list(per_class):
    from shufflenet.deploy.quantize import calibration_sample

    images = [Path(f"class{c}") / f"{i:03d}.jpg" for c in range(10) for i in range(per_class)]
    sample = calibration_sample(images, 256)
    assert len(sample) == len(set(sample)) == 256
    counts = [sum(p.parent.name == f"class{c}" for p in sample) for c in range(10)]
    assert max(counts) - min(counts) <= 1  # every class, in equal shares
