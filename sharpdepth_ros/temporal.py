"""The depth node's temporal mode (issue 29; the mode itself is `sharpdepth_core.temporal`, docs/METHOD.md
"Temporal mode"): the camera poses it reads, and the step that fuses each camera's published depth with
that camera's past. No node here: the node subscribes the poses and calls `TemporalStep` per frame.

Poses (odometry mode): `geometry_msgs/PoseStamped` (or, duck-typed, `nav_msgs/Odometry`: its
`pose.pose`) of the camera's optical frame in a fixed world frame, camera-to-world; with a
`camera_extrinsic` other than the identity, the poses are the robot base's and the camera's pose is
base-to-world composed with base-to-camera-optical. A frame takes the latest pose stamped at most its
own stamp and at least POSE_TOLERANCE_S before it; the pose of a frame is often published just after
its image, so a frame waits up to POSE_WAIT_S for it. A frame without one restarts its camera's state
and goes out as its per-frame result (said once per camera)."""
from __future__ import annotations

import threading
from collections import deque

import numpy as np

from sharpdepth_core.choices import TEMPORAL_MODES as MODES

POSE_TOLERANCE_S = 0.02  # a pose stamped this much before the image still counts as its pose
POSE_WAIT_S = 0.2  # how long a frame waits for its pose to arrive
MAX_POSES = 256  # poses kept per camera (about 2.5 s of 100 Hz odometry)
IDENTITY_EXTRINSIC = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]  # x y z qx qy qz qw: the poses are the camera's own


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
    """A PoseStamped's (or an Odometry's: `pose.pose`) pose as a 4x4."""
    pose = msg.pose.pose if hasattr(msg.pose, "pose") else msg.pose
    p, q = pose.position, pose.orientation
    return transform(p.x, p.y, p.z, q.x, q.y, q.z, q.w)


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
    activation is its per-frame result."""

    def __init__(self, mode: str, extrinsic=IDENTITY_EXTRINSIC, odometry_topic: str = "pose", warn=None, settings=None):
        from sharpdepth_core.temporal import TemporalCameras  # torch: not for node_parameters (--help)

        if mode not in MODES[1:]:
            raise ValueError(f"temporal must be one of {MODES}, got {mode!r}")
        self.mode, self.cameras, self.warn, self.odometry_topic = mode, TemporalCameras(mode, settings), warn, odometry_topic
        self.base_to_camera = transform(*extrinsic)
        self.poses: dict[str, PoseBuffer] = {}
        self._activation: dict[str, int] = {}
        self._said: set[str] = set()

    @classmethod
    def from_settings(cls, settings: dict, warn=None) -> "TemporalStep | None":
        """The node's step as its parameters ask; None with temporal 'off'."""
        if settings["temporal"] == "off":
            return None
        return cls(settings["temporal"], settings["camera_extrinsic"], settings["odometry_topic"], warn)

    def pose_inputs(self, camera: str) -> list[tuple]:
        """(message type, topic, callback) of the subscriptions camera namespace `camera` needs: its poses in
        odometry mode, none in image mode."""
        if self.mode != "odometry":
            return []
        from geometry_msgs.msg import PoseStamped

        return [(PoseStamped, pose_topic(camera, self.odometry_topic), lambda msg: self.add_pose(camera, msg))]

    def add_pose(self, camera: str, msg) -> None:
        """A pose message for `camera` (the pose callback)."""
        self.poses.setdefault(camera, PoseBuffer()).add(stamp_seconds(msg.header), pose_matrix(msg) @ self.base_to_camera)

    def reset(self, camera: str | None = None) -> None:
        self.cameras.reset(camera)
        if camera is None:
            self._activation.clear()

    def __call__(self, frame, depth: np.ndarray, K: np.ndarray) -> np.ndarray:
        """A frame's published depth (metres HxW, NaN invalid) fused with its camera's past; `frame` a
        `frames.ReadyFrame` (its camera's name, rgb, header and activation)."""
        camera, stamp = frame.camera.name, stamp_seconds(frame.header)
        if self._activation.get(camera) != frame.activation:
            self.cameras.reset(camera)
            self._activation[camera] = frame.activation
        pose = None
        if self.mode == "odometry":
            pose = self.poses.setdefault(camera, PoseBuffer()).at(stamp)
            if pose is None:
                if self.warn is not None and camera not in self._said:
                    self._said.add(camera)
                    self.warn(frame.camera.said(f"temporal odometry: no pose within {POSE_TOLERANCE_S} s before the image "
                                                "stamp; that frame's per-frame depth goes out and the camera's past restarts"))
                self.cameras.reset(camera)
                return depth
        import torch

        result = self.cameras.update(camera, torch.from_numpy(depth), K, image=frame.rgb, pose=pose, stamp=stamp)
        return result.depth.numpy().astype(np.float32, copy=False)
