"""The node's temporal mode (issue 29): its ROS-free part (`sharpdepth_ros.temporal`: poses, extrinsic,
TF, the per-frame step), then end to end over real rclpy with tiny real models. The noise is fresh every
frame (a new `seed` per frame: reproducible, unlike -1), so the per-frame depth of a still camera
changes from frame to frame and each frame's per-frame result is known."""
from __future__ import annotations

import importlib.util
import sys
import threading
import time
from contextlib import contextmanager
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
from rclpy.parameter import Parameter
from scipy.spatial.transform import Rotation
from helpers_ros import Probe, Spinner, encode_image, header, node_parameters, pinhole_info, stamp_ns, wait_for
from geometry_msgs.msg import PoseStamped, TransformStamped
from nav_msgs.msg import Odometry
from sensor_msgs.msg import CameraInfo, Image

from sharpdepth_core.pipeline import SharpDepthPipeline
from sharpdepth_core.synthetic import render_scene
from sharpdepth_core.temporal import TemporalSettings
from sharpdepth_ros.conversions import image_to_numpy, pose_stamped
from sharpdepth_ros.node import SharpDepthNode
from sharpdepth_ros.node_parameters import validate
from sharpdepth_ros.replay import ReplayPublisher
from sharpdepth_ros.temporal import (IDENTITY_EXTRINSIC, PoseBuffer, TemporalStep, extrinsic_problem, pose_matrix, pose_topic,
                                     transform)

W, H = 48, 36
T0 = 1_000_000_000  # the first stamp, ns; frames 0.1 s apart (the mode's gap check allows 0.5 s)
OPTICAL = [-0.5, 0.5, -0.5, 0.5]  # qx qy qz qw of a camera optical frame (z ahead, x right, y down) on a base (x ahead, z up)


# --- ROS-free -----------------------------------------------------------------------------------

def test_transform_and_pose_messages_match_scipy_and_compose_the_extrinsic():
    q = Rotation.from_euler("xyz", [0.3, -0.5, 1.1]).as_quat()
    T = transform(1.0, 2.0, 3.0, *(2 * q))  # not normalised: normalised here
    np.testing.assert_allclose(T[:3, :3], Rotation.from_quat(q).as_matrix(), atol=1e-12)
    np.testing.assert_allclose(T[:3, 3], [1, 2, 3])
    np.testing.assert_allclose(pose_matrix(pose_stamped(T, header(5))), T, atol=1e-12)
    base = transform(0.5, 0, 0, 0, 0, 0, 1)
    extrinsic = [0.1, 0.0, 0.2, *Rotation.from_euler("x", -90, degrees=True).as_quat()]
    step = TemporalStep("odometry", extrinsic)
    step.add_pose("", pose_stamped(base, header(T0)))
    pose, pose_frame = step.poses[""].at(1.0, wait=0)  # a PoseStamped names no frame of its own: the fixed extrinsic
    assert pose_frame == ""
    np.testing.assert_allclose(pose @ step.camera_on_robot(pose_frame, "cam"), base @ transform(*extrinsic), atol=1e-12)
    assert extrinsic_problem([0, 0, 0, 0, 0, 0, 1]) is None
    assert "7 finite" in extrinsic_problem([0, 0, 0])
    assert "no direction" in extrinsic_problem([0, 0, 0, 0, 0, 0, 0])
    assert validate("temporal", "odometry") is None and "not one of" in validate("temporal", "video")
    assert validate("odometry_type", "geometry_msgs/PoseStamped") is None and validate("odometry_type", "nav_msgs/Odometry") is None
    assert (pose_topic("", "pose"), pose_topic("front", "pose"), pose_topic("front", "/odom")) == ("pose", "front/pose", "/odom")


def test_pose_buffer_takes_the_latest_pose_at_or_before_the_stamp_and_waits_for_a_late_one():
    buffer, a, b = PoseBuffer(), np.eye(4), 2 * np.eye(4)
    buffer.add(0.99, a)
    buffer.add(1.0, b)
    buffer.add(1.05, 3 * np.eye(4))  # after the image: never its pose
    assert buffer.at(1.0) is b
    assert buffer.at(1.002, wait=0) is b
    assert buffer.at(1.03, wait=0) is None  # the latest before is 0.03 s old: beyond the tolerance
    late = PoseBuffer()
    threading.Timer(0.05, late.add, (2.0, a)).start()  # published just after its image
    t0 = time.monotonic()
    assert late.at(2.0, wait=2.0) is a and time.monotonic() - t0 < 1.0


