"""Temporal alignment error (TAE) and the reprojection it rests on, on an analytic scene: a tilted
plane seen by a camera that moves and turns, whose depth is exact for every pose."""
from __future__ import annotations

import numpy as np
import pytest

from sharpdepth_core.geometry import relative_pose, reproject, unproject
from sharpdepth_core.metrics import reprojection_error, static_point_flicker, temporal_alignment_error

H, W = 48, 64
K = np.array([[50.0, 0, 31.5], [0, 50.0, 23.5], [0, 0, 1]])


def pose(yaw: float, x: float) -> np.ndarray:
    """Camera-to-world: optical frame turned by `yaw` about its y axis, moved by x along world x."""
    c, s = np.cos(yaw), np.sin(yaw)
    T = np.eye(4)
    T[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    T[0, 3] = x
    return T


def plane_depth(T: np.ndarray, n=(0.3, -0.2, 1.0), d=3.0) -> np.ndarray:
    """Exact depth of the plane n·X = d (world) for every pixel of the camera at pose T."""
    n = np.asarray(n) / np.linalg.norm(n)
    v, u = np.mgrid[0:H, 0:W]
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones((H, W))], -1)  # z = 1
    return (d - n @ T[:3, 3]) / (rays @ T[:3, :3].T @ n)


def sequence(frames: int = 4):
    poses = [pose(0.03 * t, 0.05 * t) for t in range(frames)]
    return poses, [plane_depth(T) for T in poses]


def test_reprojected_ground_truth_lands_on_the_next_frames_ground_truth():
    (p0, p1), (d0, _) = sequence(2)
    uv, z = reproject(d0, K, K, relative_pose(p0, p1))
    inside = (uv[..., 0] >= 0) & (uv[..., 0] <= W - 1) & (uv[..., 1] >= 0) & (uv[..., 1] <= H - 1)
    assert inside.mean() > 0.7
    u, v = uv[inside].T  # the plane's exact depth at each landing pixel
    n = np.array([0.3, -0.2, 1.0]) / np.linalg.norm([0.3, -0.2, 1.0])
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    exact = (3.0 - n @ p1[:3, 3]) / (rays @ p1[:3, :3].T @ n)
    np.testing.assert_allclose(z[inside], exact, rtol=1e-9)


def test_tae_is_about_zero_on_ground_truth_and_grows_with_flicker():
    poses, gts = sequence()
    assert temporal_alignment_error(gts, gts, K, poses) < 1e-3  # the bilinear warp's own error
    rng = np.random.default_rng(0)
    small = [g * (1 + 0.01 * rng.standard_normal(g.shape)) for g in gts]
    large = [g * (1 + 0.05 * rng.standard_normal(g.shape)) for g in gts]
    tae_small, tae_large = (temporal_alignment_error(d, gts, K, poses) for d in (small, large))
    assert 0.005 < tae_small < tae_large and tae_large > 3 * tae_small
    # a per-frame scale flicker is what TAE exists for: each frame alone is only 3 % off
    flicker = [g * (1.03 if t % 2 else 0.97) for t, g in enumerate(gts)]
    assert temporal_alignment_error(flicker, gts, K, poses) == pytest.approx(0.06 / 0.97 / 2 + 0.06 / 1.03 / 2, rel=0.02)


def test_static_point_flicker_is_the_jump_of_a_surface_point_in_metres():
    poses, gts = sequence()
    assert static_point_flicker(gts, gts, K, poses) < 1e-3  # metres: the warp's own error
    flicker = [g * (1.03 if t % 2 else 0.97) for t, g in enumerate(gts)]
    # every point moves along its ray by 6 % of its distance from the camera, between two frames
    distance = np.sqrt(np.mean([np.sum(unproject(g, K) ** 2, axis=-1).mean() for g in gts]))
    assert static_point_flicker(flicker, gts, K, poses) == pytest.approx(0.06 / np.sqrt(2) * distance, rel=0.05)
    noisy = [g + 0.05 * np.random.default_rng(t).standard_normal(g.shape) for t, g in enumerate(gts)]
    assert 0.03 < static_point_flicker(noisy, gts, K, poses) < 0.08  # 5 cm of noise per frame, along z mostly


