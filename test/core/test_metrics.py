"""Evaluation metrics: depth accuracy (hand-computed cases, masks, per-image averaging) and the
pseudo depth-boundary error (exact distances on steps, blur gets worse, degenerate inputs)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.ndimage import gaussian_filter
from skimage.feature import canny

from sharpdepth_core.metrics import (MAX_EDGE_DISTANCE, boundary_error, depth_edges, depth_metrics, depth_scores, flying_points,
                                    phantom_voxels, sparsification, window_radius, world_points)
from sharpdepth_core.synthetic import render_scene

FAST = settings(max_examples=30, deadline=None)
KEYS = {"abs_rel", "sq_rel", "rmse", "log_rmse", "silog", "delta1", "delta2", "delta3"}
positive_depths = arrays(np.float64, (3, 5), elements=st.floats(0.1, 80.0))


# --- depth_metrics -----------------------------------------------------------------------------
def test_ten_percent_overestimate():
    gt = np.array([[1.0, 2.0], [4.0, 5.0]])
    m = depth_metrics(1.1 * gt, gt)
    assert set(m) == KEYS
    assert m["abs_rel"] == pytest.approx(0.1)
    assert m["sq_rel"] == pytest.approx(0.01 * gt.mean())  # (0.1 g)² / g
    assert m["rmse"] == pytest.approx(0.1 * math.sqrt((gt**2).mean()))
    assert m["log_rmse"] == pytest.approx(math.log(1.1))
    assert m["silog"] == pytest.approx(0.0, abs=1e-6)  # a global scale is invisible to SILog
    assert m["delta1"] == m["delta2"] == m["delta3"] == 1.0


def test_two_pixels_by_hand():
    # gt = (1, 2), pred = (1.5, 2): errors (0.5, 0), log errors d = (ln 1.5, 0), ratios (1.5, 1).
    m = depth_metrics(np.array([[1.5, 2.0]]), np.array([[1.0, 2.0]]))
    ln = math.log(1.5)
    assert m["abs_rel"] == pytest.approx(0.25)
    assert m["sq_rel"] == pytest.approx(0.125)
    assert m["rmse"] == pytest.approx(math.sqrt(0.125))
    assert m["log_rmse"] == pytest.approx(ln / math.sqrt(2))
    assert m["silog"] == pytest.approx(100 * math.sqrt(ln**2 / 2 - (ln / 2) ** 2))  # = 50 ln 1.5
    assert (m["delta1"], m["delta2"], m["delta3"]) == (0.5, 1.0, 1.0)  # 1.25 < 1.5 < 1.5625


def test_default_mask_skips_missing_gt_and_explicit_mask_is_respected():
    gt = np.array([[1.0, 0.0, np.nan, np.inf, 2.0]])
    pred = np.array([[1.0, 7.0, 7.0, 7.0, 3.0]])
    assert depth_metrics(pred, gt)["abs_rel"] == pytest.approx(0.25)  # (0 + 0.5) / 2
    valid = np.array([[True, False, False, False, False]])
    assert depth_metrics(pred, gt, valid)["abs_rel"] == 0.0
    # a wild prediction outside the mask changes nothing
    worse = pred.copy()
    worse[0, 1:4] = 1e6
    assert depth_metrics(worse, gt) == depth_metrics(pred, gt)


def test_per_image_then_average_not_pooled():
    gt = np.ones((2, 1, 4))
    pred = gt.copy()
    pred[0, 0, 0] = 2.0  # image 0: one valid pixel, AbsRel 1
    valid = np.array([[[True, False, False, False]], [[True, True, True, True]]])  # image 1: AbsRel 0
    m = depth_metrics(pred, gt, valid)
    assert m["abs_rel"] == pytest.approx(0.5)  # mean of (1, 0); pooling the 5 pixels would give 0.2
    assert m["delta1"] == pytest.approx(0.5)


def test_layouts_and_torch_agree():
    rng = np.random.default_rng(0)
    gt = rng.uniform(1, 10, (2, 6, 7))
    pred = gt * rng.uniform(0.8, 1.3, gt.shape)
    ref = depth_metrics(pred, gt)
    assert depth_metrics(pred[:, None], gt[:, None]) == pytest.approx(ref)
    assert depth_metrics(torch.from_numpy(pred).float()[:, None], torch.from_numpy(gt).float()[:, None]) == pytest.approx(ref, rel=1e-5)
    single = depth_metrics(pred[1], gt[1])
    assert single == pytest.approx(depth_metrics(pred[1:], gt[1:]))
    assert ref["abs_rel"] == pytest.approx((depth_metrics(pred[0], gt[0])["abs_rel"] + single["abs_rel"]) / 2)


def test_empty_mask_names_the_image():
    gt = np.ones((3, 4, 4))
    gt[1] = 0.0  # no valid GT at all in image 1
    with pytest.raises(ValueError, match="image 1 has no valid pixel"):
        depth_metrics(gt, gt)
    valid = np.ones((3, 4, 4), bool)
    valid[2] = False
    with pytest.raises(ValueError, match="image 2 has no valid pixel"):
        depth_metrics(np.ones((3, 4, 4)), np.ones((3, 4, 4)), valid)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -1.0, 0.0])
def test_bad_prediction_on_a_scored_pixel_raises(bad):
    gt = np.ones((2, 3, 3))
    pred = np.ones((2, 3, 3))
    pred[1, 2, 2] = bad
    with pytest.raises(ValueError, match="image 1: 1 valid pixels have non-finite or non-positive pred"):
        depth_metrics(pred, gt)


def test_explicit_mask_over_bad_gt_raises_and_shapes_must_match():
    gt = np.array([[1.0, np.nan]])
    with pytest.raises(ValueError, match="non-positive gt"):
        depth_metrics(np.ones((1, 2)), gt, np.ones((1, 2), bool))
    with pytest.raises(ValueError, match="differ in shape"):
        depth_metrics(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"must be \[H, W\]"):
        depth_metrics(np.ones(5), np.ones(5))


@FAST
@given(gt=positive_depths, c=st.floats(0.5, 2.0))
def test_scaled_prediction_property(gt, c):
    assume(abs(max(c, 1 / c) - 1.25) > 1e-6)
    m = depth_metrics(c * gt, gt)
    assert m["abs_rel"] == pytest.approx(abs(c - 1), abs=1e-12)
    assert m["log_rmse"] == pytest.approx(abs(math.log(c)), abs=1e-12)
    assert m["silog"] == pytest.approx(0.0, abs=1e-5)
    assert m["delta1"] == float(max(c, 1 / c) < 1.25)


@FAST
@given(gt=positive_depths, pred=positive_depths, k=st.integers(-3, 3))
def test_silog_ignores_scale_and_perfect_prediction_scores_zero(gt, pred, k):
    assert depth_metrics(2.0**k * pred, gt)["silog"] == pytest.approx(depth_metrics(pred, gt)["silog"], abs=1e-6)
    m = depth_metrics(gt, gt)
    assert all(m[k] == 0 for k in ("abs_rel", "sq_rel", "rmse", "log_rmse", "silog"))
    assert m["delta1"] == 1.0


# --- boundary_error (pseudo-DBE) ---------------------------------------------------------------
def step(col: int, shape=(48, 64)) -> np.ndarray:
    d = np.full(shape, 4.0)
    d[:, col:] = 2.0
    return d


def boxes_scene() -> np.ndarray:
    d = np.full((64, 96), 5.0)
    d[10:40, 10:40] = 2.0
    d[20:60, 60:62] = 1.5  # a thin pole
    d[45:55, 20:30] = 3.0
    d[5:15, 70:90] = 4.0
    return d


def test_step_edge_lies_on_the_discontinuity():
    e = depth_edges(step(20))
    assert set(np.nonzero(e.any(0))[0]) == {19, 20}  # the two pixels either side of the jump tie
    assert e[1:-1, 19].all() and e[1:-1, 20].all()  # canny leaves the 1-px image border out


def test_identical_depth_is_perfect():
    assert boundary_error(boxes_scene(), boxes_scene()) == (0.0, 0.0)


def test_shifted_edge_distances():
    # GT edge columns {19, 20}; pred shifted by 3 -> {22, 23}: pred->GT distances (2, 3), GT->pred (3, 2).
    assert boundary_error(step(23), step(20)) == pytest.approx((2.5, 2.5))
    # Shifted by 15: no predicted edge is within 10 px of GT (acc = 10), compl is untruncated.
    assert boundary_error(step(35), step(20)) == pytest.approx((MAX_EDGE_DISTANCE, 14.5))


def test_batch_is_averaged_per_image():
    acc, compl = boundary_error(np.stack([step(20), step(23)]), np.stack([step(20), step(20)]))
    assert (acc, compl) == pytest.approx((1.25, 1.25))


def test_blur_is_worse_the_more_it_blurs():
    gt = boxes_scene()
    mild = boundary_error(gaussian_filter(gt, 1.0), gt)
    strong = boundary_error(gaussian_filter(gt, 3.0), gt)
    assert 0 < mild[0] < strong[0]
    assert 0 < mild[1] < strong[1]


def test_blurred_synthetic_scene_scores_worse_than_sharp():
    gt = render_scene(3, 128, 96).depth
    assert boundary_error(gt, gt) == (0.0, 0.0)
    acc, compl = boundary_error(gaussian_filter(gt, 2.0), gt)
    assert acc > 0.3 and compl > 0.3


def test_inverse_depth_catches_near_steps_that_depth_range_hides():
    d = np.full((48, 64), 20.0)
    d[:, :32] = 1.0
    d[:, 16:32] = 1.2  # 0.2 m step at 1 m: 1 % of the depth range, 17 % of the inverse-depth range
    plain = canny((d - d.min()) / (d.max() - d.min()), sigma=math.sqrt(2), low_threshold=0.1, high_threshold=0.2)
    assert not plain[:, 13:19].any()
    assert depth_edges(d)[1:-1, 13:19].any(1).all()


def test_prediction_without_edges_gets_the_worst_finite_score():
    gt = step(20)
    assert boundary_error(np.full_like(gt, 3.0), gt) == (MAX_EDGE_DISTANCE, pytest.approx(math.hypot(48, 64)))


def test_gt_without_edges_raises():
    with pytest.raises(ValueError, match="image 0: gt has no depth edges"):
        boundary_error(step(20), np.full((48, 64), 3.0))


@pytest.mark.parametrize("which", ["pred", "gt"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, 0.0])
def test_non_dense_depth_raises_naming_image_and_input(which, bad):
    good = np.stack([step(20), step(20)])
    broken = good.copy()
    broken[1, 5, 5] = bad
    args = (broken, good) if which == "pred" else (good, broken)
    with pytest.raises(ValueError, match=f"image 1 {which}: depth has 1 non-finite or non-positive"):
        boundary_error(*args)


def test_torch_input_matches_numpy():
    expected = boundary_error(step(23), step(20))
    assert boundary_error(torch.from_numpy(step(23))[None, None], torch.from_numpy(step(20))[None, None]) == expected


@FAST
@given(
    x0=st.integers(4, 30), y0=st.integers(4, 20), w=st.integers(6, 25), h=st.integers(6, 20),
    near=st.floats(0.5, 3.0), far=st.floats(4.0, 50.0), k=st.integers(-4, 4), shift=st.integers(-3, 3),
)
def test_dbe_ignores_depth_units(x0, y0, w, h, near, far, k, shift):
    gt = np.full((40, 64), far)
    gt[y0 : y0 + h, x0 : x0 + w] = near
    pred = np.roll(gt, shift, axis=1)
    # edges come from min-max-normalised (inverse) depth: a power-of-two scale changes no bit of it
    assert boundary_error(2.0**k * pred, gt) == boundary_error(pred, 2.0**-k * gt) == boundary_error(pred, gt)


def test_depth_scores_clamp_to_a_centimetre_then_score_both_ways():
    """An evaluation row: predictions below 1 cm (a fitted affine output can dip below zero) are scored
    as 1 cm, by the same AbsRel/δ1/RMSE and DBE as the separate functions."""
    gt = np.full((2, 32, 32), 2.0)
    gt[:, :, 16:] = 4.0
    preds = [gt[0] * 1.1, gt[1].copy()]
    preds[1][0, 0] = -3.0
    row = depth_scores(preds, gt)
    clamped = np.stack([preds[0], np.where(preds[1] < 0.01, 0.01, preds[1])])
    m = depth_metrics(clamped, gt)
    acc, compl = boundary_error(clamped, gt)
    assert row == {"abs_rel": m["abs_rel"], "delta1": m["delta1"], "rmse": m["rmse"], "dbe_acc": acc, "dbe_compl": compl}
    assert row["abs_rel"] == pytest.approx((0.1 + (2.0 - 0.01) / 2.0 / (32 * 32)) / 2)


# --- sparsification, flying points, phantom voxels -------------------------------------------
def test_sparsification_ranks_oracle_model_and_random():
    rng = np.random.default_rng(0)
    gt = rng.uniform(1, 5, (2, 20, 30))
    pred = gt * (1 + rng.uniform(-0.3, 0.3, gt.shape))
    err = np.abs(pred - gt) / gt
    perfect = sparsification(pred, gt, -err)  # trusts exactly the small errors: the oracle itself
    assert perfect["ause"] == pytest.approx(0, abs=1e-12) and perfect["aurg"] > 0.05
    assert perfect["model"][0] == pytest.approx(err.mean(axis=(1, 2)).mean())  # nothing removed: AbsRel of all
    assert np.all(np.diff(perfect["oracle"]) <= 1e-12)
    constant = sparsification(pred, gt, np.ones_like(gt))  # no information: a random order
    assert abs(constant["aurg"]) < 0.01 < constant["ause"]
    inverted = sparsification(pred, gt, err)  # trusts the worst first
    assert inverted["aurg"] < -0.05
    noisy = sparsification(pred, gt, -err + rng.normal(0, 0.1, gt.shape))
    assert 0 < noisy["ause"] < constant["ause"] and 0 < noisy["aurg"] < perfect["aurg"]


def angular_blur(depth: np.ndarray, K: np.ndarray, degrees: float) -> np.ndarray:
    return gaussian_filter(depth, degrees * math.pi / 180 * K[0, 0]) if degrees else depth


@pytest.mark.parametrize("scale", [1, 2])
def test_flying_points_none_on_gt_and_more_with_blur_at_any_resolution(scale):
    K = np.array([[96.0 * scale, 0, 64 * scale - 0.5], [0, 96.0 * scale, 48 * scale - 0.5], [0, 0, 1]])
    rates = []
    for seed in range(3):
        gt = render_scene(seed, 128 * scale, 96 * scale, K=K).depth.astype(np.float64)
        assert not flying_points(gt, gt, K).any()
        rates.append([flying_points(angular_blur(gt, K, deg), gt, K).mean() for deg in (0, 0.5, 1, 2)])
    rates = np.mean(rates, axis=0)
    assert rates[0] == 0 and np.all(np.diff(rates) > 0) and rates[-1] > 0.01
    # the same angular blur flies about as many pixels at twice the resolution (window and blur are angles)
    if scale == 2:
        K1 = np.array([[96.0, 0, 63.5], [0, 96.0, 47.5], [0, 0, 1]])
        coarse = np.mean([flying_points(angular_blur(render_scene(s, 128, 96, K=K1).depth.astype(np.float64), K1, 1), render_scene(s, 128, 96, K=K1).depth, K1).mean()
                          for s in range(3)])
        assert rates[2] == pytest.approx(coarse, rel=0.3)


def test_flying_points_by_hand():
    gt = np.full((9, 9), 4.0)
    gt[:, :4] = 2.0  # a 2 m object before a 4 m wall
    K = np.array([[38.0, 0, 4], [0, 38.0, 4], [0, 0, 1]])  # 1.5° at f = 38 is one pixel
    assert window_radius(K) == 1
    pred = gt.copy()
    pred[4, 3], pred[4, 4], pred[4, 6] = 3.0, 2.05, 3.0  # in the gap; 5 cm from the near side; no gap around it
    fly = flying_points(pred, gt, K)
    assert fly[4, 3] and not fly[4, 4] and not fly[4, 6] and fly.sum() == 1


def test_phantom_voxels_count_points_off_the_true_surface():
    K = np.array([[50.0, 0, 15.5], [0, 50.0, 11.5], [0, 0, 1]])
    camera_to_world = np.eye(4)
    camera_to_world[:3, :3] = [[1, 0, 0], [0, 0, 1], [0, -1, 0]]  # optical z forward = world y, image down = world -z
    camera_to_world[2, 3] = 0.8  # 80 cm above the floor
    wall = np.full((24, 32), 3.0)
    truth = world_points(wall, K, camera_to_world)
    phantom, on_surface = phantom_voxels(wall, K, camera_to_world, truth)
    assert len(phantom) == 0 and len(on_surface) > 10
    near = wall.copy()
    near[10:14, 10:14] = 2.0  # a patch a metre in front of the wall: free space
    phantom, _ = phantom_voxels(near, K, camera_to_world, truth)
    assert len(phantom) >= 1 and np.allclose(np.sort(np.unique(phantom >> 21 & ((1 << 21) - 1))) - (1 << 20), 40)  # y = 2 m / 5 cm
    within_a_voxel = wall + 0.04
    assert len(phantom_voxels(within_a_voxel, K, camera_to_world, truth)[0]) == 0
    assert len(phantom_voxels(np.full((24, 32), 9.0), K, camera_to_world, truth)[1]) == 0  # beyond 5 m: not in the band
