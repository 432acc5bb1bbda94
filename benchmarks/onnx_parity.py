"""Max |ONNX Runtime - PyTorch| of exported models, per opset and batch size (docs/deployment.md).

    python benchmarks/onnx_parity.py shufflenet_v2_x1_0 shufflenet_v1_g3_x1_0 --opsets 11,17,20

Weights are random, but BN statistics are randomised too so that folding them is exercised.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from shufflenet import get_model
from shufflenet.cli.table import format_table
from shufflenet.deploy import export_onnx, load_runtime, max_tensor_rank


def randomise_bn(model: torch.nn.Module) -> torch.nn.Module:
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--opsets", default="11,17,20")
    parser.add_argument("--batch-sizes", default="1,7")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models:
            model = randomise_bn(get_model(name))
            for opset in map(int, args.opsets.split(",")):
                path = Path(workdir) / f"{name}-{opset}.onnx"
                proto = export_onnx(model, path, opset=opset, dynamic_batch=True)
                runtime = load_runtime(path)
                for batch in map(int, args.batch_sizes.split(",")):
                    x = torch.randn(batch, 3, 224, 224)
                    with torch.no_grad():
                        expected = model(x)
                    diff = (runtime(x) - expected).abs().max().item()
                    rows.append([name, opset, batch, f"{diff:.2e}", f"{expected.abs().max().item():.3g}", max_tensor_rank(proto)])
    print(format_table(["model", "opset", "batch", "max |diff|", "max |logit|", "max rank"], rows))


if __name__ == "__main__":
    main()
