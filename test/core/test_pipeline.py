"""SharpDepthPipeline end to end on tiny real models (CPU): sizes, seeds, batching, the final fit, dtypes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers_models import scene_image
from sharpdepth_core import tiny
from sharpdepth_core.models import CheckpointError, MissingWeightsError
from sharpdepth_core import pipeline_config
from sharpdepth_core.preprocessing import plan_resize
from sharpdepth_core.pipeline import (
    CONFIDENCE_SCALE,
    FIT_THRESHOLD,
    SharpDepthPipeline,
    as_image_batch,
    confidence_map,
    confidence_radius,
    fit_to_metric,
)

# random tiny weights make some fits degenerate; the fallback test checks the warning explicitly
pytestmark = pytest.mark.filterwarnings("ignore:SharpDepth. degenerate final fit:RuntimeWarning")

STAGES = {"metric", "encode", "affine_pass", "decode", "difference", "sharpen_pass", "fit", "total"}


@pytest.fixture(scope="module")
def pipe():
    return tiny.tiny_pipeline(processing_res=64)


def normal_equations(depth, target, mask):
    """Residuals of the LSQ normal equations Σ m r and Σ m r·depth (both 0 iff depth is the fit on mask)."""
    r = (depth - target).double()[mask]
    return float(r.sum()), float((r * depth.double()[mask]).sum())


def test_end_to_end_on_a_synthetic_scene(pipe):
    rgb, K = scene_image(0, width=61, height=37)  # not a multiple of 8, other aspect
    out = pipe(rgb, K=K, seed=0)
    for name in ("depth", "metric_depth", "difference"):
        assert getattr(out, name).shape == (1, 1, 37, 61), name
    assert torch.isfinite(out.depth).all() and out.fallback == [False]
    assert 0 <= float(out.difference.min()) and float(out.difference.max()) <= 1
    assert torch.allclose(out.K[0], torch.as_tensor(K, dtype=torch.float32))
    assert set(out.timings) == STAGES and all(v >= 0 for v in out.timings.values())
    # the output is the least-squares fit onto f_D over exactly the pixels with e < 0.5
    low = out.difference < FIT_THRESHOLD
    assert 16 <= int(low.sum()) < low.numel()
    scale = float(out.metric_depth.abs().mean()) ** 2 * low.sum().item()
    assert all(abs(v) < 1e-4 * scale for v in normal_equations(out.depth, out.metric_depth, low))
    everywhere = torch.ones_like(low)
    assert max(abs(v) for v in normal_equations(out.depth, out.metric_depth, everywhere)) > 1e-2 * scale


def test_same_seed_same_output_and_seed_matters(pipe):
    rgb, _ = scene_image(1)
    first, again = pipe(rgb, seed=7), pipe(rgb, seed=7)
    assert torch.equal(first.depth, again.depth) and torch.equal(first.difference, again.difference)
    other = pipe(rgb, seed=8)
    assert not torch.allclose(first.depth, other.depth)
    assert not torch.equal(pipe(rgb).depth, pipe(rgb).depth)  # unseeded: fresh noise each call


def test_batched_images_match_single_calls(pipe):
    (a, _), (b, _) = scene_image(2), scene_image(3)
    batch = torch.cat([as_image_batch(a), as_image_batch(b)])
    out = pipe(batch, seed=3)
    assert out.depth.shape == (2, 1, 48, 64) and out.K.shape == (2, 3, 3) and len(out.fallback) == 2
    for i, img in enumerate((a, b)):
        single = pipe(img, seed=3)
        assert torch.allclose(out.depth[i], single.depth[0], atol=1e-4)
        assert torch.allclose(out.difference[i], single.difference[0], atol=1e-4)
        assert out.fallback[i] == single.fallback[0]


def test_uint8_numpy_and_float_tensor_inputs_agree(pipe):
    rgb, _ = scene_image(4)
    as_tensor = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    assert torch.equal(pipe(rgb, seed=1).depth, pipe(as_tensor, seed=1).depth)


def test_image_latent_encoded_once_and_processing_resolution_used(pipe, monkeypatch):
    rgb, _ = scene_image(5)
    encoded, unet_inputs = [], []
    vae_encode, student_forward = pipe.student.vae.encode, pipe.student.forward
    monkeypatch.setattr(pipe.student.vae, "encode", lambda x: encoded.append(x.shape) or vae_encode(x))
    monkeypatch.setattr(pipe.student, "forward", lambda zi, zd: unet_inputs.append((zi, zd)) or student_forward(zi, zd))
    out = pipe(rgb, seed=0, processing_res=32)
    assert encoded == [(1, 3, 24, 32), (1, 3, 24, 32)]  # one image encode, one depth encode
    assert len(unet_inputs) == 2 and unet_inputs[0][0] is unet_inputs[1][0]  # z_i reused by both passes
    assert unet_inputs[0][0].shape == (1, 4, 3, 4)  # longer edge 32 -> latent 3 x 4
    assert out.depth.shape == (1, 1, 48, 64)


def test_per_call_settings_apply_to_that_call_only(pipe):
    """processing_res and difference given to a call are that call's; the pipeline's defaults stay."""
    rgb, K = scene_image(6)
    default = pipe(rgb, K=K, seed=0)
    at_32 = SharpDepthPipeline(pipe.student, pipe.metric_model, processing_res=32)(rgb, K=K, seed=0)
    latent = SharpDepthPipeline(pipe.student, pipe.metric_model, processing_res=64, difference="latent")(rgb, K=K, seed=0)
    assert not torch.allclose(at_32.depth, default.depth) and not torch.allclose(latent.difference, default.difference)
    assert torch.equal(pipe(rgb, K=K, seed=0, processing_res=32).depth, at_32.depth)
    assert torch.equal(pipe.metric_depth(rgb, K=K, processing_res=32), at_32.metric_depth)
    out = pipe(rgb, K=K, seed=0, difference="latent")
    assert torch.equal(out.depth, latent.depth) and torch.equal(out.difference, latent.difference)
    assert (pipe.processing_res, pipe.difference) == (64, "exact")
    assert torch.equal(pipe(rgb, K=K, seed=0).depth, default.depth)
    for bad in (4, 2049, 10**9, 64.0, True):
        with pytest.raises(ValueError, match=f"processing_res must be an integer from 8 to 2048 .*, got {bad!r}"):
            pipe(rgb, processing_res=bad)
        with pytest.raises(ValueError, match="processing_res must be an integer from 8 to 2048"):
            SharpDepthPipeline(pipe.student, pipe.metric_model, processing_res=bad)
    with pytest.raises(ValueError, match="difference 'light' needs a light depth decoder"):
        pipe(rgb, difference="light")
    with pytest.raises(ValueError, match="difference must be one of exact, light, latent, got 'fast'"):
        pipe(rgb, difference="fast")


def test_final_fit_uses_only_pixels_with_low_difference():
    metric = torch.linspace(1, 5, 256).view(1, 1, 16, 16)
    d_hat_n = (metric - 3) / 2  # agrees with f_D up to scale and shift...
    e = torch.full_like(metric, 0.2)
    d_hat_n[..., 8:] += 3.0  # ...except on the right half, where the difference map is high
    e[..., 8:] = 0.9
    depth, fallback = fit_to_metric(d_hat_n, metric, e)
    assert fallback.tolist() == [False]
    assert torch.allclose(depth[..., :8], metric[..., :8], atol=1e-5)  # exact where e < 0.5
    all_pixels, _ = fit_to_metric(d_hat_n, metric, torch.zeros_like(e))
    assert (all_pixels[..., :8] - metric[..., :8]).abs().max() > 0.5  # a fit on every pixel is pulled away


def test_degenerate_fits_return_the_metric_depth():
    metric = torch.linspace(1, 5, 256).view(1, 1, 16, 16)
    few = torch.ones_like(metric)
    few[..., 0, :10] = 0.0  # 10 < 16 usable pixels
    depth, fallback = fit_to_metric((metric - 3) / 2, metric, few)
    assert fallback.tolist() == [True] and torch.equal(depth, metric)
    depth, fallback = fit_to_metric(-metric, metric, torch.zeros_like(metric))  # inverted: scale < 0
    assert fallback.tolist() == [True] and torch.equal(depth, metric)


def test_pipeline_reports_and_warns_about_a_fallback(pipe):
    rgb, _ = scene_image(6, width=5, height=3)  # 15 pixels: fewer than the fit needs
    with pytest.warns(RuntimeWarning, match=r"degenerate final fit for image\(s\) \[0\]"):
        out = pipe(rgb, seed=0)
    assert out.fallback == [True] and out.depth.shape == (1, 1, 3, 5)
    assert torch.equal(out.depth, out.metric_depth)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_pipeline(tiny_dirs, dtype):
    rgb, _ = scene_image(7)
    full = SharpDepthPipeline.from_pretrained(tiny_dirs["pipeline"])(rgb, seed=2)
    pipe = SharpDepthPipeline.from_pretrained(tiny_dirs["pipeline"], dtype=dtype)
    assert pipe.student.unet.dtype == dtype and pipe.metric_model.dtype == dtype
    assert pipe.student.vae.dtype == (torch.float32 if dtype == torch.float16 else dtype)
    out = pipe(rgb, seed=2)
    assert out.depth.dtype == torch.float32 and torch.isfinite(out.depth).all()
    assert np.corrcoef(out.depth.flatten(), full.depth.flatten())[0, 1] > 0.95


def test_camera_k_reaches_the_metric_backend():
    pipe = tiny.tiny_pipeline(processing_res=64, metric="depth-pro")
    rgb, _ = scene_image(8)
    free = pipe(rgb, seed=0)
    K = free.K[0].clone()
    K[0, 0] = K[1, 1] = 2 * free.K[0, 0, 0]
    known = pipe(rgb, K=K, seed=0)
    ok = free.metric_depth < 1e3  # Depth Pro: depth ∝ focal length where inverse depth is not clamped
    assert torch.allclose(known.metric_depth[ok], 2 * free.metric_depth[ok], rtol=1e-4)
    assert torch.equal(known.K[0], K)
    pipe.pass_k_to_metric = False  # the reference's behaviour: f_D estimates its own camera
    blind = pipe(rgb, K=K, seed=0)
    assert torch.equal(blind.metric_depth, free.metric_depth) and torch.equal(blind.K[0], K)


def test_paper_difference_map_variant_changes_the_gate(pipe):
    rgb, _ = scene_image(9)
    reference = pipe(rgb, seed=4)
    pipe.difference_fit_first = True
    try:
        paper = pipe(rgb, seed=4)
    finally:
        pipe.difference_fit_first = False
    assert not torch.allclose(reference.difference, paper.difference)


def test_pipeline_folder_round_trip(pipe, tmp_path):
    folder = pipe.save_pretrained(tmp_path / "pipe")
    config = json.loads((folder / pipeline_config.FILE).read_text())
    assert config == {"metric_backend": "depth-anything-v2", "processing_res": 64, "difference_fit_first": False, "untrained": True}
    loaded = SharpDepthPipeline.from_pretrained(folder)
    assert loaded.untrained and loaded.processing_res == 64
    rgb, _ = scene_image(10)
    assert torch.allclose(loaded(rgb, seed=5).depth, pipe(rgb, seed=5).depth, atol=1e-4)


def test_bad_inputs_are_clear_errors(pipe, tmp_path):
    rgb, _ = scene_image(11)
    cases = [
        (rgb.astype(np.float32), "uint8 HxWx3"),
        (rgb[..., 0], "uint8 HxWx3"),
        (torch.rand(1, 4, 48, 64), r"\[B, 3, H, W\]"),
        (torch.rand(1, 3, 48, 64) * 2, r"in \[0, 1\]"),
        (torch.full((1, 3, 48, 64), float("nan")), "finite"),
        ([[0, 1]], "numpy array or a"),
    ]
    for image, message in cases:
        with pytest.raises(ValueError, match=message):
            pipe(image)
    K = np.array([[50.0, 0, 32], [0, 50, 24], [0, 0, 1]])
    for bad, message in [(np.eye(4), r"K must be \[3, 3\]"), (K * [[1], [np.nan], [1]], "non-finite"),
                         (K * [[-1], [1], [1]], r"focal lengths fx, fy = \[-50.0, 50.0\] px; they must be in \(0, 1e\+06\]"),
                         (K * [[1e7], [1], [1]], "must be in")]:
        with pytest.raises(ValueError, match=message):
            pipe(rgb, K=bad)
    with pytest.raises(ValueError, match="processing_res"):
        SharpDepthPipeline(pipe.student, pipe.metric_model, processing_res=0)
    with pytest.raises(MissingWeightsError, match=rf"no {pipeline_config.FILE} in {tmp_path}"):
        SharpDepthPipeline.from_pretrained(tmp_path)
    with pytest.raises(MissingWeightsError, match="no folder"):
        SharpDepthPipeline.from_pretrained(tmp_path / "missing")
    (tmp_path / pipeline_config.FILE).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="expected a JSON object of settings, got a list"):
        SharpDepthPipeline.from_pretrained(tmp_path)
    (tmp_path / pipeline_config.FILE).write_text('{"processing_res": "768"}')
    with pytest.raises(CheckpointError, match="processing_res must be an int, got .768."):
        SharpDepthPipeline.from_pretrained(tmp_path)


def test_metric_source_takes_the_given_then_the_pipeline_json_then_the_default_id(tmp_path):
    """The one rule from_pretrained and predict's check share (pipeline_config.metric_source): given values,
    else the pipeline.json beside the student (or a pipeline folder's own metric/), else the usual hub id."""
    from sharpdepth_core.hub_ids import DEFAULT_METRIC_IDS

    bare, trained = tmp_path / "bare" / "student", tmp_path / "run" / "student"
    bare.mkdir(parents=True)
    trained.mkdir(parents=True)
    pipeline_config.write(trained.parent, pipeline_config.make("depth-pro", 64, False, True, metric_path="run/fd"))
    source = pipeline_config.metric_source
    assert source(pipeline_config.beside_student(trained)) == ("depth-pro", "run/fd")
    assert source(pipeline_config.beside_student(trained), "depth-anything-v2") == ("depth-anything-v2", "run/fd")
    assert source(pipeline_config.beside_student(trained), metric_path="given") == ("depth-pro", "given")
    assert source(pipeline_config.beside_student(bare), "depth-pro") == ("depth-pro", DEFAULT_METRIC_IDS["depth-pro"])
    assert source(pipeline_config.beside_student(bare)) == (None, None)
    assert source(pipeline_config.beside_student(bare), "small-conv") == ("small-conv", None)  # no published checkpoint
    assert source(pipeline_config.beside_student("someone/a-hub-id"), "depth-pro")[1] == DEFAULT_METRIC_IDS["depth-pro"]
    own = tmp_path / "run" / "metric"
    assert source(pipeline_config.read(trained.parent), own_metric=own) == ("depth-pro", "run/fd")  # no metric/ folder
    own.mkdir()
    assert source(pipeline_config.read(trained.parent), own_metric=own) == ("depth-pro", own)
    assert source(pipeline_config.read(trained.parent), metric_path="given", own_metric=own) == ("depth-pro", "given")


def test_confidence_by_hand_and_on_a_frame(pipe):
    # a flat, agreeing pair is fully trusted; a 1 m -> 2 m step makes span 1 beside it: u = 2 (both teachers
    # step), c = 1 / (1 + 2 / 0.1); half a metre of disagreement on 2 m adds u = 0.125; invalid depth gets 0
    flat = torch.full((1, 1, 5, 8), 2.0)
    assert torch.equal(confidence_map(flat, flat), torch.ones_like(flat))
    step = flat.clone()
    step[..., :4] = 1.0
    c = confidence_map(step, step)
    assert c[0, 0, 2, 3] == pytest.approx(1 / (1 + 2 / CONFIDENCE_SCALE)) and c[0, 0, 2, 0] == 1.0 and c[0, 0, 2, 7] == 1.0
    assert confidence_map(flat + 0.5, flat)[0, 0, 2, 2] == pytest.approx(1 / (1 + 0.125 / CONFIDENCE_SCALE))
    bad = flat.clone()
    bad[0, 0, 1, 1], bad[0, 0, 1, 2] = float("nan"), -1.0
    assert confidence_map(bad, flat)[0, 0, 1, 1] == 0 and confidence_map(bad, flat)[0, 0, 1, 2] == 0
    # a frame's confidence is that of its own depth and f_D's, at the input size, and in [0, 1]
    rgb, K = scene_image(1, width=61, height=37)
    out = pipe(rgb, K=K, seed=0)
    radius = confidence_radius(plan_resize((37, 61), 64))
    assert radius == 1 and out.confidence.shape == out.depth.shape
    assert torch.equal(out.confidence, confidence_map(out.depth, out.metric_depth, radius))
    assert 0 <= float(out.confidence.min()) < float(out.confidence.max()) <= 1
    # a grid coarser than the input spreads a grid step over ceil(input / grid) input pixels
    assert confidence_radius(plan_resize((480, 640), 128)) == 5


def test_the_cpu_span_is_the_max_pools_value_exactly():
    # on CPU the confidence's spans run through OpenCV's dilate/erode (the frame's cost); anywhere else, and
    # inside a compiled frame, through max pools: both must give the same numbers, borders and batches included
    from sharpdepth_core.pipeline import _relative_span, square_extremes_pooled

    depth = torch.rand(2, 1, 23, 31, generator=torch.Generator().manual_seed(0)) * 5 + 0.1
    for radius in (1, 2, 5):
        high, low = square_extremes_pooled(depth, radius)
        assert torch.equal(_relative_span(depth, radius), (high - low) / low.clamp_min(1e-3))
    assert not torch.equal(_relative_span(depth, 1), _relative_span(depth, 2))  # the radius reaches the span
