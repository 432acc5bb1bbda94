"""Result files are never clobbered by accident: `export` and `convert` refuse an existing output
without --force and never write onto their input, `train` and `demo` refuse a folder holding files
they would overwrite, and a failed write leaves the old file as it was."""

from __future__ import annotations

from pathlib import Path

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


def test_export_checks_the_suffix_and_the_output_folder(weights, tmp_path, capsys):
    assert main(["export", str(weights), "--format", "torchscript", "-o", str(tmp_path / "m.onnx")]) == 2
    assert "a TorchScript file must not end in .onnx" in capsys.readouterr().err
    assert main(["export", str(weights), "-o", str(tmp_path / "m.bin")]) == 2
    assert "an ONNX file needs the .onnx suffix" in capsys.readouterr().err
    assert main(["export", str(weights), "-o", str(weights / "m.onnx")]) == 2  # a file where a folder must be
    assert "cannot be a folder: a file of that name" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc: a folder no one can write, root included")
@pytest.mark.parametrize("command", [["export"], ["export", "--format", "torchscript"], ["convert"]])
def test_an_unwritable_output_is_a_clear_error(weights, command, capsys):
    out = Path("/proc") / ("m.pt" if "torchscript" in command else "m.onnx" if command == ["export"] else "m.safetensors")
    assert main([command[0], str(weights), *command[1:], "-o", str(out)]) == 2  # torch and safetensors raise no OSError
    assert f"cannot write {out}: " in capsys.readouterr().err
    assert main(["export", str(weights), "-o", "/proc/new/m.onnx"]) == 2
    assert "cannot create the folder /proc/new: " in capsys.readouterr().err


def test_convert_never_writes_onto_its_input_nor_drops_our_metadata(weights, tmp_path, capsys):
    before = weights.read_bytes()
    assert main(["convert", str(weights), "-o", str(weights), "--force"]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert main(["convert", str(weights), "-o", str(tmp_path / "c.safetensors"), "--from", "torchvision"]) == 2
    assert "is a shufflenet checkpoint, not a torchvision one; leave out --from" in capsys.readouterr().err
    assert weights.read_bytes() == before and not (tmp_path / "c.safetensors").exists()


@pytest.fixture()
def recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("model: {name: shufflenet_v2_x0_5, num_classes: 2}  # the user's comments\n")
    return path


def test_train_never_overwrites_a_folder_of_run_files_or_its_recipe(recipe, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "summary.json").write_text("precious")
    assert main(["train", str(recipe), "--work-dir", str(work)]) == 2
    assert "already holds a run's files (summary.json)" in capsys.readouterr().err
    other = tmp_path / "other" / "checkpoints" / "last.pt"  # another run's checkpoint does not continue this one
    assert main(["train", str(recipe), "--work-dir", str(work), "--resume", str(other)]) == 2
    assert "already holds a run's files" in capsys.readouterr().err
    assert (work / "summary.json").read_text() == "precious"
    own = tmp_path / "own"
    own.mkdir()
    (own / "config.yaml").write_text(recipe.read_text())
    assert main(["train", str(own / "config.yaml"), "--work-dir", str(own), "--force"]) == 2
    assert "is where the run writes its resolved config" in capsys.readouterr().err
    assert (own / "config.yaml").read_text() == recipe.read_text()
    assert main(["train", str(recipe), "--work-dir", str(work / "summary.json")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    crashed = tmp_path / "crashed"  # killed before its first checkpoint: --resume starts it afresh
    crashed.mkdir()
    (crashed / "config.yaml").write_text("model: {}\n")
    assert main(["train", str(recipe), "--work-dir", str(crashed), "--resume", "--data", str(tmp_path / "none")]) == 2
    assert "already holds" not in (err := capsys.readouterr().err) and "none" in err  # it got past the refusal to the data


def test_a_folder_named_like_a_model_does_not_hide_the_model(tmp_path, monkeypatch):
    from shufflenet.weights import is_checkpoint_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "shufflenet_v2_x0_5").mkdir()  # e.g. a work dir
    (tmp_path / "data").mkdir()
    assert not is_checkpoint_path("shufflenet_v2_x0_5") and is_checkpoint_path("data") and is_checkpoint_path("x.pt")


def test_demo_writes_into_a_foreign_folder_only_with_force(tmp_path, capsys):
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("precious")
    args = ["demo", "--config", str(repo / "configs/cifar10/shufflenet_v2_x0_5_quick.yaml"),
            "--data", str(repo / "demo/cifar10-subset"), "--work-dir", str(out)]
    assert main(args) == 2
    assert "is not empty and the demo overwrites what it writes there; pass --force" in capsys.readouterr().err
    assert (out / "report.md").read_text() == "precious"