def test_occluded_and_invalid_pixels_are_not_scored():
    (p0, p1), (d0, d1) = sequence(2)
    gt1 = d1.copy()
    gt1[:, :20] = 1.0  # an object in front in frame 1 only: those pixels are not co-visible
    pred0 = d0.copy()
    pred0[0, 0] = np.nan
    e = reprojection_error(pred0, d1, d0, gt1, K, relative_pose(p0, p1))
    assert np.isnan(e[0, 0]) and np.isfinite(e).sum() > 0.3 * e.size
    uv, _ = reproject(d0, K, K, relative_pose(p0, p1))
    assert np.isnan(e[np.nan_to_num(uv[..., 0], nan=-1) < 19]).all()
    assert np.nanmax(e) < 1e-3  # frame 1's prediction is the plane there: what is scored is right


def test_too_few_frames_is_a_clear_error():
    poses, gts = sequence(2)
    with pytest.raises(ValueError, match="two or more frames"):
        temporal_alignment_error(gts[:1], gts[:1], K, poses[:1])
    with pytest.raises(ValueError, match="two or more frames"):
        static_point_flicker(gts, gts[:1], K, poses)


def test_without_ground_truth_every_pixel_that_lands_is_scored_occlusions_included():
    """A user's video has no ground truth: the predictions alone, with the poses, give the TAE; with
    nothing to tell an occlusion from an error, the occluder's pixels count (and raise it)."""
    poses, gts = sequence()
    flicker = [g * (1.03 if t % 2 else 0.97) for t, g in enumerate(gts)]
    assert temporal_alignment_error(flicker, None, K, poses) == pytest.approx(temporal_alignment_error(flicker, gts, K, poses), rel=1e-5)
    assert temporal_alignment_error(gts, None, K, poses) < 1e-3 and static_point_flicker(gts, None, K, poses) < 1e-3
    (p0, p1), (d0, d1) = sequence(2)
    occluded = d1.copy()
    occluded[:, :20] = 1.0  # an object in front in frame 1 only
    with_gt = reprojection_error(d0, occluded, d0, occluded, K, relative_pose(p0, p1))
    without = reprojection_error(d0, occluded, None, None, K, relative_pose(p0, p1))
    assert np.isfinite(without).sum() > np.isfinite(with_gt).sum()
    assert np.nanmax(with_gt) < 1e-3 and np.nanmax(without) > 1.0  # the occluder is 3x nearer than the plane
    with pytest.raises(ValueError, match="two or more frames"):
        temporal_alignment_error(gts[:1], None, K, poses[:1])


# --- the temporal mode (issue 29): sharpdepth_core.temporal -------------------------------------------

import torch  # noqa: E402

from sharpdepth_core.geometry import warp_depth  # noqa: E402
from sharpdepth_core.synthetic import render_sequence  # noqa: E402
from sharpdepth_core.temporal import TemporalCameras, TemporalDepth, align_images, _gray  # noqa: E402


def test_warp_depth_moves_a_depth_map_into_another_camera_exactly():
    (p0, p1), (d0, d1) = sequence(2)
    z, _, seen = warp_depth(torch.tensor(d0), torch.tensor(K), torch.tensor(d1), torch.tensor(K),
                            torch.tensor(relative_pose(p1, p0)))
    assert seen.float().mean() > 0.7
    np.testing.assert_allclose(z[seen].numpy(), d1[seen.numpy()], rtol=1e-4)


@pytest.fixture(scope="module")
def walk():
    return render_sequence(110000, 8)


def flickering(frames, seed: int = 0) -> list[np.ndarray]:
    """A per-frame result that flickers: the true depth times a frame-wide scale (±5 %) and pixel noise (2 %)."""
    rng = np.random.default_rng(seed)
    return [(f.depth * (1 + 0.05 * rng.standard_normal()) * (1 + 0.02 * rng.standard_normal(f.depth.shape))).astype(np.float32)
            for f in frames]


def run(mode, frames, depths, poses=None, state=None):
    state = state or TemporalDepth(mode)
    return [state.update(torch.from_numpy(d), f.K, image=f.rgb, pose=None if poses is None else poses[t])
            for t, (f, d) in enumerate(zip(frames, depths))]


