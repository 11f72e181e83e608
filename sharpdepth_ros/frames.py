"""What the depth node's threads hand each other (its cameras, their frames ready for the model, a
batch's outputs on the host; shared under the node's lock), and what a frame's outputs become: the
messages of its topics, or the reason it was skipped. No node here."""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from sharpdepth_core.images import check_size, message_size
from sharpdepth_core.visualize import colorize_depth
from sharpdepth_ros.calibration import CalibrationRefused
from sharpdepth_ros.conversions import PointCloudBuilder, Rectifier, depth_camera_info, numpy_to_image
from sharpdepth_ros.statistics import Stats

OUTPUTS = {"depth": (Image, "depth/image"), "info": (CameraInfo, "depth/camera_info"), "points": (PointCloud2, "points"),
           "colored": (Image, "depth/colored"), "difference": (Image, "depth/difference"), "confidence": (Image, "depth/confidence")}
# a camera's publishers: key (`frame_messages`) -> (message type, topic under the camera's namespace)


class BadModelOutput(ValueError):
    """The model produced something unpublishable (NaN depth: fp16 overflow, broken weights)."""


@dataclass(eq=False)
class Camera:
    """One camera of the node: its topics under `name` ('' = the node's own namespace), the newest frame
    not yet taken by the worker, the outputs its publishing thread has yet to take, its calibrations,
    counters and publishers."""

    name: str
    stats: Stats = field(default_factory=Stats)
    infos: OrderedDict = field(default_factory=OrderedDict)  # latest CameraInfo of the latest MAX_CAMERAS frame_ids
    pending: tuple | None = None  # (message, decoder, arrival time, batch key)
    outbox: tuple | None = None  # (frame, its batch's outputs, index in the batch, model seconds, settings)
    publishing: threading.Lock = field(default_factory=threading.Lock)  # held while outputs go out; deactivate waits for it
    first_image: float | None = None  # when the first image arrived (the camera_info grace)
    info_topic: str = ""  # camera_info's resolved topic name (set at configure), for the lines about its frames
    said_fallback: bool = False
    rectifier: Rectifier = field(default_factory=Rectifier)
    cloud: PointCloudBuilder = field(default_factory=PointCloudBuilder)
    publishers: dict = field(default_factory=dict)
    reported: Stats = field(default_factory=Stats)  # the counters at the last report

    def topic(self, name: str) -> str:
        return f"{self.name}/{name}" if self.name else name

    def said(self, message: str) -> str:
        """A line about this camera: named when the node has several."""
        return f"{self.name}: {message}" if self.name else message


@dataclass
class ReadyFrame:
    """A camera's frame ready for the model: decoded, its calibration found, rectified where needed."""

    camera: Camera
    header: object
    rgb: np.ndarray
    info: CameraInfo
    K: np.ndarray | None  # for the metric model; None: it runs without K
    seen: np.ndarray | None  # pixels the camera saw (rectified frames)
    arrived: float
    decode_s: float
    activation: int  # the activation it was taken in: a frame of an earlier one is never published


@dataclass
class HostOutputs:
    """A batch's outputs as the publisher reads them: depth, difference and confidence on the host."""

    depth: object  # [B, 1, H, W]
    difference: object | None
    timings: dict[str, float]
    fallback: list[bool]
    confidence: object | None = None  # [B, 1, H, W] in [0, 1]; None: the pipeline gives none


def batch_key(msg, max_pixels: int, camera: str) -> tuple:
    """A frame's (height, width) from its header, before anything is copied: frames of one key can share
    a model call; ValueError above `max_pixels` (0: no limit, and a size the header does not give is
    a batch of the camera's own)."""
    try:
        size = message_size(msg)
        if max_pixels:
            check_size(*size, max_pixels, "image")
    except ValueError:
        if max_pixels:
            raise
        return ("unsized", camera)
    return size


def image_batch(rgbs: list[np.ndarray]) -> torch.Tensor:
    """HxWx3 uint8 images -> uint8 [B, 3, H, W], contiguous: a camera alone then gets exactly the depth
    `pipeline(rgb)` gives (measured; the permuted view's layout rounds differently in the convolutions)."""
    return torch.from_numpy(np.stack(rgbs)).permute(0, 3, 1, 2).contiguous()


def on_host(x):
    return x.detach().cpu() if isinstance(x, torch.Tensor) else x