def test_step_without_a_pose_restarts_the_camera_and_returns_its_depth_and_a_new_activation_restarts_it():
    said = []
    step = TemporalStep("odometry", warn=said.append)
    scene = render_scene(0, W, H)
    camera = SimpleNamespace(name="front", said=lambda m: f"front: {m}")
    frame = lambda k, activation=1: SimpleNamespace(camera=camera, rgb=scene.rgb, header=header(T0 + k * 10**8), activation=activation)
    depth = np.full((H, W), 2.0, np.float32)
    for k in range(3):
        step.add_pose("front", pose_stamped(np.eye(4), header(T0 + k * 10**8)))
    assert step(frame(0), depth, scene.K) is not None
    assert "front" in step.cameras._cameras
    assert step(frame(5), depth, scene.K) is depth  # no pose: the per-frame depth, the past forgotten
    assert "front" not in step.cameras._cameras and len(said) == 1 and said[0].startswith("front: temporal odometry")
    step(frame(6), depth, scene.K)
    assert len(said) == 1  # said once per camera
    step(frame(1), depth, scene.K)
    assert "front" in step.cameras._cameras
    assert step._activation["front"] == 1
    step(frame(2, activation=2), depth, scene.K)
    assert step._activation["front"] == 2 and step.cameras._cameras["front"]._frames == 1  # restarted
    assert TemporalStep.from_settings({"temporal": "off"}) is None
    with pytest.raises(ValueError):
        TemporalStep("off")


def _odometry(base_to_world: np.ndarray, stamp: int, child: str = "base_link") -> Odometry:
    """nav_msgs/Odometry: the pose of `child` (the robot base) in "odom"."""
    msg = Odometry(header=header(stamp, "odom"), child_frame_id=child)
    msg.pose.pose = pose_stamped(base_to_world, msg.header).pose
    return msg


def _fused_poses(step: TemporalStep) -> list:
    """The poses `step` hands its temporal state (its `update` recorded, the depth passed through)."""
    import torch

    poses = []
    step.cameras.update = lambda camera, depth, K, image, pose, stamp: poses.append(pose) or SimpleNamespace(depth=torch.as_tensor(depth))
    return poses


def _frame(camera: str, k: int, frame_id: str = "front_optical", activation: int = 1):
    scene = render_scene(0, W, H)
    return SimpleNamespace(camera=SimpleNamespace(name=camera, said=lambda m: f"{camera}: {m}"), rgb=scene.rgb,
                           header=header(T0 + k * 10**8, frame_id), activation=activation), scene.K


# The robot base at (1, 2, 0) turned 90 degrees left; the camera 0.2 m ahead of its centre and 0.5 m up, looking ahead:
BASE = transform(1.0, 2.0, 0.0, 0.0, 0.0, np.sin(np.pi / 4), np.cos(np.pi / 4))
MOUNT = [0.2, 0.0, 0.5, *OPTICAL]
CAMERA = np.array([[1.0, 0.0, 0.0, 1.0],  # its x (right) along the world's x: the robot faces the world's y
                   [0.0, 0.0, 1.0, 2.2],  # its z (ahead) along the world's y, 0.2 m ahead of the base
                   [0.0, -1.0, 0.0, 0.5],  # its y (down) along the world's -z, 0.5 m up
                   [0.0, 0.0, 0.0, 1.0]])


def test_an_odometry_of_the_base_with_the_fixed_extrinsic_gives_the_camera_pose():
    said = []
    step = TemporalStep("odometry", MOUNT, warn=said.append)
    poses, (frame, K) = _fused_poses(step), _frame("front", 0)
    step.add_pose("front", _odometry(BASE, T0))
    depth = np.full((H, W), 2.0, np.float32)
    step(frame, depth, K)
    np.testing.assert_allclose(poses[0], CAMERA, atol=1e-12)
    bad = _odometry(BASE, T0 + 10**8)
    q = bad.pose.pose.orientation
    q.z = q.w = 0.0  # a zero quaternion: dropped, said once per camera, the node goes on
    step.add_pose("front", bad)
    step.add_pose("", bad)
    step.add_pose("front", bad)
    assert len(step.poses["front"]._poses) == 1 and "" not in step.poses
    assert len(said) == 2 and said[0].startswith("front: temporal odometry: a pose message dropped (the quaternion")


