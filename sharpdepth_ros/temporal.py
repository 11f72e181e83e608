"""The depth node's temporal mode (issue 29; the mode itself is `sharpdepth_core.temporal`, docs/METHOD.md
"Temporal mode"): the camera poses it reads, and the step that fuses each camera's published depth with
that camera's past. The node subscribes the poses and calls `TemporalStep` per frame; the step makes its
own TF listener on the node, where it uses TF.

Poses (odometry mode): `nav_msgs/Odometry` (`odometry_type`, the default: a robot's odometry, the pose of
its `child_frame_id`, the robot base, in `header.frame_id`) or `geometry_msgs/PoseStamped` (a pose with no
frame of its own: the camera optical frame's, or with `camera_extrinsic` the base's), camera-to-world in a
fixed world frame. The camera's pose is the message's pose composed with the camera optical frame's pose
in the message's frame: `camera_extrinsic` (x y z qx qy qz qw) where it is set (not the identity); for
Odometry with `camera_extrinsic` left at the identity, TF's latest transform from the odometry's
`child_frame_id` to the image's `header.frame_id` where `tf2_ros` is installed (the identity without it,
said once at configure). A frame takes the latest pose stamped at most its own stamp and at least
POSE_TOLERANCE_S before it; the pose of a frame is often published just after its image, so a frame waits
up to POSE_WAIT_S for it. A frame without one, or whose TF lookup fails, restarts its camera's state and
goes out as its per-frame result (each said once per camera)."""
from __future__ import annotations

import threading
from collections import deque

import numpy as np

from sharpdepth_core.choices import TEMPORAL_MODES as MODES

POSE_TOLERANCE_S = 0.02  # a pose stamped this much before the image still counts as its pose
POSE_WAIT_S = 0.2  # how long a frame waits for its pose to arrive
MAX_POSES = 256  # poses kept per camera (about 2.5 s of 100 Hz odometry)
IDENTITY_EXTRINSIC = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]  # x y z qx qy qz qw: the poses are the camera's own (or TF's)
ODOMETRY_TYPES = ("nav_msgs/Odometry", "geometry_msgs/PoseStamped")  # odometry_type: the first is the default


def stamp_seconds(header) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


def transform(x: float, y: float, z: float, qx: float, qy: float, qz: float, qw: float) -> np.ndarray:
    """4x4 of a translation and a quaternion (normalised; ValueError for a zero one)."""
    q = np.array([qx, qy, qz, qw], dtype=np.float64)
    n = float(np.linalg.norm(q))
    if not np.isfinite(n) or n < 1e-9:
        raise ValueError(f"the quaternion {list(q)} has no direction")
    qx, qy, qz, qw = q / n
    T = np.eye(4)
    T[:3, :3] = [[1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qz * qw), 2 * (qx * qz + qy * qw)],
                 [2 * (qx * qy + qz * qw), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qx * qw)],
                 [2 * (qx * qz - qy * qw), 2 * (qy * qz + qx * qw), 1 - 2 * (qx * qx + qy * qy)]]
    T[:3, 3] = x, y, z
    return T


def pose_matrix(msg) -> np.ndarray:
    """A PoseStamped's (or an Odometry's: `pose.pose`) pose as a 4x4 (ValueError for a zero quaternion or a
    non-finite value)."""
    pose = msg.pose.pose if hasattr(msg.pose, "pose") else msg.pose
    p, q = pose.position, pose.orientation
    T = transform(p.x, p.y, p.z, q.x, q.y, q.z, q.w)
    if not np.isfinite(T).all():
        raise ValueError(f"the position ({p.x}, {p.y}, {p.z}) is not finite")
    return T


def transform_matrix(msg) -> np.ndarray:
    """A TransformStamped's transform as a 4x4: the pose of its `child_frame_id` in its `header.frame_id`."""
    t, q = msg.transform.translation, msg.transform.rotation
    return transform(t.x, t.y, t.z, q.x, q.y, q.z, q.w)


def odometry_type_problem(value: str) -> str | None:
    """Why `odometry_type` cannot be used, or None."""
    return None if value in ODOMETRY_TYPES else f"odometry_type '{value}' is not one of {', '.join(ODOMETRY_TYPES)}"


def message_class(odometry_type: str):
    """The message class of an `odometry_type`."""
    if odometry_type == "nav_msgs/Odometry":
        from nav_msgs.msg import Odometry

        return Odometry
    if odometry_type == "geometry_msgs/PoseStamped":
        from geometry_msgs.msg import PoseStamped

        return PoseStamped
    raise ValueError(odometry_type_problem(odometry_type))


