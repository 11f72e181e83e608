"""Replay publisher: `image_raw` + `camera_info` at a set rate, so the whole system runs without a camera.

Sources (parameter `source`): `synthetic` (scenes from `sharpdepth_core.synthetic.render_scene`,
with their exact K), a folder of images, a video file (OpenCV), or a rosbag2 / MCAP / ROS 1 bag
(`rosbags`, no ROS install needed; Image or CompressedImage on `topic`, calibration from the
sibling `camera_info` topic when the bag has one, paired by header stamp). Sources without
calibration get a pinhole K from `fov_deg` (said once). Every frame is re-stamped with the current
time and `frame_id`. Like the node, it lives in the `/camera` namespace by default. With `sequence`
> 0 the synthetic source is a moving camera instead (`render_sequence`: a walk through scene `seed`)
and each frame's ground-truth pose goes out on `pose` (PoseStamped in "world", stamped as the image).
With `cameras` (namespaces relative to the replay's) it stands for several cameras at once: each
tick takes the source's next frame for each camera in turn (two cameras: frames 0, 2, 4, ... on the
first, 1, 3, 5, ... on the second), all stamped alike, for a multi-camera SharpDepth node.

Images are read as the node, `predict` and the trainer read them (`sharpdepth_core.images`: size
from the header first, `max_input_pixels`, regular files only) and recordings through the trainer's
recovering reader (`sharpdepth_core.recordings`: a truncated MCAP plays as far as it is complete).
An unreadable frame is skipped with one log line (once per frame), never the end of the source.

    ros2 run sharpdepth_ros sharpdepth_replay --ros-args -p source:=synthetic -p rate:=5.0
    ros2 run sharpdepth_ros sharpdepth_replay --ros-args -p source:=/data/run1.mcap -p topic:=/camera/image_raw
    .venv/bin/sharpdepth_replay --ros-args -p source:=photos/      # in the virtualenv, without ros2
"""
from __future__ import annotations

import bisect
import itertools
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from sharpdepth_core.images import DEFAULT_MAX_INPUT_PIXELS, IMAGE_SUFFIXES, check_size, list_images, message_to_rgb8, read_image_file
from sharpdepth_core.recordings import (
    IMAGE_MSGTYPES,
    RecordingError,
    is_recording,
    no_image_reason,
    open_recording,
    reader_errors,
    recording_parts,
    truncation,
)
from sharpdepth_ros.conversions import camera_info, numpy_to_image, pinhole_K, pose_stamped
from sharpdepth_ros.params import BOOL, FLOAT, INT, STR, STR_ARRAY, camera_names_problem, declare_parameters, descriptor, run

WORLD_FRAME = "world"  # the frame of a synthetic sequence's poses (the room: z up, floor at z = 0)
SUBSCRIBER_WAIT_S = 10.0  # a timer-paced replay waits this long for its subscribers before the first frame
Warn = Callable[[str], None]  # where a source says what it skipped or recovered


@dataclass(frozen=True)
class SourceFrame:
    """One camera frame from a source; `info` is the recorded calibration when the source has one;
    `assumed`: K is the fov_deg pinhole, not a calibration."""

    rgb: np.ndarray  # uint8 [H, W, 3]
    K: np.ndarray  # float64 [3, 3]
    index: int  # position in the source (scene number for synthetic)
    info: CameraInfo | None = None
    assumed: bool = False
    pose: np.ndarray | None = None  # camera-to-world 4x4 (optical frame), where the source knows it


def synthetic_scene(seed: int, width: int, height: int, style: str, fov_deg: float = 0.0):
    """Scene `seed` seen through a pinhole of `fov_deg` (a robot's one camera) or, with 0, the scene's
    own drawn field of view; with its ground-truth depth (what the demo scores against)."""
    from sharpdepth_core.synthetic import render_scene

    return render_scene(seed, width, height, K=pinhole_K(width, height, fov_deg) if fov_deg else None, style=style)


def synthetic_frames(scenes: int, width: int, height: int, seed: int, style: str, fov_deg: float = 0.0) -> Iterator[SourceFrame]:
    """Scenes seed, seed+1, ... (`synthetic_scene`) with their ground-truth K."""
    for i in range(scenes):
        scene = synthetic_scene(seed + i, width, height, style, fov_deg)
        yield SourceFrame(scene.rgb, scene.K, seed + i)


