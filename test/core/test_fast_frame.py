"""The fast path of a whole frame (issue 20, part 2) on tiny real models: `SharpDepthPipeline(fast=...)`
compiles the frame as one graph with fullgraph=True, so a graph break or a wait for the device inside
it is an error. On CPU the "eager" compile backend checks the tracing and must give the eager path's
outputs bit for bit, in fp32 and in bf16; inductor and CUDA graphs run where a GPU exists."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch._dynamo.exc import TorchDynamoException

from helpers_models import scene_image
from sharpdepth_core.speed import FAST, FastPath, fast_path
from sharpdepth_core import tiny
from sharpdepth_core.pipeline import SharpDepthPipeline

pytestmark = pytest.mark.filterwarnings("ignore:SharpDepth. degenerate final fit:RuntimeWarning")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)")
TRACED = dict(compile=True, compile_backend="eager")
BF16 = dict(dtype=torch.bfloat16, vae_dtype=torch.bfloat16, channels_last=True)


def pipe(fast: FastPath | None = None, metric: str = "depth-anything-v2", device: str = "cpu", **options) -> SharpDepthPipeline:
    p = tiny.tiny_pipeline(0, metric=metric).to(device)  # on the device first: CUDA graphs are checked at construction
    return SharpDepthPipeline(p.student, p.metric_model, processing_res=64, untrained=True, fast=fast, **options)


def outputs(p: SharpDepthPipeline, rgb, K=None, **call) -> dict[str, torch.Tensor]:
    out = p(rgb, K=K, seed=3, **call)
    return {"depth": out.depth, "metric": out.metric_depth, "e": out.difference, "K": out.K}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from nothing (dynamo caches per function across pipelines)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def frames():
    (a, K), (b, _) = scene_image(0), scene_image(1)
    return a, K, torch.from_numpy(np.stack([a, b])).permute(0, 3, 1, 2)


def assert_identical(got: dict, want: dict) -> None:
    for k in want:
        assert torch.equal(got[k], want[k]), f"{k}: max |Δ| {(got[k] - want[k]).abs().max():.3g}"


@pytest.mark.parametrize("precision", [{}, BF16], ids=["fp32", "bf16"])
def test_the_traced_frame_is_the_eager_frame_bit_for_bit(frames, precision):
    rgb, K, batch = frames
    eager, traced = pipe(FastPath(**precision)), pipe(FastPath(**precision, **TRACED))
    for args in [(rgb,), (rgb, K), (batch,)]:  # no K, with K, a batch of two
        assert_identical(outputs(traced, *args), outputs(eager, *args))
    for method in ("latent",):
        assert_identical(outputs(traced, rgb, difference=method), outputs(eager, rgb, difference=method))
    out = traced(rgb, seed=3)
    assert set(out.timings) == {"frame", "total"} and out.fallback == [False]  # fused: one stage
    if precision:  # bf16 really ran: the models were converted and the numbers moved
        assert traced.metric_model.dtype == torch.bfloat16 and traced.student.unet.dtype == torch.bfloat16
        assert not torch.equal(outputs(traced, rgb)["depth"], outputs(pipe(), rgb)["depth"])


@pytest.mark.parametrize("metric", ["depth-anything-v2", "depth-pro"])
def test_the_compiled_frame_is_the_reference_frame_in_fp32(frames, metric):
    """FastPath() without options is the reference computation; compiled whole, metric model included, still."""
    rgb, K, _ = frames
    assert_identical(outputs(pipe(FastPath(**TRACED), metric), rgb, K), outputs(pipe(metric=metric), rgb, K))
    assert_identical(outputs(pipe(FastPath(**TRACED), metric), rgb), outputs(pipe(metric=metric), rgb))  # K predicted


def test_a_wait_for_the_device_inside_the_frame_is_an_error(frames, monkeypatch):
    """What the traced tests guard against: a data-dependent host read (like the old finite check or
    fallback list) breaks the graph, and fullgraph makes that an error instead of a slow frame."""
    p = pipe(FastPath(**TRACED))
    real = p.metric_model._predict

    def reads_the_device(image, K):
        pred = real(image, K)
        if pred.depth.max().item() > 1e9:  # a host read of a device value
            raise AssertionError
        return pred

    monkeypatch.setattr(p.metric_model, "_predict", reads_the_device)
    with pytest.raises(TorchDynamoException, match="data-dependent"):
        p(frames[0], seed=3)


def test_a_backend_without_static_shapes_runs_before_the_compiled_rest(frames, monkeypatch):
    rgb, K, _ = frames
    p = pipe(FastPath(**TRACED))
    monkeypatch.setattr(p.metric_model, "static_shapes", False)
    calls = []
    real = p.metric_model._predict
    monkeypatch.setattr(p.metric_model, "_predict", lambda image, K: calls.append(1) or real(image, K))
    assert_identical(outputs(p, rgb, K), outputs(pipe(), rgb, K))
    assert calls == [1]  # eager, outside the traced part (a traced call would not run the Python list append)


def test_non_finite_metric_depth_is_still_refused_in_one_line(frames, monkeypatch):
    p = pipe(FastPath(**TRACED))
    real = p.metric_model._predict

    def nan_depth(image, K):
        pred = real(image, K)
        pred.depth[:, :, 0, 0] = float("nan")
        return pred

    monkeypatch.setattr(p.metric_model, "_predict", nan_depth)
    with pytest.raises(ValueError, match="metric backend's depth contains NaN or inf"):
        p(frames[0], seed=3)


def test_seeded_noise_stays_on_the_device_between_frames(frames):
    p, rgb = pipe(), frames[0]
    first = p(rgb, seed=5).depth
    cached = dict(p._seeded_noise)
    assert torch.equal(p(rgb, seed=5).depth, first) and p._seeded_noise.keys() == cached.keys()
    assert all(a is b for key in cached for a, b in zip(cached[key], p._seeded_noise[key]))  # reused, not redrawn
    assert torch.equal(pipe()(rgb, seed=5).depth, first)  # and the same draw as a fresh pipeline's


def test_fast_options_are_checked():
    with pytest.raises(ValueError, match="CUDA device; they are on cpu"):
        pipe(FastPath(cuda_graphs=True))
    p = tiny.tiny_pipeline(0)
    with pytest.raises(ValueError, match="exported engine"):
        SharpDepthPipeline(p.student, p.metric_model, engine=p.engine, fast=FastPath())


@needs_cuda
def test_compiled_and_graphed_frame_matches_eager_bf16_on_the_gpu(frames):
    rgb, K, _ = frames
    eager = pipe(FastPath(**BF16), device="cuda")
    fast = pipe(fast_path(FAST, "cuda"), device="cuda")
    want = outputs(eager, rgb, K)
    first, again = outputs(fast, rgb, K), outputs(fast, rgb, K)  # capture, then replay
    for k in want:  # inductor's fused bf16 kernels keep fp32 between ops: close, not equal
        assert ((first[k] - want[k]).abs().mean() / want[k].abs().mean().clamp_min(1e-6)) < 0.05, k
        assert torch.equal(again[k], first[k]), k  # a replay is the capture
    assert torch.equal(first["K"], want["K"])  # the given K, untouched
    other = outputs(fast, frames[2][1].permute(1, 2, 0).numpy())  # new inputs into the same graph
    assert not torch.equal(other["depth"], first["depth"])
