"""Helpers for the model, pipeline, CLI and demo tests: the synthetic test scene, the model card's figures
(fixtures: test/core/conftest.py)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from sharpdepth_core.embedded import EMBEDDED_DIR

CARD = EMBEDDED_DIR / "MODEL_CARD.md"


def scene_image(seed: int = 0, width: int = 64, height: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """(rgb uint8 HxWx3, K 3x3) of a synthetic room, the test input for the pipeline and CLI."""
    from sharpdepth_core.synthetic import render_scene

    scene = render_scene(seed, width=width, height=height)
    return scene.rgb, scene.K


def image_folder(folder: Path, count: int = 4, width: int = 64, height: int = 48) -> Path:
    """A folder of `count` synthetic-room PNGs (seeds 0..count-1): training data for the scripts' tests."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(scene_image(i, width=width, height=height)[0]).save(folder / f"{i}.png")
    return folder


def card_figure(name: str) -> float:
    """A number of the model card's machine-read line `<!-- name: value -->`."""
    found = re.search(rf"<!-- {name}: ([0-9.]+) -->", CARD.read_text())
    assert found, f"{CARD} lacks the line <!-- {name}: ... -->"
    return float(found.group(1))