class StandInTF:
    """tf2_ros cannot be installed here (no wheel on PyPI for this ROS set), so a stand-in for its `Buffer`:
    `lookup_transform(target, source, time)` answers a real geometry_msgs/TransformStamped of `mount`
    (source's pose in target), or raises `error`."""

    def __init__(self, mount=None, error: Exception | None = None):
        self.mount, self.error, self.calls = mount, error, []

    def lookup_transform(self, target, source, time):
        self.calls.append((target, source, time))
        if self.error is not None:
            raise self.error
        msg = TransformStamped(header=header(0, target), child_frame_id=source)
        t, r = msg.transform.translation, msg.transform.rotation
        t.x, t.y, t.z, r.x, r.y, r.z, r.w = (float(v) for v in self.mount)
        return msg


def test_tf_gives_the_camera_on_the_robot_and_a_failed_lookup_gives_the_per_frame_depth():
    from rclpy.time import Time

    tf = StandInTF(MOUNT)
    said = []
    step = TemporalStep("odometry", warn=said.append, tf=tf)
    poses, depth = _fused_poses(step), np.full((H, W), 2.0, np.float32)
    for k in range(2):
        step.add_pose("front", _odometry(BASE, T0 + k * 10**8))
        frame, K = _frame("front", k)
        assert step(frame, depth, K) is not depth  # fused
    np.testing.assert_allclose(poses[0], CAMERA, atol=1e-12)
    (target, source, time), _ = tf.calls  # from the odometry's child frame to the image's frame, the latest
    assert (target, source) == ("base_link", "front_optical") and time == Time()
    step.add_pose("front", pose_stamped(BASE, header(T0 + 2 * 10**8)))  # a PoseStamped names no frame: no lookup
    step(_frame("front", 2)[0], depth, K)
    assert len(tf.calls) == 2 and np.allclose(poses[-1], BASE)  # the fixed extrinsic, the identity

    tf.error = LookupError('"base_link" passed to lookupTransform argument target_frame does not exist')
    for k in (3, 4):
        step.add_pose("front", _odometry(BASE, T0 + k * 10**8))
        assert step(_frame("front", k)[0], depth, K) is depth  # per-frame, the camera's past forgotten
        assert "front" not in step.cameras._cameras
    assert len(poses) == 3 and len(said) == 1  # said once per camera
    assert said[0].startswith("front: temporal odometry: no transform from the odometry's frame 'base_link' to the image's "
                              "'front_optical' in TF (LookupError: ")


def test_from_settings_uses_tf_only_for_odometry_without_an_extrinsic_and_says_when_tf2_ros_is_missing(monkeypatch):
    settings = {"temporal": "odometry", "odometry_type": "nav_msgs/Odometry", "odometry_topic": "/odom",
                "camera_extrinsic": IDENTITY_EXTRINSIC}
    said = []
    monkeypatch.setitem(sys.modules, "tf2_ros", None)  # not installed (as here): its import fails
    step = TemporalStep.from_settings(settings, said.append, node=object())
    assert step.tf is None and len(said) == 1 and "tf2_ros is not installed" in said[0]
    ((kind, topic, _),) = step.pose_inputs("front")
    assert (kind, topic) == (Odometry, "/odom")
    ((kind, topic, _),) = TemporalStep.from_settings({**settings, "odometry_type": "geometry_msgs/PoseStamped",
                                                      "odometry_topic": "pose"}).pose_inputs("front")
    assert (kind, topic) == (PoseStamped, "front/pose")

    made = []

    class Listener:  # tf2_ros.TransformListener's part here
        def __init__(self, buffer, node):
            self.args, self.unregistered = (buffer, node), 0
            made.append(self)

        def unregister(self):
            self.unregistered += 1

    fake = ModuleType("tf2_ros")  # a stand-in tf2_ros module (it cannot be installed here)
    fake.Buffer, fake.TransformListener = lambda: "buffer", Listener
    monkeypatch.setitem(sys.modules, "tf2_ros", fake)
    node, said = object(), []
    step = TemporalStep.from_settings(settings, said.append, node)
    assert step.tf == "buffer" and not said and not made  # the listener starts with the subscriptions (activate)
    step.pose_inputs("a")
    step.pose_inputs("b")
    assert [m.args for m in made] == [("buffer", node)]  # one listener for all cameras, on the node
    step.reset("a")
    assert made[0].unregistered == 0
    step.reset()  # deactivate
    assert made[0].unregistered == 1
    step.pose_inputs("a")
    assert len(made) == 2
    for other in ({"camera_extrinsic": MOUNT}, {"odometry_type": "geometry_msgs/PoseStamped"}, {"temporal": "image"}):
        assert TemporalStep.from_settings({**settings, **other}, said.append, node).tf is None  # the fixed extrinsic
    assert not said
    with pytest.raises(ValueError, match="odometry_type 'nav_msgs/Path' is not one of"):
        TemporalStep("odometry", odometry_type="nav_msgs/Path")


