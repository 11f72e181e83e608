"""Evaluation metrics: metric-depth accuracy and the pseudo depth-boundary error (sharpness).

Both are computed per image and then averaged over the batch, as the paper's tables are. Inputs are
numpy arrays or torch tensors shaped [H, W], [B, H, W] or [B, 1, H, W]; everything is evaluated in
float64 numpy. Bad input raises a ValueError naming the image: a NaN in a metric table is a bug
report nobody can act on.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt
from skimage.feature import canny

# Pseudo-DBE constants, as docs/METHOD.md (after iBims-1) defines them.
EDGE_SIGMA = math.sqrt(2.0)
EDGE_LOW, EDGE_HIGH = 0.1, 0.2
MAX_EDGE_DISTANCE = 10.0  # px: predicted edges farther than this from any GT edge count as misses
COVISIBLE_TOL = 0.02  # a reprojected ground-truth point within 2 % of the other frame's ground truth is seen by both

Depth = np.ndarray | torch.Tensor  # [H, W], [B, H, W] or [B, 1, H, W]


def _as_batch(x: Depth, name: str) -> np.ndarray:
    """numpy/torch [H, W] | [B, H, W] | [B, 1, H, W] -> float64 numpy [B, H, W]."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    elif a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"{name} must be [H, W], [B, H, W] or [B, 1, H, W], got shape {np.shape(x)}")
    return a


def _pair(pred: Depth, gt: Depth) -> tuple[np.ndarray, np.ndarray]:
    p, g = _as_batch(pred, "pred"), _as_batch(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} differ in shape")
    return p, g