def test_align_images_recovers_the_cameras_motion(walk):
    a, b = walk[2], walk[3]
    true = relative_pose(a.camera_to_world, b.camera_to_world)  # cur_from_prev
    T, matched = align_images(_gray(a.rgb, 64), _gray(b.rgb, 64), a.depth, a.K, np.eye(4))
    assert matched > 0.8
    assert np.linalg.norm(T[:3, 3] - true[:3, 3]) < 0.3 * np.linalg.norm(true[:3, 3])
    assert np.degrees(np.arccos(np.clip((np.trace(T[:3, :3].T @ true[:3, :3]) - 1) / 2, -1, 1))) < 0.5


@pytest.fixture(scope="module")
def steady_walk():
    """The first 8 frames of a 30-frame walk: it turns at most a few degrees a frame (`walk`, 8 frames
    for the same path, spins at up to 20°)."""
    return render_sequence(110000, 30)[:8]


@pytest.mark.parametrize("mode", ["image", "odometry"])
def test_the_mode_is_causal_and_steadier_than_its_input(steady_walk, mode):
    walk = steady_walk
    depths, poses = flickering(walk), [f.camera_to_world for f in walk]
    out = run(mode, walk, depths, poses)
    changed = list(depths)
    changed[-1] = changed[-1] * 1.3  # a different future frame
    again = run(mode, walk, changed, poses)
    for a, b in zip(out[:-1], again[:-1]):
        assert torch.equal(a.depth, b.depth)
    assert out[0].cut and not any(r.cut for r in out[1:])
    gts = [f.depth for f in walk]
    assert (temporal_alignment_error([r.depth.numpy() for r in out], gts, walk[0].K, poses)
            < 0.7 * temporal_alignment_error(depths, gts, walk[0].K, poses))


@pytest.mark.parametrize("mode", ["image", "odometry"])
def test_a_scene_change_falls_back_to_the_per_frame_result_at_once(walk, mode):
    other = render_sequence(110001, 8)[:4]  # a walk's first frames (a 4-frame walk would turn 30° a frame)
    frames = list(walk[:4]) + list(other)
    depths = flickering(frames)
    anchor = walk[3].camera_to_world @ np.linalg.inv(other[0].camera_to_world)  # odometry: it saw no jump
    poses = [f.camera_to_world for f in walk[:4]] + [anchor @ f.camera_to_world for f in other]
    out = run(mode, frames, depths, poses)
    assert out[4].cut and torch.equal(out[4].depth, torch.from_numpy(depths[4]))
    assert not out[5].cut  # and it carries on from there


def test_a_gap_in_the_stamps_and_reset_restart_the_state(walk):
    state = TemporalDepth("image")
    depths = flickering(walk)
    for t in range(3):
        assert state.update(torch.from_numpy(depths[t]), walk[t].K, image=walk[t].rgb, stamp=0.1 * t).cut == (t == 0)
    gap = state.update(torch.from_numpy(depths[3]), walk[3].K, image=walk[3].rgb, stamp=1.5)
    assert gap.cut and "gap" in gap.reason and torch.equal(gap.depth, torch.from_numpy(depths[3]))
    state.reset()
    again = state.update(torch.from_numpy(depths[4]), walk[4].K, image=walk[4].rgb)
    assert again.cut and torch.equal(again.depth, torch.from_numpy(depths[4]))


def test_state_is_per_camera(walk):
    other = render_sequence(110001, 8)
    a, b = flickering(walk, 0), flickering(other, 1)
    cameras = TemporalCameras("image")
    mixed = {"left": [], "right": []}
    for t in range(len(walk)):  # interleaved, as the node's worker sees them
        mixed["left"].append(cameras.update("left", torch.from_numpy(a[t]), walk[t].K, image=walk[t].rgb).depth)
        mixed["right"].append(cameras.update("right", torch.from_numpy(b[t]), other[t].K, image=other[t].rgb).depth)
    for name, frames, depths in (("left", walk, a), ("right", other, b)):
        alone = run("image", frames, depths)
        assert all(torch.equal(x, y.depth) for x, y in zip(mixed[name], alone))
    cameras.reset("left")
    assert cameras.update("left", torch.from_numpy(a[0]), walk[0].K, image=walk[0].rgb).cut
    assert not cameras.update("right", torch.from_numpy(b[0]), other[0].K, image=other[0].rgb).reason.startswith("first")