# --- over rclpy ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference(tiny_pipeline_dir):
    pipeline = SharpDepthPipeline.from_pretrained(tiny_pipeline_dir)
    return lambda rgb, K, seed: pipeline(rgb, K=K, seed=seed).depth[0, 0].numpy()


@contextmanager
def temporal_node(ros_context, model_dir, ns: str, cameras=("",), **params):
    """A node in namespace `ns` with `params`, and `send(camera, k, rgb, K, seed)`: frame k (stamped
    T0 + k/10 s) to `camera` with noise seed `seed`, returning its published depth."""
    node = SharpDepthNode(context=ros_context, namespace=ns, parameter_overrides=node_parameters(
        model_dir, cameras=list(cameras), publish_colored=False, publish_points=False, **params))
    topic = lambda camera, name: f"/{ns}/{camera}/{name}" if camera else f"/{ns}/{name}"
    probe = Probe(ros_context, {topic(c, "depth/image"): Image for c in cameras}, name=f"{ns}_probe")
    pubs = {c: (probe.node.create_publisher(Image, topic(c, "image_raw"), 5), probe.node.create_publisher(CameraInfo, topic(c, "camera_info"), 5))
            for c in cameras}

    def send(camera, k, rgb, K, seed=None, wait=True):
        if seed is not None and node._settings["seed"] != seed:
            node.set_parameters([Parameter("seed", value=seed)])
        hdr = header(T0 + k * 100_000_000, f"{ns}_cam")
        image_pub, info_pub = pubs[camera]
        info_pub.publish(pinhole_info(K, (H, W), hdr))
        wait_for(lambda: f"{ns}_cam" in node.cameras[list(cameras).index(camera)].infos, 10, "the CameraInfo")
        image_pub.publish(encode_image(rgb, "rgb8", hdr=hdr))
        return receive(camera, k) if wait else None

    def receive(camera, k):
        stamp, out = T0 + k * 100_000_000, topic(camera, "depth/image")
        wait_for(lambda: probe.by_stamp(out, stamp) is not None, 60, f"depth of frame {k} of camera '{camera}'")
        return image_to_numpy(probe.by_stamp(out, stamp))

    try:
        with Spinner(ros_context, node, probe.node):
            wait_for(lambda: probe.connected() and all(i.get_subscription_count() and c.get_subscription_count() for i, c in pubs.values()),
                     20, "discovery")
            yield node, send, receive
    finally:
        node.destroy_node()
        probe.node.destroy_node()


def _change(depths) -> float:
    """Mean absolute log change from frame to frame."""
    return float(np.mean([np.nanmean(np.abs(np.log(b) - np.log(a))) for a, b in zip(depths, depths[1:])]))


def test_a_still_camera_with_fresh_noise_changes_less_from_frame_to_frame(ros_context, tiny_pipeline_dir, reference):
    scene = render_scene(0, W, H)
    seeds = range(1, 8)
    per_frame = [reference(scene.rgb, scene.K, s) for s in seeds]
    with temporal_node(ros_context, tiny_pipeline_dir, "tstill", temporal="image") as (node, send, _):
        fused = [send("", k, scene.rgb, scene.K, s) for k, s in enumerate(seeds)]
    np.testing.assert_allclose(fused[0], per_frame[0], rtol=1e-5)  # the first frame is its own
    assert not np.allclose(fused[-1], per_frame[-1], rtol=1e-3)  # later ones carry the past
    assert _change(fused) < 0.75 * _change(per_frame), (_change(fused), _change(per_frame))


def test_a_camera_jump_gives_the_per_frame_depth_and_deactivate_and_cleanup_reset(ros_context, tiny_pipeline_dir, reference):
    scene, other = render_scene(0, W, H), None
    other = render_scene(1, W, H, K=scene.K)  # another room, the same camera: a cut
    with temporal_node(ros_context, tiny_pipeline_dir, "tcut", temporal="image") as (node, send, _):
        for k in range(3):
            last = send("", k, scene.rgb, scene.K, 1 + k)
        assert not np.allclose(last, reference(scene.rgb, scene.K, 3), rtol=1e-3)
        np.testing.assert_allclose(send("", 3, other.rgb, scene.K, 4), reference(other.rgb, scene.K, 4), rtol=1e-5)
        send("", 4, scene.rgb, scene.K, 5)
        assert not np.allclose(send("", 5, scene.rgb, scene.K, 6), reference(scene.rgb, scene.K, 6), rtol=1e-3)
        for transitions, k in ((("deactivate", "activate"), 6), (("deactivate", "cleanup", "configure", "activate"), 7)):
            for transition in transitions:
                getattr(node, f"trigger_{transition}")()
            wait_for(lambda: node.cameras and node.cameras[0].publishers["depth"].get_subscription_count() >= 1, 20, "rediscovery")
            np.testing.assert_allclose(send("", k, scene.rgb, scene.K, 10 + k), reference(scene.rgb, scene.K, 10 + k), rtol=1e-5)


