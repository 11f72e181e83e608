"""The cheaper difference maps and the small-scale metric family, on tiny real models (CPU).

- `light`: a LightDepthDecoder replaces the first VAE decode; wired so that a decoder reproducing the
  VAE exactly gives exactly the reference output; trained GT-free by train/light_decoder.py, saved in
  the pipeline folder and found there.
- `latent`: e from |ẑ_a - z_d| on the latent grid, no decode.
- `small-conv`: log depth on a coarse grid, K used through the training camera's focal length.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers_models import image_folder, scene_image
from sharpdepth_core.gating import latent_difference
from sharpdepth_core import tiny
from sharpdepth_core.models import load_metric_model
from sharpdepth_core.models.conv_metric import ConvMetricBackend, ConvMetricNet
from sharpdepth_core.models.light_decoder import LIGHT_DECODER_DIR, LightDepthDecoder
from sharpdepth_core.pipeline import SharpDepthPipeline

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore:SharpDepth. degenerate final fit:RuntimeWarning")


@pytest.fixture(scope="module")
def pipe():
    return tiny.tiny_pipeline(seed=0, processing_res=64)


def test_latent_difference_is_a_normalised_channel_mean():
    z_d = torch.randn(2, 4, 6, 8)
    z_a = z_d.clone()
    z_a[0, :, 2, 3] += 2.0  # one latent pixel disagrees in image 0; image 1 agrees everywhere
    e = latent_difference(z_a, z_d)
    assert e.shape == (2, 1, 6, 8)
    assert float(e[0, 0, 2, 3]) == 1.0 and float(e[0].sum()) == 1.0
    assert torch.equal(e[1], torch.zeros_like(e[1]))
    z_a[0, :2, 1, 1] += 1.0  # half the channels by half as much: a quarter of the maximum
    assert float(latent_difference(z_a, z_d)[0, 0, 1, 1]) == pytest.approx(0.25)


def test_light_difference_with_an_exact_decoder_is_the_reference_output(pipe):
    rgb, _ = scene_image(2, width=70, height=50)
    exact = pipe(rgb, seed=3)
    light = SharpDepthPipeline(pipe.student, pipe.metric_model, processing_res=64, difference="light",
                               light_decoder=pipe.student.codec.decode_depth)  # a "light" decoder that is the VAE's
    out = light(rgb, seed=3)
    assert torch.equal(out.depth, exact.depth) and torch.equal(out.difference, exact.difference)


def test_latent_difference_skips_the_first_decode_and_stays_a_valid_map(pipe):
    rgb, _ = scene_image(2, width=70, height=50)
    decodes = []
    codec_decode = pipe.student.codec.decode_depth
    latent = SharpDepthPipeline(pipe.student, pipe.metric_model, processing_res=64, difference="latent")
    latent.engine.decode_depth = lambda z: decodes.append(z.shape) or codec_decode(z)
    out = latent(rgb, seed=3)
    assert len(decodes) == 1  # the sharpening pass only
    assert out.difference.shape == (1, 1, 50, 70) and 0 <= float(out.difference.min()) and float(out.difference.max()) <= 1
    assert not torch.equal(out.depth, pipe(rgb, seed=3).depth)


def test_light_without_a_decoder_is_one_clear_error(pipe):
    with pytest.raises(ValueError, match="light depth decoder .*train/light_decoder.py"):
        SharpDepthPipeline(pipe.student, pipe.metric_model, difference="light")
    with pytest.raises(ValueError, match="difference must be one of exact, light, latent"):
        SharpDepthPipeline(pipe.student, pipe.metric_model, difference="fast")


def test_light_decoder_is_trained_saved_beside_the_student_and_found(pipe, tmp_path):
    """train/light_decoder.py on a tiny pipeline folder and a folder of images: GT-free, loadable, used."""
    sys.path.insert(0, str(REPO / "train"))
    import light_decoder as script

    folder = pipe.save_pretrained(tmp_path / "pipeline")
    images = image_folder(tmp_path / "images")
    assert script.main(["--model", str(folder), "--data", str(images), "--steps", "3", "--batch", "2"]) == 0
    decoder = LightDepthDecoder.load(folder / LIGHT_DECODER_DIR)
    z = torch.randn(1, 4, 6, 8)
    assert decoder(z).shape == (1, 1, 48, 64)  # x8, as the VAE
    loaded = SharpDepthPipeline.from_pretrained(folder, difference="light")
    assert loaded.light_decoder is not None
    rgb, _ = scene_image(7)
    assert torch.isfinite(loaded(rgb, seed=0).depth).all()
    loaded.save_pretrained(tmp_path / "again")  # a pipeline with a light decoder saves it along
    again = LightDepthDecoder.load(tmp_path / "again" / LIGHT_DECODER_DIR)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), decoder.state_dict().values()))
    assert script.main(["--model", str(folder), "--data", str(images), "--batch", "8"]) == 2  # fewer images than a batch


def test_pipeline_json_keeps_the_camera(pipe, tmp_path):
    camera = {"width": 64, "height": 48, "K": [[50.0, 0, 31.5], [0, 50.0, 23.5], [0, 0, 1]], "hfov_deg": 65.2, "style": "indoor"}
    pipe.camera = camera
    try:
        folder = pipe.save_pretrained(tmp_path / "p")
    finally:
        pipe.camera = None
    assert json.loads((folder / "pipeline.json").read_text())["camera"] == camera
    assert SharpDepthPipeline.from_pretrained(folder).camera == camera


# --- small-conv ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def conv():
    torch.manual_seed(0)
    net = ConvMetricNet(channels=(8, 16, 16, 16), output_stride=16, groups=4, image_size=(48, 64), focal=50.0)
    for p in net.head.parameters():  # the head starts at a constant depth: give it some structure
        torch.nn.init.normal_(p, std=0.3)
    return ConvMetricBackend(net.eval())


def test_small_conv_round_trips_through_the_public_loader(conv, tmp_path):
    folder = conv.save_pretrained(tmp_path / "f_D")
    loaded = load_metric_model("small-conv", folder)
    image = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loaded(image).depth, conv(image).depth)
    assert loaded.name == "small-conv" and loaded.model.config.output_stride == 16


def test_small_conv_output_is_its_coarse_grid_upsampled(conv):
    """Blurry by construction: the depth at the input size is the 1/16 grid's log depth, bilinear."""
    image = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        x = (image - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        grid = conv.model(x)
    assert grid.shape == (1, 1, 3, 4)
    expected = F.interpolate(grid, size=(48, 64), mode="bilinear", align_corners=False).exp()
    torch.testing.assert_close(conv(image).depth, expected)


def test_small_conv_uses_k_through_the_training_cameras_focal_length(conv):
    image = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(3))  # twice the camera size
    own = conv(image)  # no K: the training camera's field of view, at this size
    assert float(own.K[0, 0, 0]) == pytest.approx(100.0) and float(own.K[0, 0, 2]) == pytest.approx(63.5)
    K = own.K[0].clone()
    K[0, 0] = K[1, 1] = 150.0  # a longer lens: the same picture is of things 1.5 times as far
    torch.testing.assert_close(conv(image, K).depth, 1.5 * own.depth)
    half = F.interpolate(image, size=(48, 64), mode="bilinear", align_corners=False, antialias=True)
    up = F.interpolate(conv(half).depth.log(), size=(96, 128), mode="bilinear", align_corners=False).exp()
    assert float((conv(image).depth - up).abs().max() / up.max()) < 0.05  # it runs at its own camera's size
    assert np.isfinite(conv(image).depth.numpy()).all()