def synthetic_sequence(frames: int, width: int, height: int, seed: int, style: str, fov_deg: float, rate: float):
    """A camera walking through scene `seed` (`render_sequence`), `rate` frames per second: a moving
    camera with its ground-truth poses; a pinhole of `fov_deg`, or with 0 the scene's own field of view."""
    from sharpdepth_core.synthetic import render_sequence

    return render_sequence(seed, frames, width, height, K=pinhole_K(width, height, fov_deg) if fov_deg else None,
                           style=style, rate=rate)


def folder_frames(folder: Path, fov_deg: float, max_pixels: int, warn: Warn) -> Iterator[SourceFrame]:
    files = list_images(folder)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {folder}")
    for i, path in enumerate(files):
        try:
            rgb = read_image_file(path, max_pixels)
        except ValueError as error:  # the message names the file
            warn(str(error))
            continue
        yield SourceFrame(rgb, pinhole_K(rgb.shape[1], rgb.shape[0], fov_deg), i, assumed=True)


def video_frames(path: Path, fov_deg: float, max_pixels: int) -> Iterator[SourceFrame]:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"OpenCV cannot open video {path}")
    try:
        check_size(capture.get(cv2.CAP_PROP_FRAME_HEIGHT), capture.get(cv2.CAP_PROP_FRAME_WIDTH), max_pixels, f"video {path}")
        i = 0
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            yield SourceFrame(np.ascontiguousarray(bgr[..., ::-1]), pinhole_K(bgr.shape[1], bgr.shape[0], fov_deg), i, assumed=True)
            i += 1
    finally:
        capture.release()
    if i == 0:
        raise ValueError(f"video {path} has no readable frame")


def _print(line: str) -> None:
    print(line, file=sys.stderr)


def stamp_ns(header) -> int:
    """A header's stamp in nanoseconds (the key that pairs the messages of one frame)."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def bag_frames(path: Path, topic: str, fov_deg: float, max_pixels: int, warn: Warn, say: Warn = _print) -> Iterator[SourceFrame]:
    """Image or CompressedImage messages of `topic` (default: the first image topic) from a bag; `say`
    gets one line naming the topic, message type, image size, frame count and calibration topic.

    Each image gets the camera_info of the same header stamp, else the latest one stamped before it
    (log order says nothing: a recorder may write a frame's camera_info after its image); an image
    older than every camera_info gets the fov_deg pinhole (`assumed`).
    """
    try:
        yield from _recorded_frames(path, recording_parts(path), topic, fov_deg, max_pixels, warn, say)
    except reader_errors() as error:
        raise RecordingError(f"recording {path} cannot be read: {error}") from error


def _recorded_frames(path: Path, parts: list, topic: str, fov_deg: float, max_pixels: int, warn: Warn, say: Warn) -> Iterator[SourceFrame]:
    with open_recording(parts) as reader:
        images = [c for c in reader.connections if c.msgtype in IMAGE_MSGTYPES and (not topic or c.topic == topic)]
        if not images:
            found = sorted({f"{c.topic} ({c.msgtype})" for c in reader.connections})  # none when nothing is readable
            wanted = f"no image topic {topic}" if topic else "no image topic"
            listed = f"; topics: {', '.join(found)}" if found else ""
            raise ValueError(f"bag {path} has {wanted}{listed}{no_image_reason(path, parts)}")
        kept = truncation(parts)
        if kept:
            warn(f"recording {path} is truncated (no MCAP footer: the recorder did not finish it); replaying its complete "
                 f"records ({kept})")
        image_topic = images[0].topic
        base = image_topic.removesuffix("/compressed").rsplit("/", 1)[0]
        info_connections = [c for c in reader.connections if c.topic == f"{base}/camera_info"]
        by_stamp: dict[int, CameraInfo] = {}  # camera_info is small: all of it, once, keyed by stamp
        for connection, _, raw in reader.messages(connections=info_connections) if info_connections else ():
            msg = reader.deserialize(raw, connection.msgtype)
            by_stamp[stamp_ns(msg.header)] = _ros_camera_info(msg)
        stamps = sorted(by_stamp)
        chosen = [c for c in reader.connections if c.topic == image_topic]
        others = sorted({c.topic for c in reader.connections if c.msgtype in IMAGE_MSGTYPES} - {image_topic})
        calibration = (f"calibration from {base}/camera_info ({len(by_stamp)} stamps)" if by_stamp
                       else f"no {base}/camera_info: the fov_deg {fov_deg:g} pinhole")
        said = False
        for i, (connection, t, raw) in enumerate(reader.messages(connections=chosen)):
            try:
                msg = reader.deserialize(raw, connection.msgtype)
                rgb = message_to_rgb8(msg, max_pixels)
            except (ValueError, *reader_errors()) as error:
                warn(f"{path} {image_topic} @ {t}: {error}")
                continue
            if not said:  # the size is known from the first readable frame
                said = True
                say(f"recording {path}: replaying {image_topic} ({connection.msgtype}, {rgb.shape[1]}x{rgb.shape[0]}, "
                    f"{sum(c.msgcount for c in chosen)} frames); {calibration}"
                    + (f"; other image topics: {', '.join(others)} (choose with topic)" if others else ""))
            at = bisect.bisect_right(stamps, stamp_ns(msg.header))  # stamps[at - 1] <= the image's stamp
            if at:
                info = by_stamp[stamps[at - 1]]
                yield SourceFrame(rgb, np.reshape(info.k, (3, 3)), i, info)
            else:
                yield SourceFrame(rgb, pinhole_K(rgb.shape[1], rgb.shape[0], fov_deg), i, assumed=True)


def _ros_camera_info(info) -> CameraInfo:
    """rosbags' CameraInfo -> sensor_msgs CameraInfo, calibration fields only."""
    out = CameraInfo(height=int(info.height), width=int(info.width), distortion_model=info.distortion_model)
    out.d = [float(v) for v in info.d]
    out.k, out.r, out.p = (np.asarray(getattr(info, n), dtype=np.float64).ravel() for n in ("k", "r", "p"))
    out.binning_x, out.binning_y = int(info.binning_x), int(info.binning_y)
    out.roi.x_offset, out.roi.y_offset = int(info.roi.x_offset), int(info.roi.y_offset)
    out.roi.height, out.roi.width, out.roi.do_rectify = int(info.roi.height), int(info.roi.width), bool(info.roi.do_rectify)
    return out


def source_frames(source: str, *, topic: str = "", fov_deg: float = 60.0, scenes: int = 8, width: int = 320,
                height: int = 240, seed: int = 0, style: str = "indoor", synthetic_fov_deg: float = 0.0,
                max_pixels: int = DEFAULT_MAX_INPUT_PIXELS, warn: Warn = _print, say: Warn = _print) -> Iterator[SourceFrame]:
    """The frames of `source`: "synthetic", an image folder, a video file or a bag (file or folder);
    unreadable frames are skipped, each said once through `warn`; a bag says what it plays through `say`."""
    if source == "synthetic":
        return synthetic_frames(scenes, width, height, seed, style, synthetic_fov_deg)
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"replay source {source} does not exist (expected 'synthetic', an image folder, a video or a bag)")
    if is_recording(path):
        return bag_frames(path, topic, fov_deg, max_pixels, warn, say)
    if path.is_dir():
        return folder_frames(path, fov_deg, max_pixels, warn)
    return video_frames(path, fov_deg, max_pixels)


