"""The shipped small models (sharpdepth_core/weights/nano): they load through the public loaders
unchanged, carry their camera and the f_G teacher, and distil offline with what ships. (The demo on
them reproducing the model card is test/ros/test_demo.py.)
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import pytest
import torch

from sharpdepth_core import small_scale
from sharpdepth_core.models import EMBEDDED_DIR, DiffusionDepthModel, load_metric_model
from sharpdepth_core.pipeline import SharpDepthPipeline
from sharpdepth_core.synthetic import render_scene

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not (EMBEDDED_DIR / "pipeline.json").is_file(), reason=f"no shipped weights in {EMBEDDED_DIR}")


def test_shipped_weights_are_small_safetensors_and_load_through_the_public_loaders():
    files = [p for p in EMBEDDED_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 40 * 2**20
    assert max(p.stat().st_size for p in files) <= 5 * 2**20  # UNets as diffusers shards: small files in git
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    metric = load_metric_model("small-conv", EMBEDDED_DIR / "metric")
    student = DiffusionDepthModel.from_pretrained(EMBEDDED_DIR / "student")
    teacher = DiffusionDepthModel.from_pretrained(EMBEDDED_DIR / "teacher")  # f_G: offline distillation
    assert student.unet.config.in_channels == 8 and student.vae.config.latent_channels == 4
    same = {k: v for k, v in teacher.unet.config.items() if k != "_name_or_path"}
    assert same == {k: v for k, v in student.unet.config.items() if k != "_name_or_path"}
    assert not torch.equal(next(teacher.unet.parameters()), next(student.unet.parameters()))  # distilled: moved
    pipe = SharpDepthPipeline.from_pretrained(difference="light")  # the embedded default, with its light decoder
    assert not pipe.untrained and pipe.processing_res == 128 and pipe.light_decoder is not None
    camera = json.loads((EMBEDDED_DIR / "pipeline.json").read_text())["camera"]
    assert (camera["width"], camera["height"], camera["style"]) == (128, 96, "indoor")
    assert camera == small_scale.camera()  # what synthetic scenes and the nano preset default to
    scene = render_scene(100_000, 128, 96, K=camera["K"])
    image = torch.from_numpy(scene.rgb).permute(2, 0, 1)[None].float() / 255
    torch.testing.assert_close(pipe.metric_model(image).depth, metric(image).depth)
    out = pipe(scene.rgb, seed=0)
    assert out.depth.shape == (1, 1, 96, 128) and torch.isfinite(out.depth).all()
    gt = torch.from_numpy(scene.depth)
    abs_rel = ((out.depth[0, 0].clamp_min(0.01) - gt).abs() / gt).mean().item()
    assert abs_rel < 0.25  # trained, not random: a tiny random model is off by far more


def test_preset_nano_distils_offline_with_what_ships_and_the_result_runs(tmp_path):
    """The README's CPU recipe (`distill.py --preset nano`): the embedded f_G teacher and f_D, a folder
    of images, no network; the run's pipeline folder then serves `sharpdepth predict --model`."""
    from PIL import Image

    from sharpdepth_core.cli import main as cli

    camera = json.loads((EMBEDDED_DIR / "pipeline.json").read_text())["camera"]
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.fromarray(render_scene(90_000 + i, 160, 120, K=None).rgb).save(images / f"{i}.png")  # another size: resized
    run = tmp_path / "run"
    cmd = [sys.executable, "train/distill.py", "--preset", "nano", "--data", str(images), "--output-dir", str(run),
           "--max-steps", "3", "--batch-size", "2", "--num-workers", "0", "--depth-cache", str(tmp_path / "cache"),
           "--validate-every", "0"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    pipe = SharpDepthPipeline.from_pretrained(run / "pipeline")
    assert pipe.metric_model.name == "small-conv" and pipe.processing_res == max(camera["width"], camera["height"])
    assert cli(["predict", str(images / "0.png"), "--out", str(tmp_path / "pred"), "--model", str(run / "pipeline")]) == 0
    depth = np.load(tmp_path / "pred" / "0_depth.npy")
    assert depth.shape == (120, 160) and np.isfinite(depth).all() and 0.3 < float(np.median(depth)) < 10