def test_two_cameras_keep_separate_state(ros_context, tiny_pipeline_dir, reference):
    scene = render_scene(0, W, H)
    with temporal_node(ros_context, tiny_pipeline_dir, "ttwo", cameras=("a", "b"), temporal="image") as (node, send, receive):
        for k in range(3):
            send("a", k, scene.rgb, scene.K, 1 + k)
        send("b", 3, scene.rgb, scene.K, 4, wait=False)  # b's first frame, with a's fourth
        send("a", 3, scene.rgb, scene.K, wait=False)
        expected = reference(scene.rgb, scene.K, 4)
        np.testing.assert_allclose(receive("b", 3), expected, rtol=1e-5)  # no past: a's never reaches b
        assert not np.allclose(receive("a", 3), expected, rtol=1e-3)


@pytest.mark.parametrize("odometry_type", ["geometry_msgs/PoseStamped", "nav_msgs/Odometry"])
def test_odometry_mode_reads_the_replays_poses_and_publishes(ros_context, tiny_pipeline_dir, reference, odometry_type):
    """PoseStamped: the replay's own poses on `pose` under the camera's namespace. Odometry: the same poses as a
    robot's odometry on one absolute topic, the camera's frame as its child frame (no tf2_ros here: the
    fixed identity extrinsic)."""
    odometry = odometry_type == "nav_msgs/Odometry"
    ns = "todom" if odometry else "todo"
    topic = f"/{ns}/odom" if odometry else "pose"
    node = SharpDepthNode(context=ros_context, namespace=ns, parameter_overrides=node_parameters(
        tiny_pipeline_dir, temporal="odometry", odometry_type=odometry_type, odometry_topic=topic, publish_colored=False,
        publish_points=False))
    # the replay stamps with wall time: on a busy machine two frames may lie more than 0.5 s apart (a cut)
    node._temporal.cameras.settings = TemporalSettings(max_gap_s=30.0)
    sent = []

    def on_frame(h, f):
        sent.append((stamp_ns(h), f))
        if odometry:  # a robot's odometry, just after the image, like the replay's PoseStamped
            odom_pub.publish(_odometry(f.pose, stamp_ns(h), child=h.frame_id))

    replay = ReplayPublisher(context=ros_context, namespace=ns, timer=False, on_frame=on_frame,
                             parameter_overrides=[Parameter("sequence", value=5), Parameter("width", value=W),
                                                  Parameter("height", value=H), Parameter("seed", value=2)])
    probe = Probe(ros_context, {f"/{ns}/depth/image": Image}, name=f"{ns}_probe")
    odom_pub = probe.node.create_publisher(Odometry, topic, 5) if odometry else None
    poses_heard = (lambda: odom_pub.get_subscription_count() >= 1) if odometry else (lambda: replay.count_subscribers(f"/{ns}/pose") >= 1)
    try:
        with Spinner(ros_context, node, replay, probe.node):
            wait_for(lambda: probe.connected() and replay.count_subscribers(f"/{ns}/image_raw") >= 1 and poses_heard(), 20, "discovery")
            for _ in range(5):
                assert replay.publish_next()
                stamp = sent[-1][0]
                wait_for(lambda: probe.by_stamp(f"/{ns}/depth/image", stamp) is not None, 60, "a depth")
        assert len(node._temporal.poses[""]._poses) == 5
        # tf2_ros cannot be installed here: the fixed identity extrinsic; with it, TF's same-frame lookup is the identity too
        assert (node._temporal.tf is None) == (not odometry or importlib.util.find_spec("tf2_ros") is None)
        outputs = [image_to_numpy(probe.by_stamp(f"/{ns}/depth/image", s)) for s, _ in sent]
        per_frame = [reference(f.rgb, f.K, 0) for _, f in sent]
        np.testing.assert_allclose(outputs[0], per_frame[0], rtol=1e-5)
        assert all(np.isfinite(o).all() and (o > 0).all() for o in outputs)
        assert any(not np.allclose(o, p, rtol=1e-3) for o, p in zip(outputs[1:], per_frame[1:]))  # the past carried in
    finally:
        for n in (node, replay, probe.node):
            n.destroy_node()