def image_of(x) -> np.ndarray:
    """[B,1,H,W] or [H,W] tensor/array -> a writable float32 HxW numpy array (first image)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float32)
    while x.ndim > 2:
        x = x[0]
    return np.array(x, dtype=np.float32)


def published_depth(out: HostOutputs, i: int, seen: np.ndarray | None) -> np.ndarray:
    """Image `i`'s depth as published: metres, NaN where invalid (REP 118) or not seen by the camera;
    BadModelOutput when the model returned non-finite values."""
    depth = image_of(out.depth[i])
    bad = int((~np.isfinite(depth)).sum())
    if bad:
        raise BadModelOutput(f"the model returned {bad} non-finite depth values of {depth.size}")
    depth[depth <= 0] = np.nan
    if seen is not None and seen.shape == depth.shape:
        depth[~seen] = np.nan  # rectified pixels the camera did not see
    return depth


def published_confidence(out: HostOutputs, i: int, depth: np.ndarray) -> np.ndarray | None:
    """Image `i`'s confidence as published: in [0, 1] on the published depth's grid (resized as the
    depth is, where the sizes differ), 0 where that depth is NaN (invalid, or not seen by the camera);
    None when the pipeline gives no confidence."""
    if out.confidence is None:
        return None
    confidence = image_of(out.confidence[i])
    if confidence.shape != depth.shape:
        confidence = cv2.resize(confidence, depth.shape[::-1], interpolation=cv2.INTER_LINEAR)
    confidence = np.clip(np.nan_to_num(confidence, nan=0.0), 0.0, 1.0)
    confidence[np.isnan(depth)] = 0.0
    return confidence


def masked_depth(depth: np.ndarray, confidence: np.ndarray | None, min_confidence: float) -> np.ndarray:
    """`depth` with NaN ("no return", REP 118) where `confidence` < `min_confidence`; `depth` itself
    (not a copy) when nothing is masked (min_confidence 0 = off, or no confidence)."""
    if confidence is None or min_confidence <= 0:
        return depth
    low = confidence < min_confidence
    return np.where(low, np.float32(np.nan), depth).astype(np.float32, copy=False) if low.any() else depth


def frame_messages(frame: ReadyFrame, out: HostOutputs, i: int, settings: dict, temporal=None) -> dict:
    """publisher key -> message of image `i` of a batch's outputs, one camera's frame, as `settings` ask
    (the cloud from the depth CameraInfo's K: a rectified camera has K = P). Pixels whose confidence is
    below `min_confidence` are NaN in the cloud and, with `mask_depth`, in the depth image and its
    picture; the confidence image itself is never masked. `temporal` (`temporal.TemporalStep`, the
    node's temporal mode): the depth fused with the camera's past, which every output then shows."""
    depth = published_depth(out, i, frame.seen)
    header, rgb = frame.header, frame.rgb
    info = depth_camera_info(frame.info, rgb.shape[:2], depth.shape, header)
    K = np.reshape(info.k, (3, 3))  # the depth grid's intrinsics: the temporal step's and the cloud's
    if temporal is not None:
        depth = temporal(frame, depth, K)
    confidence = published_confidence(out, i, depth)
    difference = None if out.difference is None else out.difference[i]
    trusted = masked_depth(depth, confidence, settings["min_confidence"])
    shown = trusted if settings["mask_depth"] else depth
    messages = {"depth": numpy_to_image(shown, "32FC1", header), "info": info}
    if confidence is not None and settings["publish_confidence"]:
        messages["confidence"] = numpy_to_image(confidence, "32FC1", header)
    if settings["publish_points"]:
        color = None
        if settings["cloud_rgb"]:
            color = rgb if rgb.shape[:2] == depth.shape else cv2.resize(rgb, depth.shape[::-1], interpolation=cv2.INTER_AREA)
        messages["points"] = frame.camera.cloud(trusted, K, header, color, settings["cloud_decimation"],
                                                settings["cloud_max_range"])
    if settings["publish_colored"]:
        messages["colored"] = numpy_to_image(colorize_depth(shown), "rgb8", header)
    if settings["publish_difference"] and difference is not None:
        messages["difference"] = numpy_to_image(image_of(difference), "32FC1", header)
    return messages


def problem(error: Exception) -> tuple[str, str]:
    """(kind, message) of a frame's failure, for its counters and its log line."""
    if isinstance(error, torch.cuda.OutOfMemoryError):  # torch < 2.5 has only this name
        return "out-of-memory", f"out of memory ({str(error).splitlines()[0]}); lower processing_res or use dtype float16/bfloat16"
    if isinstance(error, BadModelOutput):
        return "model", str(error)
    if isinstance(error, CalibrationRefused):
        return "calibration", str(error)
    if isinstance(error, ValueError):  # bad image, no calibration yet
        return "input", str(error)
    return "error", f"unexpected {type(error).__name__}: {error}"  # a bug must not take the camera pipeline down: said loudly
