"""Helpers for the ROS tests (test/ros/): an isolated DDS domain per run, bounded waits, messages.

The domain id comes from the pid so that concurrent test runs on one machine (other engineers, CI
jobs) never see each other's topics; discovery stays on loopback. The fixtures are in
test/ros/conftest.py.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable

import numpy as np

DOMAIN_ID = 1 + os.getpid() % 101
os.environ["ROS_DOMAIN_ID"] = str(DOMAIN_ID)
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

import rclpy  # noqa: E402  (after the environment above)
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402


class Spinner:
    """Spins nodes in a background SingleThreadedExecutor until closed."""

    def __init__(self, context: Context, *nodes) -> None:
        self.executor = SingleThreadedExecutor(context=context)
        for node in nodes:
            self.executor.add_node(node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.executor.shutdown(timeout_sec=1)

    def __enter__(self) -> "Spinner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll until predicate() is true; fail the test naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def header(stamp_ns: int, frame_id: str = "test_optical_frame") -> Header:
    h = Header(frame_id=frame_id)
    h.stamp.sec, h.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    return h


def stamp_ns(h) -> int:
    return h.stamp.sec * 1_000_000_000 + h.stamp.nanosec


def encode_image(rgb: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False, hdr=None) -> Image:
    """A camera Image of HxWx3 uint8 RGB in `encoding` with `pad` extra bytes per row.

    Written independently of sharpdepth_ros.conversions (byte by byte from numpy), so that the
    decoder is checked against a separate encoder. mono8 = the red channel; mono16 = red * 256 + 17
    (not byte-symmetric, so a byte-order mistake shows).
    """
    planes = {
        "rgb8": rgb,
        "bgr8": rgb[..., ::-1],
        "rgba8": np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=-1),
        "bgra8": np.concatenate([rgb[..., ::-1], np.full(rgb.shape[:2] + (1,), 7, np.uint8)], axis=-1),
        "mono8": rgb[..., 0],
        "mono16": (rgb[..., 0].astype(np.uint16) * 256 + 17).astype(">u2" if bigendian else "<u2"),
    }
    pixels = np.ascontiguousarray(planes.get(encoding, rgb))
    h, w = rgb.shape[:2]
    rows = pixels.reshape(h, -1).view(np.uint8)
    padded = np.concatenate([rows, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    msg = Image(header=hdr or Header(), height=h, width=w, encoding=encoding, is_bigendian=int(bigendian))
    msg.step = padded.shape[1]
    msg.data = padded.tobytes()
    return msg


def pinhole_info(K: np.ndarray, hw: tuple[int, int], hdr=None) -> CameraInfo:
    info = CameraInfo(header=hdr or Header(), height=hw[0], width=hw[1], distortion_model="plumb_bob")
    info.d = [0.0] * 5
    info.k = np.asarray(K, np.float64).ravel()
    info.r = np.eye(3).ravel()
    info.p = np.concatenate([K, np.zeros((3, 1))], axis=1).ravel()
    return info


def node_parameters(model_dir, **extra) -> list:
    """Parameter overrides for a SharpDepthNode that loads `model_dir` on the CPU."""
    from rclpy.parameter import Parameter

    values = {"model": str(model_dir), "device": "cpu", "stats_period": 1.0, **extra}
    return [Parameter(k, value=v) for k, v in values.items()]


class Probe:
    """A test node recording every message of the given (topic, type) pairs, with arrival times
    (`keep=False`: arrival times only, for long runs whose memory is being measured)."""

    def __init__(self, context: Context, topics: dict[str, type], name: str = "probe", keep: bool = True) -> None:
        self.node = rclpy.create_node(name, context=context)
        self.keep = keep
        self.messages: dict[str, list] = {t: [] for t in topics}
        self.arrivals: dict[str, list[float]] = {t: [] for t in topics}
        for topic, msg_type in topics.items():
            self.node.create_subscription(msg_type, topic, self._recorder(topic), 10)

    def _recorder(self, topic: str):
        def record(msg) -> None:
            if self.keep:
                self.messages[topic].append(msg)
            self.arrivals[topic].append(time.monotonic())

        return record

    def by_stamp(self, topic: str, stamp: int):
        found = [m for m in self.messages[topic] if stamp_ns(m.header) == stamp]
        return found[0] if found else None

    def has(self, topics, stamp: int) -> bool:
        return all(self.by_stamp(t, stamp) is not None for t in topics)

    def connected(self) -> bool:
        """Every recorded topic has a publisher matched to this probe."""
        return all(self.node.count_publishers(t) for t in self.messages)