def test_a_static_camera_with_fresh_noise_converges_rather_than_wanders(walk):
    f = walk[0]
    frames = [f] * 40
    depths = flickering(frames, 3)
    out = [r.depth.numpy() for r in run("odometry", frames, depths, [f.camera_to_world] * 40)]
    steps_in = [np.median(np.abs(np.log(b / a))) for a, b in zip(depths[20:], depths[21:])]
    steps_out = [np.median(np.abs(np.log(b / a))) for a, b in zip(out[20:], out[21:])]
    assert np.mean(steps_out) < 0.4 * np.mean(steps_in)  # steadier frame to frame
    error_in = np.mean([np.abs(np.log(d / f.depth)).mean() for d in depths[20:]])
    error_out = np.mean([np.abs(np.log(d / f.depth)).mean() for d in out[20:]])
    assert error_out < error_in  # nearer the truth, not drifting from it
    drift = abs(np.median(np.log(out[-1] / f.depth)) - np.median(np.log(out[20] / f.depth)))
    assert drift < 0.05


def test_a_scene_change_the_alignment_explains_away_is_caught_by_the_depth_histogram(walk):
    """The second check (issue 29): the histogram's shape is scale-free (f_D's scale flicker does not
    move it), and a new room's depth under the same image (the alignment then matches perfectly)
    restarts the state on it alone."""
    from sharpdepth_core.temporal import _histogram_shape

    d = torch.from_numpy(walk[3].depth.astype(np.float32))
    np.testing.assert_allclose(_histogram_shape(d), _histogram_shape(1.3 * d), atol=1e-5)
    other = torch.from_numpy(render_sequence(110001, 8)[0].depth.astype(np.float32))
    state = TemporalDepth("image")
    for t in range(3):
        state.update(torch.from_numpy(walk[t].depth.astype(np.float32)), walk[t].K, image=walk[t].rgb)
    r = state.update(other, walk[3].K, image=walk[2].rgb)
    assert r.cut and "histogram" in r.reason and torch.equal(r.depth, other)


def test_a_moving_object_is_not_held_back_by_the_past(walk):
    """A static camera (odometry: the pose stands still) sees an object come nearer 5 % a frame (1.5 m/s at
    3 m, 10 Hz) and another cross the view at 4 px a frame: the approaching one lags by at most 3 % of its
    depth (the narrower tolerance where the present is nearer than the past; 0.08 both ways lagged 4.7 %),
    the crossing one is never blended with the background it covers or uncovers."""
    f = walk[0]
    state = TemporalDepth("odometry")
    for t in range(12):
        d = f.depth.astype(np.float32).copy()
        d[40:60, 50:80] = 3.0 * np.exp(-0.05 * t)  # approaching
        d[10:30, 4 * t:20 + 4 * t] = 1.5  # crossing, in front of the room
        out = state.update(torch.from_numpy(d), f.K, image=f.rgb, pose=f.camera_to_world).depth.numpy()
        assert np.abs(np.log(out[10:30, 4 * t:20 + 4 * t] / 1.5)).max() < 1e-3
        lag = float(np.median(np.log(out[40:60, 50:80] / d[40:60, 50:80])))
        assert 0 <= lag < 0.03
    assert lag > 0.01  # the past does count there: it is a filter, not the per-frame result


def test_a_spin_faster_than_the_alignment_follows_restarts_to_the_per_frame_result(walk):
    """`walk` spins 14-20° a frame at frames 4-6 (140-200°/s at 10 Hz): the image-only alignment cannot
    follow, so those frames restart and go out as their per-frame result, never fused with a wrong motion."""
    depths = flickering(walk)
    out = run("image", walk, depths)
    restarted = [t for t, r in enumerate(out) if r.cut]
    assert restarted[0] == 0 and set(restarted[1:]) <= {4, 5, 6} and len(restarted) > 1
    for t in restarted:
        assert torch.equal(out[t].depth, torch.from_numpy(depths[t]))
