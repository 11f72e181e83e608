"""The camera model end to end over real rclpy: distorted cameras are rectified before the model
sees them (depth on the rectified pinhole, published with D = 0 as image_proc users expect), plain
pinhole cameras go through untouched, and images without camera_info get the documented fov_deg
pinhole. The pipeline is the real tiny one, wrapped to record what the model was given."""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from helpers_ros import Probe, Spinner, encode_image, header, node_parameters, pinhole_info, stamp_ns, wait_for
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from sharpdepth_core.geometry import unproject
from sharpdepth_core.pipeline import SharpDepthPipeline
from sharpdepth_ros.conversions import image_to_numpy, pinhole_K, point_cloud_to_numpy
from sharpdepth_ros.calibration import CAMERA_INFO_GRACE_S
from sharpdepth_ros.node import SharpDepthNode

W, H = 64, 48
K = np.array([[52.0, 0, 31.5], [0, 52.0, 23.5], [0, 0, 1]])
U, V = np.meshgrid(np.arange(W), np.arange(H))
_WAVE = (127 + 120 * np.sin(2 * np.pi * U / 9) * np.sin(2 * np.pi * V / 7)).astype(np.uint8)
PATTERN = np.stack([_WAVE, 255 - _WAVE, np.full_like(_WAVE, 80)], axis=-1)  # fine detail: geometry errors show
OUTPUTS = {"depth/image": Image, "depth/camera_info": CameraInfo, "points": PointCloud2}


class Recording(SharpDepthPipeline):
    """The real pipeline, keeping the (HxWx3) image and K of every call (the node's batches of one camera)."""

    calls: list

    def __call__(self, image, K=None, seed=None, **settings):
        assert image.shape[0] == 1
        self.calls.append((image[0].permute(1, 2, 0).numpy(), None if K is None else np.array(K[0])))
        return super().__call__(image, K=K, seed=seed, **settings)


def _node(ros_context, model_dir, namespace: str, **params):
    loaded = SharpDepthPipeline.from_pretrained(model_dir)
    pipeline = Recording(loaded.student, loaded.metric_model, processing_res=64)
    pipeline.calls = []
    node = SharpDepthNode(pipeline, context=ros_context, namespace=namespace,
                          parameter_overrides=node_parameters(model_dir, publish_colored=False, **params))
    probe = Probe(ros_context, {f"/{namespace}/{t}": m for t, m in OUTPUTS.items()}, name=f"{namespace}_probe")
    pubs = (probe.node.create_publisher(Image, f"/{namespace}/image_raw", 5),
            probe.node.create_publisher(CameraInfo, f"/{namespace}/camera_info", 5))
    return node, pipeline, probe, pubs


def _distorted(rgb: np.ndarray, D: np.ndarray, fisheye: bool) -> np.ndarray:
    """What a camera with distortion D sees of a pinhole image (K): each raw pixel looks where its
    undistorted ray points (OpenCV's iterative inverse, independent of the node's forward maps)."""
    pts = np.stack([U, V], axis=-1).reshape(-1, 1, 2).astype(np.float64)
    ideal = (cv2.fisheye.undistortPoints(pts, K, D, P=K) if fisheye else cv2.undistortPoints(pts, K, D, P=K)).reshape(H, W, 2)
    return cv2.remap(rgb, ideal[..., 0].astype(np.float32), ideal[..., 1].astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT)


@pytest.fixture(scope="module")
def camera(ros_context, tiny_pipeline_dir):
    node, pipeline, probe, pubs = _node(ros_context, tiny_pipeline_dir, "distorted")
    with Spinner(ros_context, node, probe.node):
        wait_for(lambda: probe.connected() and all(p.get_subscription_count() for p in pubs), 20, "discovery")
        yield node, pipeline, probe, pubs
    node.destroy_node()
    probe.node.destroy_node()


STAMPS = iter(range(5 * 10**9, 6 * 10**9, 1000))