PARAMETERS = {
    "source": ("synthetic", descriptor("'synthetic', an image folder, a video file, or a rosbag2/MCAP bag", STR, read_only=True)),
    "topic": ("", descriptor("bag only: the Image/CompressedImage topic ('' = the first one)", STR, read_only=True)),
    "cameras": ([""], descriptor("camera namespaces relative to the replay's, each with its own image_raw, camera_info "
                                 "(and pose); the source's frames are dealt to them in turn; [''] = the replay's own namespace",
                                 STR_ARRAY, read_only=True)),
    "rate": (10.0, descriptor("frames per second (of each camera)", FLOAT, read_only=True, floating=(0.1, 1000.0))),
    "frame_id": ("camera_optical_frame", descriptor("header.frame_id of the published frames", STR, read_only=True)),
    "loop": (True, descriptor("start again at the end of the source", BOOL, read_only=True)),
    "count": (0, descriptor("stop after this many frames of each camera (0 = never)", INT, read_only=True, integer=(0, 10**9))),
    "max_input_pixels": (DEFAULT_MAX_INPUT_PIXELS, descriptor("largest image read, width x height, checked from the header "
                                                              "before decoding; larger frames are skipped (0 = no limit)", INT,
                                                              read_only=True, integer=(0, 2**62))),
    "fov_deg": (60.0, descriptor("horizontal field of view for sources without calibration", FLOAT, read_only=True, floating=(1.0, 179.0))),
    "scenes": (8, descriptor("synthetic: number of distinct scenes (rendered once, then replayed)", INT, read_only=True, integer=(1, 10000))),
    "width": (320, descriptor("synthetic: image width", INT, read_only=True, integer=(8, 4096))),
    "height": (240, descriptor("synthetic: image height", INT, read_only=True, integer=(8, 4096))),
    "seed": (0, descriptor("synthetic: seed of the first scene", INT, read_only=True, integer=(0, 2**31 - 1))),
    "style": ("indoor", descriptor("synthetic: 'indoor', 'office' or 'toy'", STR, read_only=True)),
    "sequence": (0, descriptor("synthetic: publish a moving camera instead of still scenes: this many frames of a walk "
                               "through scene `seed`, at `rate`, with the camera's poses on `pose` (0 = still scenes)",
                               INT, read_only=True, integer=(0, 100000))),
    "synthetic_fov_deg": (0.0, descriptor("synthetic: one camera of this horizontal field of view; 0 = each scene's own (55-80°)",
                                          FLOAT, read_only=True, floating=(0.0, 179.0))),
}


