"""The shipped small models (sharpdepth_core/weights/nano): they load through the public loaders
unchanged, and the demo on them reproduces the model card's AbsRel.

The card's demo figure comes from `python -m sharpdepth_ros.demo --frames 3 --width 128 --height 96
--seed 100000` (held-out scenes); the node seeds its noise draws (seed 0), so the tolerance only
covers arithmetic differences between machines and thread counts.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sharpdepth_core.models import EMBEDDED_DIR, DiffusionDepthModel, load_metric_model
from sharpdepth_core.pipeline import SharpDepthPipeline
from sharpdepth_core.synthetic import render_scene

REPO = Path(__file__).resolve().parents[1]
CARD = EMBEDDED_DIR / "MODEL_CARD.md"
DEMO_TOLERANCE = 0.02  # AbsRel, absolute

pytestmark = pytest.mark.skipif(not (EMBEDDED_DIR / "pipeline.json").is_file(), reason=f"no shipped weights in {EMBEDDED_DIR}")


def card_figure(name: str) -> float:
    """A number of the model card's machine-read line `<!-- name: value -->`."""
    found = re.search(rf"<!-- {name}: ([0-9.]+) -->", CARD.read_text())
    assert found, f"{CARD} lacks the line <!-- {name}: ... -->"
    return float(found.group(1))


def test_shipped_weights_are_small_safetensors_and_load_through_the_public_loaders():
    files = [p for p in EMBEDDED_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 30 * 2**20
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    metric = load_metric_model("depth-anything-v2", EMBEDDED_DIR / "metric")
    student = DiffusionDepthModel.from_pretrained(EMBEDDED_DIR / "student")
    assert student.unet.config.in_channels == 8 and student.vae.config.latent_channels == 4
    pipe = SharpDepthPipeline.from_pretrained()  # the embedded default
    assert not pipe.untrained and pipe.processing_res == 128
    scene = render_scene(100_000, 128, 96)
    image = torch.from_numpy(scene.rgb).permute(2, 0, 1)[None].float() / 255
    torch.testing.assert_close(pipe.metric_model(image).depth, metric(image).depth)
    out = pipe(scene.rgb, seed=0)
    assert out.depth.shape == (1, 1, 96, 128) and torch.isfinite(out.depth).all()
    gt = torch.from_numpy(scene.depth)
    abs_rel = ((out.depth[0, 0].clamp_min(0.01) - gt).abs() / gt).mean().item()
    assert abs_rel < 0.3  # trained, not random: a tiny random model is off by far more


def test_demo_on_the_shipped_weights_matches_the_model_card(tmp_path):
    cmd = [sys.executable, "-m", "sharpdepth_ros.demo", "--out", str(tmp_path), "--frames", "3",
           "--width", "128", "--height", "96", "--seed", "100000"]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "UNTRAINED" not in run.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert not summary["untrained_models"]
    assert summary["mean_abs_rel"] == pytest.approx(card_figure("demo_abs_rel"), abs=DEMO_TOLERANCE)
    from rosbags.highlevel import AnyReader

    from sharpdepth_ros.demo import TOPICS

    (mcap,) = (tmp_path / "sharpdepth_demo").glob("*.mcap")
    with AnyReader([mcap]) as reader:
        topics = sorted(c.topic for c, _, _ in reader.messages())
    assert topics == sorted(list(TOPICS) * 3)  # every topic of every frame, playable in Foxglove / RViz
    for name in ("overview.png", "frame_02_depth.png", "frame_02_difference.png", "frame_02_cloud.png"):
        assert (tmp_path / name).stat().st_size > 0
