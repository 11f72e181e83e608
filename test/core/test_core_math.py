"""Core depth math: normalisation, least-squares alignment, gating, processing resolution, geometry."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sharpdepth_core.alignment import apply_scale_shift, fit_scale_shift
from sharpdepth_core.gating import (
    TIMESTEP,
    add_noise,
    difference_map,
    downsample_to_latent,
    gate,
    noise_schedule,
)
from sharpdepth_core.geometry import (
    crop_transform,
    project,
    scale_intrinsics,
    transform_intrinsics,
    unproject,
    write_ply,
)
from sharpdepth_core.normalization import denormalize_depth, normalize_depth
from sharpdepth_core.preprocessing import plan_resize, resize_and_pad, unpad_and_resize

FAST = settings(max_examples=30, deadline=None)


# --- normalisation -----------------------------------------------------------------------------
def test_normalize_depth_maps_min_max_to_minus_one_one_and_inverts():
    d = torch.tensor([[[[1.0, 2.0], [3.0, 5.0]]], [[[10.0, 10.0], [20.0, 30.0]]]])
    d_n, lo, hi = normalize_depth(d)
    assert torch.allclose(d_n[0].flatten(), torch.tensor([-1.0, -0.5, 0.0, 1.0]))
    assert torch.allclose(d_n[1].flatten(), torch.tensor([-1.0, -1.0, 0.0, 1.0]))
    assert torch.allclose(denormalize_depth(d_n, lo, hi), d)


def test_normalize_constant_depth_is_midpoint_not_nan():
    d = torch.full((1, 1, 4, 4), 3.0)
    d_n, lo, hi = normalize_depth(d)
    assert torch.equal(d_n, torch.zeros_like(d))
    assert torch.allclose(denormalize_depth(d_n, lo, hi), d)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_normalize_rejects_non_finite(bad):
    d = torch.ones(1, 1, 3, 3)
    d[0, 0, 1, 1] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        normalize_depth(d)


# --- least-squares scale and shift ---------------------------------------------------------------
@FAST
@given(
    scale=st.floats(0.05, 50.0),
    shift=st.floats(-20.0, 20.0),
    seed=st.integers(0, 2**16),
    keep=st.floats(0.2, 1.0),
)
def test_fit_recovers_known_scale_shift_under_noise_and_mask(scale, shift, seed, keep):
    g = torch.Generator().manual_seed(seed)
    pred = torch.rand(2, 1, 24, 32, generator=g) * 2 - 1
    target = scale * pred + shift + 0.001 * scale * torch.randn(pred.shape, generator=g)
    mask = torch.rand(pred.shape, generator=g) < keep
    # Corrupt the masked-out pixels wildly: they must not influence the fit.
    target = torch.where(mask, target, torch.full_like(target, 1e4))
    fit = fit_scale_shift(pred, target, mask=mask)
    assert fit.usable.all()
    assert torch.allclose(fit.scale, torch.full((2,), scale), rtol=0.02)
    assert torch.allclose(fit.shift, torch.full((2,), shift), atol=0.02 * scale + 1e-3)
    assert torch.equal(fit.count, mask.flatten(1).sum(1))


def test_weighted_fit_follows_weights():
    pred = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    target = torch.tensor([[1.0, 3.0, 5.0, 100.0]])  # last pixel is an outlier of the 2x+1 line
    weight = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    fit = fit_scale_shift(pred, target, weight=weight, min_pixels=3)
    assert fit.usable.all()
    assert fit.scale.item() == pytest.approx(2.0) and fit.shift.item() == pytest.approx(1.0)
    assert apply_scale_shift(pred, fit)[0, 3].item() == pytest.approx(7.0)


def test_fit_ignores_non_finite_pixels():
    pred = torch.tensor([[0.0, 1.0, 2.0, float("nan"), 4.0]])
    target = torch.tensor([[1.0, 3.0, 5.0, 7.0, float("inf")]])
    fit = fit_scale_shift(pred, target, min_pixels=3)
    assert fit.usable.item() and fit.count.item() == 3
    assert fit.scale.item() == pytest.approx(2.0)


@pytest.mark.parametrize(
    "pred, target, mask, reason",
    [
        (torch.rand(1, 64), torch.rand(1, 64), torch.zeros(1, 64, dtype=torch.bool), "empty mask"),
        (torch.ones(1, 64), torch.rand(1, 64), None, "constant prediction"),
        (torch.linspace(0, 1, 64)[None], -torch.linspace(0, 1, 64)[None], None, "negative scale"),
        (torch.rand(1, 8), torch.rand(1, 8), None, "too few pixels"),
    ],
)
def test_degenerate_fits_are_flagged_unusable(pred, target, mask, reason):
    fit = fit_scale_shift(pred, target, mask=mask)
    assert not fit.usable.item(), reason
    assert torch.isfinite(fit.scale).all() and torch.isfinite(fit.shift).all()


def test_fit_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        fit_scale_shift(torch.rand(1, 4), torch.rand(1, 5))


# --- difference map and gating -------------------------------------------------------------------
def test_difference_map_is_normalised_absolute_difference():
    d_n = torch.zeros(1, 1, 2, 2)
    d_tilde = torch.tensor([[[[0.0, 0.5], [-1.0, 0.25]]]])
    e = difference_map(d_tilde, d_n)
    assert torch.allclose(e, torch.tensor([[[[0.0, 0.5], [1.0, 0.25]]]]))
    assert torch.equal(difference_map(d_n, d_n), torch.zeros_like(d_n))  # agreement: e = 0, no NaN


def test_difference_map_paper_variant_fits_first():
    d_n = torch.linspace(-1, 1, 64).view(1, 1, 8, 8)
    d_tilde = 0.5 * d_n + 0.2  # an affine copy: only the paper variant sees full agreement
    assert difference_map(d_tilde, d_n).max() == 1.0
    assert difference_map(d_tilde, d_n, fit_first=True).max() == 0.0  # rounding noise is not blown up


def test_downsample_to_latent_is_nearest():
    e = torch.arange(64.0).view(1, 1, 8, 8)
    e_hat = downsample_to_latent(e, (2, 2))
    assert torch.equal(e_hat, torch.tensor([[[[0.0, 4.0], [32.0, 36.0]]]]))


def test_noise_schedule_is_sd2_scaled_linear():
    ab = noise_schedule()
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    assert torch.allclose(ab.double(), torch.cumprod(1 - betas, 0), rtol=1e-5)
    assert ab[TIMESTEP].item() == pytest.approx(0.00466, abs=5e-5)


def test_add_noise_at_999_is_almost_pure_noise():
    x0, eps = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    ab = noise_schedule()[999].item()
    assert torch.allclose(add_noise(x0, eps), ab**0.5 * x0 + (1 - ab) ** 0.5 * eps)
    assert torch.allclose(add_noise(torch.zeros_like(eps), eps), 0.99767 * eps, rtol=1e-4)


@FAST
@given(seed=st.integers(0, 2**16))
def test_gate_extremes_and_blend(seed):
    g = torch.Generator().manual_seed(seed)
    z_d, noisy = torch.randn(2, 4, 5, 6, generator=g), torch.randn(2, 4, 5, 6, generator=g)
    assert torch.equal(gate(z_d, torch.zeros(2, 1, 5, 6), noisy), z_d)
    assert torch.equal(gate(z_d, torch.ones(2, 1, 5, 6), noisy), noisy)
    e_hat = torch.rand(2, 1, 5, 6, generator=g)
    assert torch.allclose(gate(z_d, e_hat, noisy), e_hat * noisy + (1 - e_hat) * z_d)


# --- processing resolution ------------------------------------------------------------------------
@FAST
@given(h=st.integers(1, 300), w=st.integers(1, 300), res=st.sampled_from([None, 64, 96, 768]))
def test_resize_plan_longer_edge_and_multiple_of_8(h, w, res):
    plan = plan_resize((h, w), res)
    if res:
        assert max(plan.resized_hw) == res
    else:
        assert plan.resized_hw == (h, w)
    assert all(p % 8 == 0 and 0 <= p - r < 8 for p, r in zip(plan.padded_hw, plan.resized_hw))


@FAST
@given(h=st.integers(8, 80), w=st.integers(8, 80), res=st.sampled_from([None, 40, 120]))
def test_pad_resize_round_trip(h, w, res):
    # A smooth (linear) image survives resize + pad + inverse up to interpolation error; with no
    # resize the round trip is exact.
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([xx, yy, xx * 0.5 + 0.2])[None]
    x, plan = resize_and_pad(img, res)
    assert x.shape[-2:] == plan.padded_hw
    back = unpad_and_resize(x, plan)
    assert back.shape == img.shape
    if plan.resized_hw == plan.input_hw:
        assert torch.equal(back, img)
    else:
        assert (back - img).abs().mean() < 0.05
    # replicate padding: the pad region repeats the last row / column
    assert torch.equal(x[..., plan.resized_hw[0] :, : plan.resized_hw[1]],
                       x[..., plan.resized_hw[0] - 1 : plan.resized_hw[0], : plan.resized_hw[1]].expand_as(
                           x[..., plan.resized_hw[0] :, : plan.resized_hw[1]]))


def test_resize_rejects_empty_image():
    with pytest.raises(ValueError, match="positive"):
        plan_resize((0, 10), 64)


# --- intrinsics -----------------------------------------------------------------------------------
K = np.array([[500.0, 0.0, 319.5], [0.0, 480.0, 239.5], [0.0, 0.0, 1.0]])


def test_intrinsics_resize_half_pixel_convention():
    k2 = scale_intrinsics(K, (480, 640), (240, 320))
    assert np.allclose(k2, [[250, 0, 159.5], [0, 240, 119.5], [0, 0, 1]])  # centre stays centre


def test_intrinsics_K_and_P_stay_consistent():
    P = np.hstack([K, [[-25.0], [0.0], [0.0]]])  # stereo right camera: Tx = -fx * baseline
    for op in (lambda m: scale_intrinsics(m, (480, 640), (96, 128)),
               lambda m: transform_intrinsics(m, crop_transform(10, 20)),
               lambda m: transform_intrinsics(m, crop_transform(-4, -4))):  # pad top/left by 4
        k2, p2 = op(K), op(P)
        assert np.allclose(p2[:, :3], k2)
    p2 = scale_intrinsics(P, (480, 640), (96, 128))
    assert p2[0, 3] == pytest.approx(-25.0 * 128 / 640)  # Tx scales with fx
    k3 = transform_intrinsics(K, crop_transform(10, 20))
    assert (k3[0, 2], k3[1, 2]) == (309.5, 219.5)


def test_intrinsics_resize_maps_pixels_like_the_image():
    # A 3D point projects to pixel (u, v); after resizing the image, it projects where the resized
    # image shows it: u' = (u + 0.5) * s - 0.5.
    xyz = np.array([0.3, -0.2, 2.0])
    u = project(xyz, K)
    u2 = project(xyz, scale_intrinsics(K, (480, 640), (120, 160)))
    assert np.allclose(u2, (u + 0.5) * 0.25 - 0.5)


# --- unprojection ---------------------------------------------------------------------------------
@FAST
@given(
    fx=st.floats(50, 2000), fy=st.floats(50, 2000), cx=st.floats(-10, 50), cy=st.floats(-10, 40),
    seed=st.integers(0, 2**16),
)
def test_unproject_matches_formula_and_reprojects(fx, fy, cx, cy, seed):
    k = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    depth = np.random.default_rng(seed).uniform(0.2, 50.0, (30, 40)).astype(np.float32)
    xyz = unproject(depth, k)
    v, u = np.mgrid[0:30, 0:40]
    assert np.allclose(xyz[..., 2], depth)
    assert np.allclose(xyz[..., 0], (u - cx) * depth / fx, rtol=1e-5, atol=1e-5)
    assert np.allclose(xyz[..., 1], (v - cy) * depth / fy, rtol=1e-5, atol=1e-5)
    uv = project(xyz.astype(np.float64), k)
    assert np.allclose(uv[..., 0], u, atol=1e-3) and np.allclose(uv[..., 1], v, atol=1e-3)


def test_unproject_batched_torch_and_invalid_is_nan():
    depth = torch.full((2, 1, 4, 5), 2.0)
    depth[0, 0, 1, 1] = 0.0
    depth[1, 0, 2, 2] = float("nan")
    depth[1, 0, 3, 3] = -1.0
    k = torch.tensor(K[None].repeat(2, 0))
    k[1, 0, 0] = 1000.0
    xyz = unproject(depth, k[:, None])
    assert xyz.shape == (2, 1, 4, 5, 3)
    nan = torch.isnan(xyz).all(-1)
    assert nan.sum() == 3 and nan[0, 0, 1, 1] and nan[1, 0, 2, 2] and nan[1, 0, 3, 3]
    assert xyz[1, 0, 0, 0, 0].item() == pytest.approx((0 - 319.5) * 2.0 / 1000.0)
    assert xyz[0, 0, 0, 0, 0].item() == pytest.approx((0 - 319.5) * 2.0 / 500.0)


@pytest.mark.parametrize("which", [(0, 0), (1, 1)])
def test_unproject_rejects_zero_focal_length(which):
    k = K.copy()
    k[which] = 0.0
    with pytest.raises(ValueError, match="focal length"):
        unproject(np.ones((3, 3)), k)


def test_write_ply_keeps_finite_points_with_colour(tmp_path):
    xyz = unproject(np.array([[1.0, np.nan], [2.0, 3.0]]), K)
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [9, 8, 7]]], dtype=np.uint8)
    n = write_ply(tmp_path / "c.ply", xyz, rgb)
    assert n == 3
    raw = (tmp_path / "c.ply").read_bytes()
    header, body = raw.split(b"end_header\n")
    assert b"element vertex 3" in header and b"property uchar red" in header
    rec = np.frombuffer(body, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")])
    assert np.allclose(rec["z"], [1.0, 2.0, 3.0])
    assert rec["r"].tolist() == [255, 0, 9] and rec["b"].tolist() == [0, 255, 7]
    assert not list(tmp_path.glob("*.tmp"))