def _positive(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.isfinite(x) & (x > 0)


def depth_metrics(pred: Depth, gt: Depth, valid: Depth | None = None) -> dict[str, float]:
    """AbsRel, SqRel, RMSE, log-RMSE, SILog and δ1..δ3 of metric depth, per image then averaged.

    valid: the pixels to score (same shape as gt, bool); default: finite gt > 0 (missing GT is
    usually stored as 0, NaN or inf). The prediction must be finite and > 0 on every scored pixel,
    otherwise a ValueError says which image: silently dropping such pixels would reward a model for
    failing on them. An image with no scored pixel also raises.

    Definitions on the scored pixels of one image (p = pred, g = gt, d = log p - log g):
    abs_rel = mean(|p-g|/g), sq_rel = mean((p-g)²/g), rmse = sqrt(mean((p-g)²)),
    log_rmse = sqrt(mean(d²)), silog = 100·sqrt(mean(d²) - mean(d)²) = 100·std(d) (the KITTI depth
    benchmark's scale-invariant log error with λ = 1, so it ignores a global scale of pred),
    delta_k = fraction with max(p/g, g/p) < 1.25^k.
    """
    p, g = _pair(pred, gt)
    mask = _positive(g) if valid is None else _as_batch(valid, "valid").astype(bool)
    if mask.shape != g.shape:
        raise ValueError(f"valid {mask.shape} and gt {g.shape} differ in shape")
    per_image = []
    for i in range(len(g)):
        m = mask[i]
        if not m.any():
            raise ValueError(f"image {i} has no valid pixel to score")
        pi, gi = p[i][m], g[i][m]
        if not _positive(gi).all():
            raise ValueError(f"image {i}: {int((~_positive(gi)).sum())} valid pixels have non-finite or non-positive gt")
        if not _positive(pi).all():
            raise ValueError(f"image {i}: {int((~_positive(pi)).sum())} valid pixels have non-finite or non-positive pred")
        per_image.append(_image_metrics(pi, gi))
    return {k: float(np.mean([m[k] for m in per_image])) for k in per_image[0]}


def _image_metrics(p: np.ndarray, g: np.ndarray) -> dict[str, float]:
    err = p - g
    d = np.log(p) - np.log(g)
    ratio = np.maximum(p / g, g / p)
    return {
        "abs_rel": float(np.mean(np.abs(err) / g)),
        "sq_rel": float(np.mean(err * err / g)),
        "rmse": float(np.sqrt(np.mean(err * err))),
        "log_rmse": float(np.sqrt(np.mean(d * d))),
        "silog": float(100.0 * np.std(d)),  # = sqrt(mean(d²) - mean(d)²), without the cancellation
        "delta1": float(np.mean(ratio < 1.25)),
        "delta2": float(np.mean(ratio < 1.25**2)),
        "delta3": float(np.mean(ratio < 1.25**3)),
    }


def _min_max(x: np.ndarray) -> np.ndarray:
    lo, hi = x.min(), x.max()
    return np.zeros_like(x) if hi - lo <= 0 else (x - lo) / (hi - lo)


def _canny01(x: np.ndarray) -> np.ndarray:
    return canny(_min_max(x), sigma=EDGE_SIGMA, low_threshold=EDGE_LOW, high_threshold=EDGE_HIGH)


def depth_edges(depth: Depth) -> np.ndarray:
    """Depth-discontinuity map of one dense depth image [H, W] -> bool [H, W].

    Canny (σ = √2) on min-max-normalised depth OR on min-max-normalised inverse depth, so that both
    far and near discontinuities register. skimage applies float thresholds as absolute values of
    the Sobel gradient magnitude of the smoothed image, so 0.1 / 0.2 act on the [0, 1] range; a
    sharp step must span about 10 % of that range to be an edge. Constant depth has no edges.
    """
    d = _as_batch(depth, "depth")
    if len(d) != 1:
        raise ValueError(f"depth_edges takes one image, got a batch of {len(d)}")
    d = d[0]
    bad = int((~_positive(d)).sum())
    if bad:
        raise ValueError(f"depth has {bad} non-finite or non-positive pixels; edges need dense positive depth")
    return _canny01(d) | _canny01(1.0 / d)


def _edges_of(depth: np.ndarray, name: str, i: int) -> np.ndarray:
    try:
        return depth_edges(depth)
    except ValueError as err:
        raise ValueError(f"image {i} {name}: {err}") from None


def boundary_error(pred: Depth, gt: Depth) -> tuple[float, float]:
    """Pseudo depth-boundary error (acc, compl) in pixels, lower is sharper; per image then averaged.

    Edges of pred and gt by `depth_edges`. acc = mean distance from predicted edge pixels to the
    nearest GT edge, over those closer than 10 px (10 when none is). compl = mean distance from GT edge
    pixels to the nearest predicted edge, untruncated. Both depths must be dense, finite and > 0.

    Degenerate images: a gt without edges has nothing to be sharp about, so it raises ValueError
    naming the image (drop it from the evaluation set). A pred without edges scores acc = 10 (no
    predicted edge near a GT edge, the rule above) and compl = the image diagonal, the largest
    distance any pixel can be from anything in the image: finite, and worse than any real output.
    """
    p, g = _pair(pred, gt)
    accs, compls = [], []
    for i in range(len(g)):
        e_gt, e_pred = _edges_of(g[i], "gt", i), _edges_of(p[i], "pred", i)
        if not e_gt.any():
            raise ValueError(f"image {i}: gt has no depth edges; the boundary error is undefined there")
        if not e_pred.any():
            accs.append(MAX_EDGE_DISTANCE)
            compls.append(math.hypot(*e_gt.shape))
            continue
        to_gt = distance_transform_edt(~e_gt)[e_pred]
        near = to_gt[to_gt < MAX_EDGE_DISTANCE]
        accs.append(float(near.mean()) if near.size else MAX_EDGE_DISTANCE)
        compls.append(float(distance_transform_edt(~e_pred)[e_gt].mean()))
    return float(np.mean(accs)), float(np.mean(compls))


def depth_scores(preds: list[np.ndarray], gt: Depth, min_depth: float = 0.01) -> dict[str, float]:
    """AbsRel, δ1, RMSE and DBE (acc, compl) of HxW predictions, clipped below at `min_depth` metres
    first (both metrics score a dense, positive map): one row of an evaluation table."""
    p = np.clip(np.stack(preds), min_depth, None)
    m = depth_metrics(p, gt)
    acc, compl = boundary_error(p, gt)
    return {"abs_rel": m["abs_rel"], "delta1": m["delta1"], "rmse": m["rmse"], "dbe_acc": acc, "dbe_compl": compl}


def _warped(depth_src: np.ndarray, depth_dst: np.ndarray, gt_src: np.ndarray | None, gt_dst: np.ndarray | None,
            K: np.ndarray, dst_from_src: np.ndarray, covisible_tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z, there, ray): per source pixel, its predicted depth reprojected into the destination camera,
    the destination's prediction sampled where it lands (bilinear), and the length of that pixel's
    ray at unit depth; z and there are NaN where the pixel is not scored (see `reprojection_error`)."""
    from scipy.ndimage import map_coordinates

    from .geometry import reproject

    def sample(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
        coords = [uv[..., 1].ravel(), uv[..., 0].ravel()]
        inside = np.isfinite(coords[0]) & np.isfinite(coords[1])
        out = np.full(coords[0].shape, np.nan)
        out[inside] = map_coordinates(np.asarray(image, dtype=np.float64), [c[inside] for c in coords],
                                      order=1, mode="constant", cval=np.nan, prefilter=False)
        return out.reshape(uv.shape[:-1])

    with np.errstate(invalid="ignore", divide="ignore"):
        covisible = True  # without ground truth: every pixel that lands in the destination image
        if gt_src is not None:
            uv_gt, z_gt = reproject(gt_src, K, K, dst_from_src)
            gt_there = sample(gt_dst, uv_gt)
            covisible = (z_gt > 0) & (np.abs(z_gt - gt_there) <= covisible_tol * gt_there)
        uv, z = reproject(depth_src, K, K, dst_from_src)
        there = sample(depth_dst, uv)
        scored = covisible & (z > 0) & (there > 0) & np.isfinite(z) & np.isfinite(there)
        ray = np.hypot(np.hypot((uv[..., 0] - K[0, 2]) / K[0, 0], (uv[..., 1] - K[1, 2]) / K[1, 1]), 1.0)
        return np.where(scored, z, np.nan), np.where(scored, there, np.nan), ray


def reprojection_error(depth_src: np.ndarray, depth_dst: np.ndarray, gt_src: np.ndarray | None, gt_dst: np.ndarray | None,
                       K: np.ndarray, dst_from_src: np.ndarray, covisible_tol: float = COVISIBLE_TOL) -> np.ndarray:
    """Per source pixel, |z - d_dst(q)| / d_dst(q): a prediction of frame t reprojected into frame t+1
    (depth z at pixel q) against frame t+1's prediction sampled there (bilinear). NaN where a pixel is
    not scored: invalid in either prediction, outside the destination image, or not co-visible — the
    ground truth decides that, so occlusions are left out the same way for every model (its own
    reprojection must agree with the destination's ground truth within `covisible_tol`). Without
    ground truth (gt_src = gt_dst = None: a user's video) nothing can tell an occlusion from an error,
    so every pixel landing in the destination is scored: the error then includes occlusions, and
    compares models on the same frames only, not with ground-truth-scored figures."""
    z, there, _ = _warped(depth_src, depth_dst, gt_src, gt_dst, K, dst_from_src, covisible_tol)
    return np.abs(z - there) / there


def _pairs(depths: list, gts: list | None, poses: list, what: str):
    """(a, b, gt_a, gt_b, T_b_a) for every consecutive pair of frames, both directions (gts None: no
    ground truth, gt_a = gt_b = None)."""
    from .geometry import relative_pose

    n_gts = len(depths) if gts is None else len(gts)
    if len(depths) < 2 or not len(depths) == n_gts == len(poses):
        raise ValueError(f"{what} needs two or more frames with as many ground truths and poses, got {len(depths)}, {n_gts}, {len(poses)}")
    for t in range(len(depths) - 1):
        for a, b in ((t, t + 1), (t + 1, t)):
            yield a, b, *((None, None) if gts is None else (gts[a], gts[b])), relative_pose(poses[a], poses[b])


def temporal_alignment_error(depths: list[np.ndarray], gts: list[np.ndarray] | None, K: np.ndarray,
                             poses: list[np.ndarray]) -> float:
    """TAE (Video Depth Anything's flicker measure): the AbsRel between frame t's depth reprojected into
    frame t+1 with the ground-truth poses (camera-to-world, optical frame) and frame t+1's depth, on
    valid co-visible pixels, averaged over both directions and every consecutive pair. Lower is
    steadier; ground truth gives the warp's own error (about 0). gts None: no ground truth, occlusions
    scored too (`reprojection_error`)."""
    pairs = []
    for a, b, gt_a, gt_b, T in _pairs(depths, gts, poses, "TAE"):
        e = reprojection_error(depths[a], depths[b], gt_a, gt_b, K, T)
        if np.isfinite(e).any():
            pairs.append(float(np.nanmean(e)))
    if not pairs:
        raise ValueError("TAE: no co-visible valid pixels in any pair of frames")
    return float(np.mean(pairs))


def static_point_flicker(depths: list[np.ndarray], gts: list[np.ndarray] | None, K: np.ndarray, poses: list[np.ndarray]) -> float:
    """How far a static surface point of the cloud jumps from frame to frame, in metres: the RMS, over
    co-visible valid pixels of every consecutive pair (both directions), of the standard deviation of
    its two positions (|p_t - p_t+1| / √2; the two points lie on one ray of frame t+1, so
    |p_t - p_t+1| = |z - d_t+1(q)| · |K⁻¹ q|). What a voxel map sees; the scene must not move. gts
    None: occlusions are scored too, and dominate the RMS (`reprojection_error`)."""
    sq, n = 0.0, 0
    for a, b, gt_a, gt_b, T in _pairs(depths, gts, poses, "flicker"):
        z, there, ray = _warped(depths[a], depths[b], gt_a, gt_b, K, T, COVISIBLE_TOL)
        jump = (z - there) * ray / math.sqrt(2.0)
        ok = np.isfinite(jump)
        sq, n = sq + float(np.sum(jump[ok] ** 2)), n + int(ok.sum())
    if not n:
        raise ValueError("flicker: no co-visible valid pixels in any pair of frames")
    return math.sqrt(sq / n)


# --- confidence: sparsification ------------------------------------------------------------------
SPARSIFICATION_STEPS = np.linspace(0.0, 0.98, 50)  # fractions of an image's pixels removed


def _abs_rel_left(err: np.ndarray, order: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """AbsRel of what is left after dropping the first `removed` fraction of `order` (least trusted first)."""
    left = np.cumsum(err[order][::-1])[::-1]  # sum of the errors from position k to the end
    n = len(err)
    start = np.minimum((removed * n).astype(int), n - 1)
    return left[start] / (n - start)


def sparsification(pred: Depth, gt: Depth, confidence: Depth, steps: np.ndarray = SPARSIFICATION_STEPS,
                   min_depth: float = 0.01) -> dict[str, np.ndarray | float]:
    """Sparsification curves of a per-pixel confidence (higher = more trusted), per image then averaged.

    For each fraction f in `steps`, the pixels of an image are dropped least confident first and the
    AbsRel of the rest is taken ("model"); "oracle" drops them by their true AbsRel error (the best any
    ranking can do), "random" is the expected curve of a random order (flat: the AbsRel of all pixels).
    AUSE = area between model and oracle (0 is a perfect ranking); AURG = area between random and model
    (> 0: the confidence is better than none). Both by the trapezoid rule over `steps`, in AbsRel units.
    pred is clipped below at `min_depth` (as `depth_scores`); ties in confidence are broken at random
    (seeded), so a constant confidence scores as random."""
    p, g = _pair(pred, gt)
    c = _as_batch(confidence, "confidence")
    if c.shape != g.shape:
        raise ValueError(f"confidence {c.shape} and gt {g.shape} differ in shape")
    rng = np.random.default_rng(0)
    curves = {"model": [], "oracle": [], "random": []}
    for i in range(len(g)):
        m = _positive(g[i]) & np.isfinite(c[i])
        if not m.any():
            raise ValueError(f"image {i} has no pixel with valid gt and finite confidence")
        err = np.abs(np.clip(p[i][m], min_depth, None) - g[i][m]) / g[i][m]
        ties = rng.random(err.size)
        curves["model"].append(_abs_rel_left(err, np.lexsort((ties, c[i][m])), steps))
        curves["oracle"].append(_abs_rel_left(err, np.argsort(-err, kind="stable"), steps))
        curves["random"].append(np.full(len(steps), err.mean()))
    mean = {k: np.mean(v, axis=0) for k, v in curves.items()}
    return {**mean, "steps": steps, "ause": float(np.trapezoid(mean["model"] - mean["oracle"], steps)),
            "aurg": float(np.trapezoid(mean["random"] - mean["model"], steps))}


# --- the robot's measures: flying points and phantom voxels --------------------------------------
FLYING_WINDOW_DEG = 1.5  # half-width of the neighbourhood, as an angle: 3 px on the embedded camera (7x7)
FLYING_TOL_M = 0.10  # a point closer than this to a true depth of its neighbourhood lies on that surface


def window_radius(K: np.ndarray, half_angle_deg: float = FLYING_WINDOW_DEG) -> int:
    """Pixels spanning `half_angle_deg` at the principal point: the same piece of the scene at any resolution."""
    return max(1, round(float(K[0, 0]) * math.tan(math.radians(half_angle_deg))))


def flying_points(pred: np.ndarray, gt: np.ndarray, K: np.ndarray, tol: float = FLYING_TOL_M,
                  half_angle_deg: float = FLYING_WINDOW_DEG) -> np.ndarray:
    """bool [H, W]: pixels whose predicted depth hangs in free space at a true depth discontinuity.

    A pixel flies when its prediction lies strictly inside the range of the true depths in its
    neighbourhood (a square of `half_angle_deg` either side, `window_radius`) and more than `tol` metres
    from every one of them: between the near and the far surface, on neither. The ground truth itself
    never flies (its own true depth is in the neighbourhood), nor does a smooth surface predicted near
    any of its nearby depths, however steep (a floor at grazing angle); a boundary blurred over the gap
    does. The window is an angle, so the fraction of flying pixels does not depend on the resolution
    the scene is seen at. Non-finite or non-positive pred never flies (no point in the cloud)."""
    p, g = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if p.shape != g.shape or p.ndim != 2:
        raise ValueError(f"pred {p.shape} and gt {g.shape} must be one [H, W] image each")
    r = window_radius(K, half_angle_deg)
    h, w = g.shape
    padded = np.pad(np.where(_positive(g), g, np.nan), r, constant_values=np.nan)
    lo, hi, nearest = np.full(g.shape, np.inf), np.full(g.shape, -np.inf), np.full(g.shape, np.inf)
    with np.errstate(invalid="ignore"):
        for dy in range(2 * r + 1):
            for dx in range(2 * r + 1):
                q = padded[dy:dy + h, dx:dx + w]
                ok = np.isfinite(q)
                lo = np.where(ok, np.minimum(lo, q), lo)
                hi = np.where(ok, np.maximum(hi, q), hi)
                nearest = np.where(ok, np.minimum(nearest, np.abs(p - q)), nearest)
        return _positive(p) & (p > lo) & (p < hi) & (nearest > tol)


VOXEL_M = 0.05
ROBOT_RANGE_M = (0.3, 5.0)  # distance from the camera a costmap takes points from
ROBOT_HEIGHT_M = (0.05, 1.5)  # height above the floor: above the floor's own points, up to a robot's top


def voxel_keys(points: np.ndarray, voxel: float = VOXEL_M) -> np.ndarray:
    """Unique int64 keys of the voxels occupied by points [N, 3] (metres, |coordinate| < 50 km)."""
    idx = np.floor(points / voxel).astype(np.int64) + (1 << 20)
    return np.unique((idx[:, 0] << 42) | (idx[:, 1] << 21) | idx[:, 2])


def _dilated(keys: np.ndarray) -> np.ndarray:
    """The keys of every voxel within one voxel (26-neighbourhood) of `keys`."""
    offsets = [(a << 42) + (b << 21) + c for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)]
    return np.unique((keys[:, None] + np.array(offsets, np.int64)[None]).ravel())


def world_points(depth: np.ndarray, K: np.ndarray, camera_to_world: np.ndarray) -> np.ndarray:
    """[N, 3] world points (floor z = 0) of the valid pixels of one depth image."""
    from .geometry import unproject

    xyz = unproject(np.asarray(depth, np.float64), K).reshape(-1, 3)
    xyz = xyz[np.isfinite(xyz).all(1)]
    return xyz @ camera_to_world[:3, :3].T + camera_to_world[:3, 3]


def phantom_voxels(pred: np.ndarray, K: np.ndarray, camera_to_world: np.ndarray, true_points: np.ndarray,
                   voxel: float = VOXEL_M, ranges: tuple[float, float] = ROBOT_RANGE_M,
                   heights: tuple[float, float] = ROBOT_HEIGHT_M) -> tuple[np.ndarray, np.ndarray]:
    """(phantom, on-surface) voxel keys of a predicted cloud, as a costmap's voxel layer would mark them.

    The cloud's points in the robot's band (`ranges` from the camera centre, `heights` above the floor)
    occupy voxels; a voxel is a phantom when no voxel of the true surface (`true_points` [N, 3], world,
    dense: rendered finer than the camera so that the truth has no gaps between its samples) lies
    within one voxel of it. Phantoms include metric scale error, not only boundary smear."""
    pts = world_points(pred, K, camera_to_world)
    dist = np.linalg.norm(pts - camera_to_world[:3, 3], axis=1)
    band = (dist >= ranges[0]) & (dist <= ranges[1]) & (pts[:, 2] >= heights[0]) & (pts[:, 2] <= heights[1])
    occupied = voxel_keys(pts[band], voxel)
    near_truth = np.isin(occupied, _dilated(voxel_keys(true_points, voxel)))
    return occupied[~near_truth], occupied[near_truth]
