"""The demo's topics, its MCAP recorder, and the threads that spin its nodes.

The SharpDepth node spins on its own executor so that the demo can hold its callbacks while the replay
publishes one frame on every camera: the node then takes all the cameras' images at once and runs them
as one batch, as it does when a live node is busy (in lock-step, with the worker idle, it would take
the first camera's image alone the moment it arrived).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from sharpdepth_ros.node import DiagnosticArray  # None without diagnostic_msgs
from sharpdepth_ros.replay import stamp_ns

NS = "/camera"
CAMERA_TOPICS = {"image_raw": Image, "camera_info": CameraInfo, "depth/image": Image, "depth/camera_info": CameraInfo,
                 "points": PointCloud2, "depth/colored": Image, "depth/difference": Image, "depth/confidence": Image}
OUTPUTS = ("depth/image", "depth/camera_info", "points", "depth/difference")  # under each camera's namespace: scored


def camera_ns(name: str) -> str:
    """A camera's namespace: the node's own for the one camera (""), else under it (the `cameras` parameter)."""
    return f"{NS}/{name}" if name else NS


def topics_of(cameras: list[str]) -> dict[str, type]:
    """Every topic the demo records for these cameras, with its message type."""
    return {**{f"{camera_ns(c)}/{t}": kind for c in cameras for t, kind in CAMERA_TOPICS.items()},
            **({"/diagnostics": DiagnosticArray} if DiagnosticArray else {})}


TOPICS = topics_of([""])


class BagRecorder:
    """Writes every message of `topics` to an MCAP bag (rosbags, the bytes as received) and keeps
    the outputs deserialised by stamp for scoring."""

    def __init__(self, node: Node, bag_dir: Path, topics: dict[str, type], keep: tuple[str, ...]) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        typestore = get_typestore(Stores.LATEST)
        self.writer = Writer(bag_dir, version=9, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        self._lock = threading.Lock()
        self._node = node
        self.kept: dict[str, dict[int, object]] = {t: {} for t in keep}
        self.arrival: dict[tuple[str, int], float] = {}
        self.counts = {t: 0 for t in topics}
        self.busy_s = 0.0  # time spent in this recorder's callbacks (it shares the process with the node)
        for topic, msg_type in topics.items():
            name = f"{msg_type.__module__.split('.')[0]}/msg/{msg_type.__name__}"
            connection = self.writer.add_connection(topic, name, typestore=typestore)
            node.create_subscription(msg_type, topic, self._callback(topic, msg_type, connection), QoSProfile(depth=10), raw=True)

    def _callback(self, topic: str, msg_type: type, connection):
        def record(data: bytes) -> None:
            t0 = time.perf_counter()
            with self._lock:
                self.writer.write(connection, self._node.get_clock().now().nanoseconds, data)
                self.counts[topic] += 1
            if topic in self.kept:
                msg = deserialize_message(data, msg_type)
                stamp = stamp_ns(msg.header)
                self.arrival[(topic, stamp)] = time.perf_counter()
                self.kept[topic][stamp] = msg
            self.busy_s += time.perf_counter() - t0

        return record

    def close(self) -> None:
        with self._lock:
            self.writer.close()


class Spinner:
    """A thread spinning `nodes` on their own executor until `stop`; `held()` parks it between callbacks."""

    def __init__(self, context, nodes: list[Node]) -> None:
        self._executor = SingleThreadedExecutor(context=context)
        for node in nodes:
            self._executor.add_node(node)
        self._stop, self._hold, self._parked = threading.Event(), threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            if self._hold.is_set():
                self._parked.set()
                time.sleep(0.001)
                continue
            self._executor.spin_once(timeout_sec=0.05)

    @contextmanager
    def held(self) -> Iterator[None]:
        """No callback of these nodes runs inside the block: their messages wait, to be taken together after it."""
        self._parked.clear()
        self._hold.set()
        self._parked.wait(timeout=5)
        try:
            yield
        finally:
            self._hold.clear()

    def stop(self) -> None:
        self._stop.set()
        self._hold.clear()
        self._thread.join(timeout=5)


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    """Whether `predicate` came true within `timeout` seconds (polled every 10 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False
