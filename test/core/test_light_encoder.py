"""The light depth encoder (issue 20, part 3) on real models: the shape contract and the checked loader;
wired so that an encoder reproducing the VAE's gives the reference output; trained GT-free by
train/light_encoder.py on a tiny pipeline, saved beside the student and found there; the shipped one
reproduces the embedded VAE's latent of f_D's depth on validation scenes."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers_models import image_folder, scene_image
from sharpdepth_core import tiny
from sharpdepth_core.models import EMBEDDED_DIR
from sharpdepth_core.models.hub import CheckpointError
from sharpdepth_core.models.light_encoder import LIGHT_ENCODER_DIR, LightDepthEncoder
from sharpdepth_core.normalization import normalize_depth
from sharpdepth_core.pipeline import SharpDepthPipeline
from sharpdepth_core.synthetic import render_scene

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "train"))
import light_encoder as script  # noqa: E402  (train/ is not a package)

pytestmark = pytest.mark.filterwarnings("ignore:SharpDepth. degenerate final fit:RuntimeWarning")


@pytest.fixture(scope="module")
def pipe():
    return tiny.tiny_pipeline(seed=0, processing_res=64)


def test_shape_contract_and_a_checked_config(tmp_path):
    encoder = LightDepthEncoder(latent_channels=4, channels=(8, 8, 8, 16))
    assert encoder(torch.rand(2, 1, 48, 64) * 2 - 1).shape == (2, 4, 6, 8)  # x8 down, as the VAE
    encoder.save_pretrained(tmp_path / "ok")
    loaded = LightDepthEncoder.load(tmp_path / "ok")
    x = torch.rand(1, 1, 16, 24)
    assert torch.equal(loaded(x), encoder(x)) and not loaded.training
    LightDepthEncoder(channels=(8, 5000)).save_pretrained(tmp_path / "bad")
    with pytest.raises(CheckpointError, match=r"channels must be an integer from 1 to 4096"):
        LightDepthEncoder.load(tmp_path / "bad")


def test_an_encoder_equal_to_the_vae_gives_the_reference_output(pipe):
    rgb, K = scene_image(2)
    exact = pipe(rgb, K=K, seed=4)
    calls = []
    same = SharpDepthPipeline(pipe.student, pipe.metric_model, processing_res=64, depth_encoder="light",
                              light_encoder=lambda d_n: calls.append(d_n.shape) or pipe.student.codec.encode_depth(d_n))
    assert torch.equal(same(rgb, K=K, seed=4).depth, exact.depth) and len(calls) == 1
    with pytest.raises(ValueError, match="light depth encoder .*train/light_encoder.py"):
        SharpDepthPipeline(pipe.student, pipe.metric_model, depth_encoder="light")
    with pytest.raises(ValueError, match="depth_encoder must be one of vae, light"):
        SharpDepthPipeline(pipe.student, pipe.metric_model, depth_encoder="tiny")


def test_trained_gt_free_saved_beside_the_student_and_found(pipe, tmp_path):
    folder = pipe.save_pretrained(tmp_path / "pipeline")
    images = image_folder(tmp_path / "images")
    assert script.main(["--model", str(folder), "--data", str(images), "--steps", "3", "--batch", "2"]) == 0
    encoder = LightDepthEncoder.load(folder / LIGHT_ENCODER_DIR)
    loaded = SharpDepthPipeline.from_pretrained(folder, depth_encoder="light")
    assert loaded.light_encoder is not None and loaded.depth_encoder == "light"
    rgb, _ = scene_image(7)
    assert torch.isfinite(loaded(rgb, seed=0).depth).all()
    loaded.save_pretrained(tmp_path / "again")  # a pipeline with a light encoder saves it along
    again = LightDepthEncoder.load(tmp_path / "again" / LIGHT_ENCODER_DIR)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), encoder.state_dict().values()))


@pytest.mark.parametrize("argv, message", [(["--batch", "8"], "4 images are fewer than one batch of 8"),
                                           (["--channels", "8", "16"], "--channels needs 4 widths for the VAE's x8")])
def test_bad_arguments_are_one_line_and_write_nothing(pipe, tmp_path, capsys, argv, message):
    folder = pipe.save_pretrained(tmp_path / "pipeline")
    images = image_folder(tmp_path / "images")
    assert script.main(["--model", str(folder), "--data", str(images), "--steps", "2", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"light_encoder.py: error: {message}"
    assert not (folder / LIGHT_ENCODER_DIR).exists()


def test_the_shipped_encoder_reproduces_the_vae_on_validation_scenes():
    """Relative L1 of the latent on 10 val scenes (seeds 110000..; trained on the distillation seeds)
    against predicting each latent's own mean: measured 0.081 against 0.80 when shipped."""
    exact = SharpDepthPipeline.from_pretrained()
    encoder = LightDepthEncoder.load(EMBEDDED_DIR / LIGHT_ENCODER_DIR)
    camera = exact.camera
    errors, baseline = [], []
    for i in range(10):
        scene = render_scene(110_000 + i, camera["width"], camera["height"], K=np.array(camera["K"]), style=camera["style"])
        image = torch.from_numpy(scene.rgb).permute(2, 0, 1)[None].float() / 255
        d_n, _, _ = normalize_depth(exact.metric_model(image).depth)
        z = exact.student.codec.encode_depth(d_n)
        scale = z.abs().mean()
        errors.append(float((encoder(d_n) - z).abs().mean() / scale))
        baseline.append(float((z - z.mean()).abs().mean() / scale))
    assert np.mean(errors) < 0.15 and np.mean(errors) < 0.25 * np.mean(baseline), (np.mean(errors), np.mean(baseline))


@pytest.mark.parametrize("damage", ["garbage", "nan", "huge"])
def test_a_damaged_light_network_never_blocks_a_setting_that_does_not_use_it(pipe, tmp_path, damage):
    """Issue 26 P: `exact` never reads light_encoder/ (nor light_decoder/), so damage there cannot stop it;
    a setting that does use it is refused at load in one line, NaN and absurd weights included."""
    from safetensors.torch import save_file

    folder = pipe.save_pretrained(tmp_path / "pipeline")
    LightDepthEncoder(latent_channels=4, channels=(8, 8)).save_pretrained(folder / LIGHT_ENCODER_DIR)
    weights = folder / LIGHT_ENCODER_DIR / "diffusion_pytorch_model.safetensors"
    if damage == "garbage":
        weights.write_bytes(b"not safetensors")
    else:
        state = LightDepthEncoder.load(folder / LIGHT_ENCODER_DIR).state_dict()
        state["head.weight"] = torch.full_like(state["head.weight"], float("nan") if damage == "nan" else 1e30)
        save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    exact = SharpDepthPipeline.from_pretrained(folder, speed="exact")
    rgb, _ = scene_image(3)
    assert exact.light_encoder is None and torch.isfinite(exact(rgb, seed=0).depth).all()
    with pytest.raises(CheckpointError, match=r"^light depth encoder: .*") as err:
        SharpDepthPipeline.from_pretrained(folder, speed="fast")
    assert "\n" not in str(err.value)
    if damage != "garbage":
        assert "tensor head.weight holds NaN, inf or values beyond 1e+04" in str(err.value)
