"""Fixtures of the core tests: tiny random-weight real models saved to real folders."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sharpdepth_core import tiny


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """Every tiny model saved once per session (student, release layout, metric backends, pipeline)."""
    return tiny.save_tiny_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def copy_of(tmp_path):
    """A private copy of a session folder, for tests that damage or extend it."""

    def copy(folder: Path) -> Path:
        return Path(shutil.copytree(folder, tmp_path / folder.name))

    return copy