def extrinsic_problem(values) -> str | None:
    """Why `camera_extrinsic` cannot be used, or None."""
    if len(values) != 7 or not np.isfinite(values).all():
        return f"camera_extrinsic {list(values)}: give 7 finite numbers, x y z qx qy qz qw (base -> camera optical frame)"
    try:
        transform(*values)
    except ValueError as error:
        return f"camera_extrinsic: {error}"
    return None


def pose_topic(camera: str, topic: str) -> str:
    """The pose topic of camera namespace `camera`: `topic` under it, or `topic` itself when absolute (shared)."""
    return topic if topic.startswith("/") or not camera else f"{camera}/{topic}"


class PoseBuffer:
    """One camera's latest poses (stamp seconds, camera-to-world), written by the pose callback and read by
    the camera's publishing thread."""

    def __init__(self) -> None:
        self._poses: deque = deque(maxlen=MAX_POSES)
        self._arrived = threading.Condition()

    def add(self, stamp: float, pose: np.ndarray) -> None:
        with self._arrived:
            self._poses.append((stamp, pose))
            self._arrived.notify_all()

    def at(self, stamp: float, tolerance: float = POSE_TOLERANCE_S, wait: float = POSE_WAIT_S) -> np.ndarray | None:
        """The latest pose stamped in [stamp - tolerance, stamp], waiting up to `wait` s for one stamped at or
        after `stamp` (then no better one can come); None without one."""
        with self._arrived:
            self._arrived.wait_for(lambda: any(s >= stamp for s, _ in self._poses), timeout=wait)
            found = [(s, p) for s, p in self._poses if stamp - tolerance <= s <= stamp]
        return max(found, key=lambda sp: sp[0])[1] if found else None


