"""Synthetic sequences: a camera walking through a room, deterministic, in free space, with poses that
carry one frame's ground truth onto the next's (the check of the poses and the warp TAE rests on)."""
import math

import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from sharpdepth_core.embedded import EMBEDDED_DIR
from sharpdepth_core.small_scale import camera as embedded_camera
from sharpdepth_core.geometry import relative_pose, reproject
from sharpdepth_core.metrics import temporal_alignment_error
from sharpdepth_core.synthetic import CLEARANCE_M, Plane, render_scene, render_sequence

W, H = 64, 48
K = np.array([[47.9, 0, 31.5], [0, 47.9, 23.5], [0, 0, 1]])


def frames_of(seed: int, frames: int = 30):
    return render_sequence(seed, frames, W, H, K=K, style="indoor")


def test_same_seed_same_sequence_and_frame_0_is_the_scenes_camera():
    a, b, other = frames_of(3, 5), frames_of(3, 5), frames_of(4, 5)
    for fa, fb in zip(a, b):
        for x, y in ((fa.rgb, fb.rgb), (fa.depth, fb.depth), (fa.camera_to_world, fb.camera_to_world)):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[-1].depth, other[-1].depth)
    scene = render_scene(3, W, H, K=K)
    np.testing.assert_array_equal(a[0].depth, scene.depth)
    np.testing.assert_array_equal(a[0].camera_to_world, scene.camera_to_world)
    assert not np.array_equal(a[0].rgb, a[1].rgb)  # its own sensor noise per frame


@pytest.mark.skipif(not (EMBEDDED_DIR / "pipeline.json").is_file(), reason=f"no shipped weights in {EMBEDDED_DIR}")
def test_default_camera_is_the_embedded_models():
    camera, frames = embedded_camera(), render_sequence(0, 2)
    assert frames[0].depth.shape == (camera["height"], camera["width"]) and frames[0].style == camera["style"]
    np.testing.assert_allclose(frames[0].K, camera["K"], rtol=1e-9)


def test_walk_stays_in_free_space_moves_turns_and_passes_close_to_objects():
    paths, turns, nearest = [], [], []
    for seed in range(6):
        frames = frames_of(seed)
        T = np.array([f.camera_to_world for f in frames])
        room = {p.name: -p.offset for p in frames[0].primitives if isinstance(p, Plane) and p.offset < 0}
        xy = T[:, :2, 3]
        assert xy.min() >= CLEARANCE_M - 1e-9 and (xy[:, 0] <= room["wall_x1"] - CLEARANCE_M).all()
        assert (xy[:, 1] <= room["wall_y1"] - CLEARANCE_M).all()
        assert min(f.depth.min() for f in frames) > 0.3  # nothing ever closer than 30 cm
        np.testing.assert_array_equal(T[:, 2, :], np.broadcast_to(T[0, 2, :], T[:, 2, :].shape))  # height, pitch, roll kept
        steps = np.linalg.norm(np.diff(xy, axis=0), axis=1)
        heading = np.unwrap(np.arctan2(T[:, 1, 2], T[:, 0, 2]))
        assert steps.max() <= 0.6 / 10 + 1e-9 and np.abs(np.diff(heading)).max() < math.radians(12)  # smooth at 10 Hz
        paths.append(steps.sum())
        turns.append(abs(heading[-1] - heading[0]))
        nearest.append(min(f.depth.min() for f in frames))
    assert sum(p > 0.4 for p in paths) >= 4 and min(turns) >= math.radians(20) - 1e-9
    assert min(nearest) < 0.8  # some walk passes close to an object


def landing(gt_src, labels_src, gt_dst, labels_dst, dst_from_src):
    """Reprojected depth and the destination's ground truth there (bilinear), on pixels that land
    inside the destination on the same surface at all four bilinear neighbours."""
    uv, z = reproject(gt_src, K, K, dst_from_src)
    u, v = uv[..., 0], uv[..., 1]
    inside = (u >= 0) & (u <= W - 1.001) & (v >= 0) & (v <= H - 1.001)
    u0, v0 = np.floor(u[inside]).astype(int), np.floor(v[inside]).astype(int)
    same = np.ones(u0.shape, bool)
    for du, dv in ((0, 0), (1, 0), (0, 1), (1, 1)):
        same &= labels_dst[v0 + dv, u0 + du] == labels_src[inside]
    there = map_coordinates(gt_dst.astype(np.float64), [v[inside][same], u[inside][same]], order=1)
    return z[inside][same], there


def test_reprojected_ground_truth_reproduces_the_next_frames_ground_truth():
    frames = frames_of(8, 12)
    for a, b in zip(frames, frames[1:]):
        z, there = landing(a.depth, a.labels, b.depth, b.labels, relative_pose(a.camera_to_world, b.camera_to_world))
        assert z.size > 0.6 * W * H
        error = np.abs(z - there) / there
        assert np.median(error) < 5e-4 and np.quantile(error, 0.99) < 5e-3  # bilinear sampling of depth
    # the check can fail: the same pixels with the camera taken as standing still do not line up
    a, b = frames[5], frames[6]
    z, there = landing(a.depth, a.labels, b.depth, b.labels, np.eye(4))
    assert np.median(np.abs(z - there) / there) > 1e-2


def test_tae_is_zero_on_ground_truth_and_grows_with_noise_on_a_walk():
    frames = frames_of(8, 8)
    gts, poses = [f.depth for f in frames], [f.camera_to_world for f in frames]
    assert temporal_alignment_error(gts, gts, K, poses) < 2e-3  # the warp's own error
    rng = np.random.default_rng(0)
    taes = [temporal_alignment_error([g * (1 + s * rng.standard_normal(g.shape)) for g in gts], gts, K, poses)
            for s in (0.01, 0.03, 0.1)]
    assert 5e-3 < taes[0] < taes[1] < taes[2] and taes[2] > 5 * taes[0]


@pytest.mark.parametrize("kwargs, message", [({"frames": 1}, "frames must be an integer >= 2"),
                                             ({"rate": 0.0}, "rate must be a positive number"),
                                             ({"seed": -1}, "seed must be a non-negative integer")])
def test_invalid_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        render_sequence(**{"seed": 0, "width": W, "height": H, "style": "indoor", **kwargs})
