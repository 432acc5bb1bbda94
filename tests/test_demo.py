"""The README's main job end to end, shortened to one epoch."""

from pathlib import Path

from shufflenet.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_demo_writes_a_report(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the demo reads configs/ and demo/ from the repository root
    assert main(["demo", "--epochs", "1", "--work-dir", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "validation top-1" in report and "largest tensor rank | 4" in report
    for name in ("model.onnx", "confusion.png", "train/curves.png", "train/model.safetensors"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert f"report: {(tmp_path / 'report.md').resolve()}" in capsys.readouterr().out


def test_demo_outside_the_repository_says_where_to_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--epochs", "1"]) == 2
    assert "run the demo from the repository root" in capsys.readouterr().err