def _send(camera, rgb, info):
    node, pipeline, probe, (image_pub, info_pub) = camera
    hdr = header(next(STAMPS), info.header.frame_id or "cam")
    info.header = hdr
    info_pub.publish(info)
    wait_for(lambda: node.cameras[0].infos.get(hdr.frame_id) is not None and stamp_ns(node.cameras[0].infos[hdr.frame_id].header) == stamp_ns(hdr),
             10, "the CameraInfo")
    image_pub.publish(encode_image(rgb, "rgb8", hdr=hdr))
    stamp = stamp_ns(hdr)
    topics = [f"/distorted/{t}" for t in OUTPUTS]
    wait_for(lambda: probe.has(topics, stamp), 60, "the outputs")
    return [probe.by_stamp(t, stamp) for t in topics]


@pytest.mark.parametrize("model, D", [("plumb_bob", [0.25, 0.05, 0.0, 0.0, 0.0]), ("equidistant", [0.2, -0.05, 0.01, 0.0])])
def test_distorted_camera_is_rectified_and_published_as_a_pinhole(camera, tiny_pipeline_dir, model, D):
    node, pipeline, _, _ = camera
    D = np.array(D)
    raw = _distorted(PATTERN, D, fisheye=model == "equidistant")
    info = pinhole_info(K, (H, W))
    info.header.frame_id, info.distortion_model, info.d = f"{model}_cam", model, D.tolist()
    depth_msg, info_msg, cloud = _send(camera, raw, info)
    seen_rgb, seen_K = pipeline.calls[-1]

    # the model saw the pinhole image again (up to two interpolations), not the distorted one
    inner = np.zeros((H, W), bool)
    inner[2:-2, 2:-2] = True
    error = np.abs(seen_rgb.astype(float) - PATTERN)[inner & (seen_rgb.sum(-1) > 0)].mean()
    assert error < 8 and np.abs(raw.astype(float) - PATTERN)[inner].mean() > 2 * error
    np.testing.assert_allclose(seen_K, K)  # the rectified camera: P (here [K | 0])

    # depth/camera_info: the rectified pinhole, as image_proc publishes it
    assert (info_msg.distortion_model, list(info_msg.d)) == ("plumb_bob", [0.0] * 5)
    np.testing.assert_allclose(np.reshape(info_msg.k, (3, 3)), K)
    np.testing.assert_allclose(np.reshape(info_msg.p, (3, 4)), np.concatenate([K, np.zeros((3, 1))], axis=1))
    np.testing.assert_array_equal(np.reshape(info_msg.r, (3, 3)), np.eye(3))

    # the depth is the model's on the rectified image; pixels the camera did not see are NaN
    depth = image_to_numpy(depth_msg)
    expected = SharpDepthPipeline.from_pretrained(tiny_pipeline_dir)(seen_rgb, K=K, seed=0).depth[0, 0].numpy()
    unseen = np.isnan(depth)
    np.testing.assert_allclose(depth[~unseen], expected[~unseen], rtol=1e-5)
    if model == "plumb_bob":  # pincushion: the rectified corners lie outside the raw image
        assert unseen[0, 0] and unseen[-1, -1] and not unseen[H // 2, W // 2]
    xyz, _ = point_cloud_to_numpy(cloud)
    np.testing.assert_allclose(xyz, unproject(depth, K), rtol=1e-5, atol=1e-6, equal_nan=True)
    assert len(node.cameras[0].rectifier._maps) >= 1


def test_rectification_maps_are_cached_per_calibration(camera):
    node, pipeline, _, _ = camera
    info = pinhole_info(K, (H, W))
    info.header.frame_id, info.distortion_model, info.d = "cached_cam", "plumb_bob", [-0.2, 0.0, 0.0, 0.0, 0.0]
    raw = _distorted(PATTERN, np.array(info.d), fisheye=False)
    _send(camera, raw, info)
    maps = dict(node.cameras[0].rectifier._maps)
    _send(camera, raw, info)
    assert node.cameras[0].rectifier._maps.keys() == maps.keys()
    assert all(node.cameras[0].rectifier._maps[k][0] is maps[k][0] for k in maps)  # the same arrays: not rebuilt


def test_plain_pinhole_goes_through_untouched(camera):
    """All-zero D: the model gets the image bit for bit, no map is built, D is passed on as it came."""
    node, pipeline, _, _ = camera
    node.cameras[0].rectifier._maps.clear()
    info = pinhole_info(K, (H, W))
    info.header.frame_id = "pinhole_cam"
    _, info_msg, _ = _send(camera, PATTERN, info)
    seen_rgb, seen_K = pipeline.calls[-1]
    np.testing.assert_array_equal(seen_rgb, PATTERN)
    np.testing.assert_array_equal(seen_K, K)
    assert not node.cameras[0].rectifier._maps
    assert (info_msg.distortion_model, list(info_msg.d)) == ("plumb_bob", [0.0] * 5)


def test_images_without_camera_info(ros_context, tiny_pipeline_dir, capfd):
    """use_camera_intrinsics false: no camera_info needed, the fov_deg pinhole is published (and the
    model runs without K). True: images wait CAMERA_INFO_GRACE_S for a first camera_info, then get
    the same fallback. Either way it is said once."""
    node, pipeline, probe, (image_pub, _) = _node(ros_context, tiny_pipeline_dir, "nocal", use_camera_intrinsics=False, fov_deg=90.0)
    node2, pipeline2, probe2, (image_pub2, _) = _node(ros_context, tiny_pipeline_dir, "nocal2")
    expected_K = pinhole_K(W, H, 90.0)
    np.testing.assert_allclose(expected_K, [[32.0, 0, 31.5], [0, 32.0, 23.5], [0, 0, 1]])  # f = W/2 / tan(45 deg)
    try:
        with Spinner(ros_context, node, node2, probe.node, probe2.node):
            wait_for(lambda: probe.connected() and probe2.connected() and image_pub.get_subscription_count()
                     and image_pub2.get_subscription_count(), 20, "discovery")
            capfd.readouterr()
            for stamp in (11, 12):
                image_pub.publish(encode_image(PATTERN, "rgb8", hdr=header(stamp, "no_info_cam")))
                wait_for(lambda: probe.has(["/nocal/depth/camera_info", "/nocal/depth/image"], stamp), 60, f"frame {stamp}")
                np.testing.assert_allclose(np.reshape(probe.by_stamp("/nocal/depth/camera_info", stamp).k, (3, 3)), expected_K)
                assert pipeline.calls[-1][1] is None
            assert capfd.readouterr().err.count("frames without camera_info get a pinhole K of fov_deg 90 degrees") == 1

            image_pub2.publish(encode_image(PATTERN, "rgb8", hdr=header(21, "no_info_cam")))
            wait_for(lambda: node2.stats.rejected.get("input") == 1, 30, "the first frame to wait for camera_info")
            assert "no camera_info for frame_id 'no_info_cam' yet" in node2.last_rejection
            time.sleep(CAMERA_INFO_GRACE_S)
            image_pub2.publish(encode_image(PATTERN, "rgb8", hdr=header(22, "no_info_cam")))
            wait_for(lambda: probe2.has(["/nocal2/depth/camera_info"], 22), 60, "the frame after the grace")
            np.testing.assert_allclose(np.reshape(probe2.by_stamp("/nocal2/depth/camera_info", 22).k, (3, 3)), pinhole_K(W, H, 60.0))
            assert pipeline2.calls[-1][1] is None  # an assumed K is not given to the metric model as if calibrated
            assert "no camera_info on /nocal2/camera_info within 2 s" in capfd.readouterr().err
    finally:
        for n in (node, node2, probe.node, probe2.node):
            n.destroy_node()