class TemporalStep:
    """The node's temporal state: one `TemporalCameras` (a state per camera) and each camera's poses. Called
    per frame in the camera's publishing thread (frames of a camera in order); a camera's state restarts
    on a frame of a new activation (and `reset` forgets all: deactivate), so the first frame after an
    activation is its per-frame result.

    `tf`: where the camera sits on the robot comes from TF, for Odometry messages with a child frame: an
    object with `lookup_transform(target, source, time)` (a `tf2_ros.Buffer`); `listen`: what starts
    feeding it (makes a `tf2_ros.TransformListener`, whose `unregister` stops it), called at the first
    `pose_inputs` of an activation and stopped by `reset()`, with the node's other subscriptions."""

    def __init__(self, mode: str, extrinsic=IDENTITY_EXTRINSIC, odometry_topic: str = "/odom", warn=None, settings=None,
                 odometry_type: str = ODOMETRY_TYPES[0], tf=None, listen=None):
        from sharpdepth_core.temporal import TemporalCameras  # torch: not for node_parameters (--help)

        if mode not in MODES[1:]:
            raise ValueError(f"temporal must be one of {MODES}, got {mode!r}")
        if odometry_type_problem(odometry_type):
            raise ValueError(odometry_type_problem(odometry_type))
        self.mode, self.cameras, self.warn, self.odometry_topic = mode, TemporalCameras(mode, settings), warn, odometry_topic
        self.odometry_type, self.tf, self._listen, self._listener = odometry_type, tf, listen, None
        self.base_to_camera = transform(*extrinsic)
        self.poses: dict[str, PoseBuffer] = {}
        self._activation: dict[str, int] = {}
        self._said: set = set()

    @classmethod
    def from_settings(cls, settings: dict, warn=None, node=None) -> "TemporalStep | None":
        """The node's step as its parameters ask; None with temporal 'off'. With Odometry and `camera_extrinsic`
        left at the identity, TF on `node` where tf2_ros is installed (else said once, through `warn`)."""
        if settings["temporal"] == "off":
            return None
        step = cls(settings["temporal"], settings["camera_extrinsic"], settings["odometry_topic"], warn,
                   odometry_type=settings["odometry_type"])
        if step.mode != "odometry" or step.odometry_type != "nav_msgs/Odometry" or list(settings["camera_extrinsic"]) != IDENTITY_EXTRINSIC:
            return step  # the fixed extrinsic: set by the user, or PoseStamped's pose is of no named frame
        try:
            import tf2_ros
        except ImportError:
            if warn is not None:
                warn("temporal odometry: tf2_ros is not installed, so the camera's pose on the robot is not looked up in TF: "
                     "the odometry's poses are taken as the camera optical frame's own (camera_extrinsic, the identity); "
                     "set camera_extrinsic to the base -> camera optical frame transform where they are the robot base's")
            return step
        if node is not None:
            step.tf = tf2_ros.Buffer()
            step._listen = lambda: tf2_ros.TransformListener(step.tf, node)
        return step

    def pose_inputs(self, camera: str) -> list[tuple]:
        """(message type, topic, callback) of the subscriptions camera namespace `camera` needs: its poses in
        odometry mode, none in image mode. With TF, the first call after a `reset()` starts its listener."""
        if self.mode != "odometry":
            return []
        if self._listen is not None and self._listener is None:
            self._listener = self._listen()
        return [(message_class(self.odometry_type), pose_topic(camera, self.odometry_topic), lambda msg: self.add_pose(camera, msg))]

    def add_pose(self, camera: str, msg) -> None:
        """A pose message for `camera` (the pose callback): its pose and, for Odometry, the frame it is of. A
        pose that is no pose (a zero quaternion, a non-finite value) is dropped, said once per camera."""
        try:
            pose = pose_matrix(msg)
        except ValueError as error:
            self._say_once((camera, "bad pose"), f"{camera + ': ' if camera else ''}temporal odometry: a pose message "
                           f"dropped ({error}); later ones are dropped without a word")
            return
        self._buffer(camera).add(stamp_seconds(msg.header), (pose, getattr(msg, "child_frame_id", "")))

    def _buffer(self, camera: str) -> PoseBuffer:
        """`camera`'s poses, made at its first pose or frame (not a new buffer per call; setdefault keeps the
        first of two threads' at once)."""
        buffer = self.poses.get(camera)
        return buffer if buffer is not None else self.poses.setdefault(camera, PoseBuffer())

    def camera_on_robot(self, pose_frame: str, image_frame: str) -> np.ndarray:
        """The camera optical frame's pose in the frame a pose message gives (`pose_frame`: an Odometry's child
        frame, '' for PoseStamped): TF's latest from `pose_frame` to `image_frame` where TF is used (its
        exceptions pass through), else the fixed `camera_extrinsic`."""
        if self.tf is None or not pose_frame:
            return self.base_to_camera
        from rclpy.time import Time

        return transform_matrix(self.tf.lookup_transform(pose_frame, image_frame, Time()))  # Time(): the latest

    def reset(self, camera: str | None = None) -> None:
        self.cameras.reset(camera)
        if camera is None:
            self._activation.clear()
            if self._listener is not None:  # deactivate: TF's subscriptions go with the node's others
                self._listener.unregister()
                self._listener = None

    def _say_once(self, key, message: str) -> None:
        if self.warn is not None and key not in self._said:
            self._said.add(key)
            self.warn(message)

    def __call__(self, frame, depth: np.ndarray, K: np.ndarray) -> np.ndarray:
        """A frame's published depth (metres HxW, NaN invalid) fused with its camera's past; `frame` a
        `frames.ReadyFrame` (its camera's name, rgb, header and activation)."""
        camera, stamp = frame.camera.name, stamp_seconds(frame.header)
        if self._activation.get(camera) != frame.activation:
            self.cameras.reset(camera)
            self._activation[camera] = frame.activation
        pose = None
        if self.mode == "odometry":
            found = self._buffer(camera).at(stamp)
            if found is None:
                return self._per_frame(frame, depth, camera, f"temporal odometry: no pose within {POSE_TOLERANCE_S} s before "
                                       "the image stamp; that frame's per-frame depth goes out and the camera's past restarts")
            pose, pose_frame = found
            try:
                pose = pose @ self.camera_on_robot(pose_frame, frame.header.frame_id)
            except Exception as error:  # tf2's LookupException, ExtrapolationException, ...: whatever it is, the node goes on
                return self._per_frame(frame, depth, (camera, "tf"), f"temporal odometry: no transform from the odometry's "
                                       f"frame '{pose_frame}' to the image's '{frame.header.frame_id}' in TF "
                                       f"({type(error).__name__}: {str(error)[:200]}); such frames' per-frame depth goes "
                                       "out and the camera's past restarts")
        import torch

        result = self.cameras.update(camera, torch.from_numpy(depth), K, image=frame.rgb, pose=pose, stamp=stamp)
        return result.depth.numpy().astype(np.float32, copy=False)

    def _per_frame(self, frame, depth: np.ndarray, key, message: str) -> np.ndarray:
        """A frame that cannot be fused: its camera's past restarts and its own depth goes out (said once per `key`)."""
        self._say_once(key, frame.camera.said(message))
        self.cameras.reset(frame.camera.name)
        return depth