class ReplayPublisher(Node):
    """Publishes a source's frames as `image_raw` (rgb8) + `camera_info`, camera_info first, in each
    camera namespace of `cameras`.

    `on_frame(header, frame)` is called after each publication (the demo matches outputs to ground
    truth with it); `timer=False` leaves pacing to the caller's `publish_next()`. Paced by its timer,
    it waits up to SUBSCRIBER_WAIT_S for a subscriber on every camera's image_raw and camera_info before
    the first frame (DDS discovery takes a moment: frames published before it are lost). `ticks` counts
    ticks (one frame on every camera), `sent` the frames published per camera, `heard` those that had a
    subscriber.
    """

    def __init__(self, *, on_frame: Callable[[object, SourceFrame], None] | None = None, timer: bool = True, **node_kwargs) -> None:
        node_kwargs.setdefault("namespace", "camera")  # the node's: image_raw is /camera/image_raw for both
        super().__init__("replay", **node_kwargs)
        self._params = p = declare_parameters(self, PARAMETERS)
        self._on_frame = on_frame
        self._cache: list[SourceFrame] = []  # synthetic scenes render once, so high replay rates are cheap
        self._said: set[str] = set()  # lines already logged (`_first_time`)
        self._frames = self._open()
        self.ticks = 0
        self.heard = 0
        self.done = False
        self._said_assumed = False
        qos = QoSProfile(depth=5)  # reliable: both sensor-data (best effort) and reliable subscribers match
        names = p["cameras"]
        if camera_names_problem(names):
            raise ValueError(camera_names_problem(names))
        self._names = names
        self.sent = [0] * len(names)
        self._cameras = [{"image": self.create_publisher(Image, _topic(name, "image_raw"), qos),
                          "info": self.create_publisher(CameraInfo, _topic(name, "camera_info"), qos),
                          "pose": self.create_publisher(PoseStamped, _topic(name, "pose"), qos) if self._sequence() else None}
                         for name in names]
        self._timer = self.create_timer(1.0 / p["rate"], self.publish_next) if timer else None
        self._wait_until = time.monotonic() + SUBSCRIBER_WAIT_S if timer else None  # None: not waiting
        self._said_waiting = False
        topics = ", ".join(self.resolve_topic_name(_topic(name, "image_raw")) for name in names)
        self.get_logger().info(f"replaying {p['source']} at {p['rate']:g} Hz as {topics}")

    def _open(self) -> Iterator[SourceFrame]:
        """The source from its start; reads the first frame now so that a bad source fails at startup."""
        p = self._params
        if p["source"] == "synthetic" and self._cache:
            return iter(self._cache)
        if self._sequence():
            scenes = synthetic_sequence(p["sequence"], p["width"], p["height"], p["seed"], p["style"], p["synthetic_fov_deg"], p["rate"])
            self._cache = [SourceFrame(sc.rgb, sc.K, t, pose=sc.camera_to_world) for t, sc in enumerate(scenes)]
            return iter(self._cache)
        frames = source_frames(p["source"], topic=p["topic"], fov_deg=p["fov_deg"], scenes=p["scenes"], width=p["width"],
                             height=p["height"], seed=p["seed"], style=p["style"], synthetic_fov_deg=p["synthetic_fov_deg"],
                             max_pixels=p["max_input_pixels"], warn=self._skip, say=self._say)
        if p["source"] == "synthetic":
            frames = self._cached(frames)
        first = next(frames, None)
        if first is None:
            raise ValueError(f"replay source {p['source']} has no frames")
        return itertools.chain([first], frames)

    def _say(self, line: str) -> None:
        """What a recording plays: one line at start-up."""
        if self._first_time(line):
            self.get_logger().info(line)

    def _sequence(self) -> bool:
        return self._params["source"] == "synthetic" and self._params["sequence"] > 0

    def _skip(self, line: str) -> None:
        """One log line per skipped frame (or recovered recording)."""
        if self._first_time(line):  # (separate call sites: rclpy fixes a site's severity)
            self.get_logger().warning(f"replay: {line}")

    def _first_time(self, line: str) -> bool:
        """True the first time only: a looping source does not say a line again."""
        new = line not in self._said
        self._said.add(line)
        return new

    def _cached(self, frames: Iterator[SourceFrame]) -> Iterator[SourceFrame]:
        for frame in frames:
            self._cache.append(frame)
            yield frame

    def publish_next(self) -> bool:
        """Publish the next frame on every camera; False once the source (or `count`) is exhausted."""
        if self.done:
            return False
        if self._waiting():
            return True
        if self._params["count"] and self.ticks >= self._params["count"]:
            return self._finish()
        stamp = self.get_clock().now().to_msg()
        sent = unreadable = 0
        for i, publishers in enumerate(self._cameras):
            try:
                frame = self._next_frame()
            except ValueError as error:  # a recording unreadable past some point: what it gave was played
                self._skip(str(error))
                unreadable += 1
                continue
            if frame is None:
                break
            self.heard += self._send(publishers, frame, Header(stamp=stamp, frame_id=self._params["frame_id"]))
            self.sent[i] += 1
            sent += 1
        if sent:
            self.ticks += 1
        elif not unreadable:
            return self._finish()
        return True

    def _waiting(self) -> bool:
        """Whether the first frame still waits for subscribers (one line when it starts waiting, one if it gives up)."""
        if self._wait_until is None:
            return False
        missing = [c[k].topic_name for c in self._cameras for k in ("image", "info") if not c[k].get_subscription_count()]
        if missing and time.monotonic() < self._wait_until:
            if not self._said_waiting:
                self._said_waiting = True
                self.get_logger().info(f"waiting up to {SUBSCRIBER_WAIT_S:g} s for a subscriber on {', '.join(missing)} "
                                       "before the first frame")
            return True
        if missing:
            self.get_logger().warning(f"no subscriber on {', '.join(missing)} after {SUBSCRIBER_WAIT_S:g} s: publishing anyway")
        self._wait_until = None
        return False

    def _finish(self) -> bool:
        self.done = True
        if self._timer is not None:
            self._timer.cancel()
        self.get_logger().info(finished_line(self._names, self.sent, self.heard))
        return False

    def _next_frame(self) -> SourceFrame | None:
        frame = next(self._frames, None)
        if frame is None and self._params["loop"]:
            self._frames = self._open()
            frame = next(self._frames, None)
        return frame

    def _send(self, publishers: dict, frame: SourceFrame, header: Header) -> bool:
        """Publish `frame` on one camera's topics; whether its image topic had a subscriber."""
        if frame.assumed and not self._said_assumed:
            self._said_assumed = True
            self.get_logger().warning(f"frame {frame.index} of {self._params['source']} has no calibration: camera_info carries "
                                      f"a pinhole K of fov_deg {self._params['fov_deg']:g} degrees (said once)")
        info = frame.info if frame.info is not None else camera_info(frame.K, frame.rgb.shape[:2], header)
        info.header = header
        publishers["info"].publish(info)
        publishers["image"].publish(numpy_to_image(frame.rgb, "rgb8", header))
        if frame.pose is not None and publishers["pose"] is not None:  # stamped like the image it belongs to
            publishers["pose"].publish(pose_stamped(frame.pose, Header(stamp=header.stamp, frame_id=WORLD_FRAME)))
        if self._on_frame is not None:
            self._on_frame(header, frame)
        return publishers["image"].get_subscription_count() > 0


def finished_line(cameras: list[str], sent: list[int], heard: int) -> str:
    """The replay's last line: frames actually published (per camera when there are several), and how
    many of them had a subscriber (0: nothing listened, the frames went nowhere)."""
    per_camera = f": {', '.join(f'{c} {n}' for c, n in zip(cameras, sent))}" if len(cameras) > 1 else ""
    return f"replay finished after {sum(sent)} frames{per_camera} ({heard} with a subscriber)"


def _topic(camera: str, name: str) -> str:
    """`name` in the namespace of `camera` ('' = the node's own)."""
    return f"{camera}/{name}" if camera else name


def _spin_until_done(node: ReplayPublisher) -> None:
    while rclpy.ok() and not node.done:
        rclpy.spin_once(node, timeout_sec=0.1)


def main(args: list[str] | None = None) -> int:
    return run("replay", ReplayPublisher, _spin_until_done, __doc__, PARAMETERS, args)


if __name__ == "__main__":
    sys.exit(main())
