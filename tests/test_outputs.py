"""Result files are never clobbered by accident: `export` and `convert` refuse an existing output
without --force, never write onto their input, and a failed write leaves the old file as it was."""

from __future__ import annotations

import pytest

from helpers import randomised
from shufflenet.cli import main
from shufflenet.deploy import load_runtime
from shufflenet.files import atomic_destination
from shufflenet.weights import save_checkpoint


@pytest.fixture()
def weights(tmp_path):
    path = tmp_path / "model.safetensors"
    save_checkpoint(randomised("shufflenet_v2_x0_5"), path)
    return path


def test_export_refuses_an_existing_file_without_force(weights, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"precious")
    assert main(["export", str(weights), "-o", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    assert main(["export", str(weights), "-o", str(out), "--force", "--input-size", "64"]) == 0
    assert load_runtime(out).model_name == "shufflenet_v2_x0_5"  # replaced by a real export


def test_export_never_writes_onto_its_input(weights, capsys):
    before = weights.read_bytes()
    assert main(["export", str(weights), "--format", "torchscript", "-o", str(weights), "--force"]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert weights.read_bytes() == before


def test_export_creates_the_output_folder(weights, tmp_path):
    out = tmp_path / "new" / "deeper" / "model.pt"
    assert main(["export", str(weights), "--format", "torchscript", "-o", str(out), "--input-size", "64"]) == 0
    assert out.is_file() and not list(out.parent.glob(".*tmp*"))  # no temporary file left behind


def test_a_failed_write_keeps_the_old_file(tmp_path):
    out = tmp_path / "result.bin"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_destination(out) as partial:
        partial.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert out.read_bytes() == b"old" and list(tmp_path.iterdir()) == [out]
