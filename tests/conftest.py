"""Fixtures shared by the test modules (plain helpers live in helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import TINY, make_folder


@pytest.fixture()
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    """(config, data root): 2 classes, 16 train and 8 val images each."""
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    return config, make_folder(tmp_path / "data", ("airplane", "frog"), 16, 8)
