"""Fixtures for the model, pipeline and CLI tests: tiny random-weight models saved to real folders."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from sharpdepth_core.models import tiny


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """Every tiny model saved once per session (student, release layout, metric backends, Marigold, pipeline)."""
    return tiny.save_tiny_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def copy_of(tmp_path):
    """A private copy of a session folder, for tests that damage or extend it."""

    def copy(folder: Path) -> Path:
        return Path(shutil.copytree(folder, tmp_path / folder.name))

    return copy


def scene_image(seed: int = 0, width: int = 64, height: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """(rgb uint8 HxWx3, K 3x3) of a synthetic room, the test input for the pipeline and CLI."""
    from sharpdepth_core.synthetic import render_scene

    scene = render_scene(seed, width=width, height=height)
    return scene.rgb, scene.K
