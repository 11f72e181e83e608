"""The pipeline against an independent transcription of the reference code's order of operations.

`reference_sharpdepth` below is written from docs/METHOD.md ("Inference", the reference column), with
plain torch calls on the models' own modules, not from pipeline.py: floor-division grid, antialiased
bilinear resize in, replicate padding, f_D on the padded grid image (no intrinsics), min/max over all
grid pixels, both UNet passes at t = 999, nearest ê, gating with add_noise at 999, decoding, unpad,
bilinear resize back *without* antialias, and the least-squares fit onto f_D's grid depth brought
back the same way, on e < 0.5. Tiny random models (CPU); the noise is the pipeline's seeded draw.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from helpers_models import scene_image
from sharpdepth_core import tiny
from sharpdepth_core.pipeline import SharpDepthPipeline

pytestmark = pytest.mark.filterwarnings("ignore:SharpDepth. degenerate final fit:RuntimeWarning")


@torch.no_grad()
def reference_sharpdepth(student, metric, rgb01: torch.Tensor, R: int, seed: int) -> dict[str, torch.Tensor]:
    h, w = rgb01.shape[-2:]
    new_h, new_w = h * R // max(h, w), w * R // max(h, w)
    x = F.interpolate(rgb01, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    ph, pw = -new_h % 8, -new_w % 8
    x = F.pad(x, (0, pw, 0, ph), mode="replicate")

    depth = metric(x).depth  # f_D on the grid image, no intrinsics
    lo, hi = depth.min(), depth.max()
    d_n = (2 * (depth - lo) / (hi - lo) - 1).clamp(-1, 1)

    vae, unet, sf = student.vae, student.unet, student.vae.config.scaling_factor
    z_i = vae.encode(2 * x - 1).latent_dist.mode() * sf
    z_d = vae.encode(d_n.repeat(1, 3, 1, 1)).latent_dist.mode() * sf
    g = torch.Generator().manual_seed(seed)
    eps1, eps2 = torch.randn(z_i.shape, generator=g), torch.randn(z_i.shape, generator=g)
    text = student.prompt_embeds
    task = torch.tensor([[math.sin(1.0), math.sin(0.0), math.cos(1.0), math.cos(0.0)]])

    def G(z_depth):
        return unet(torch.cat([z_i, z_depth], 1), 999, encoder_hidden_states=text, class_labels=task).sample

    def decode(z):
        return vae.decode(z / sf).sample.mean(1, keepdim=True)

    z_a = G(eps1)
    e = (decode(z_a) - d_n).abs()
    e = (e / e.max()).clamp(0, 1)
    e_hat = F.interpolate(e, size=z_a.shape[-2:], mode="nearest")
    a = student.scheduler.alphas_cumprod[999]
    z_gated = e_hat * (a.sqrt() * z_a + (1 - a).sqrt() * eps2) + (1 - e_hat) * z_d
    pred = decode(G(z_gated))

    def back(t):
        return F.interpolate(t[..., :new_h, :new_w], size=(h, w), mode="bilinear", align_corners=False)

    pred, e, depth = back(pred), back(e).clamp(0, 1), back(depth)
    m = (e < 0.5).flatten()
    A = torch.stack([pred.flatten()[m], torch.ones(int(m.sum()))], 1).double()
    s, b = torch.linalg.lstsq(A, depth.flatten()[m].double()[:, None]).solution.flatten()
    return {"depth": (s * pred.double() + b).float(), "metric_depth": depth, "difference": e, "grid": (new_h, new_w)}


@pytest.fixture(scope="module")
def models():
    pipe = tiny.tiny_pipeline(seed=0)  # a seed whose random fits are not degenerate at these sizes
    return pipe.student, pipe.metric_model


@pytest.mark.parametrize(
    "hw, R, why",
    [
        ((61, 83), 48, "grid smaller than the input"),
        ((30, 41), 72, "grid larger than the input: antialias or not matters on the way back"),
        ((37, 100), 64, "37 * 64 / 100 = 23.68: floor gives 23 rows, rounding 24"),
    ],
)
def test_pipeline_matches_the_reference_order(models, hw, R, why):
    student, metric = models
    rgb, _ = scene_image(5, width=hw[1], height=hw[0])
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    ref = reference_sharpdepth(student, metric, image, R, seed=11)
    out = SharpDepthPipeline(student, metric, processing_res=R)(image, seed=11)
    assert out.fallback == [False], why
    for name in ("metric_depth", "difference", "depth"):
        got, want = getattr(out, name), ref[name]
        assert got.shape == want.shape == (1, 1, *hw), name
        err = float((got - want).abs().max() / want.abs().max())
        assert err < 2e-6, f"{why}: {name} differs by {err:.2e} (relative)"


def test_floor_division_grid_and_unantialiased_way_back():
    from sharpdepth_core.preprocessing import plan_resize, resize_and_pad, unpad_and_resize

    assert plan_resize((375, 1242), 768).resized_hw == (231, 768)  # round() would give 232
    assert plan_resize((375, 1242), 768).padded_hw == (232, 768)
    x = torch.rand(1, 1, 48, 64)
    grid, plan = resize_and_pad(x, 128)
    back = unpad_and_resize(grid, plan)
    plain = F.interpolate(grid[..., :96, :128], size=(48, 64), mode="bilinear", align_corners=False)
    smooth = F.interpolate(grid[..., :96, :128], size=(48, 64), mode="bilinear", align_corners=False, antialias=True)
    assert torch.equal(back, plain) and not torch.allclose(back, smooth, atol=1e-3)


def test_the_alternatives_are_named_options_and_change_the_output(models):
    """f_D at input resolution and K to the metric model depart from the reference, each measurably."""
    student, _ = models
    metric = tiny.tiny_depth_pro(seed=1)  # uses a given K (focal length)
    rgb, K = scene_image(6, width=80, height=60)
    ref = SharpDepthPipeline(student, metric, processing_res=48)
    at_input = SharpDepthPipeline(student, metric, processing_res=48, metric_at_input_res=True)
    base = ref(rgb, seed=0)
    assert not torch.allclose(at_input(rgb, seed=0).metric_depth, base.metric_depth, rtol=1e-3)
    with_k = ref(rgb, K=K, seed=0)
    assert not torch.allclose(with_k.metric_depth, base.metric_depth, rtol=1e-3)
    without = SharpDepthPipeline(student, metric, processing_res=48, pass_k_to_metric=False)(rgb, K=K, seed=0)
    assert torch.equal(without.metric_depth, base.metric_depth)  # K then only serves unprojection
    assert torch.allclose(without.K[0], torch.as_tensor(K, dtype=torch.float32))
