"""Which camera model a frame gets: the depth node's calibration policy (no node here: unit-tested alone).

A frame uses the latest camera_info of its frame_id. Without one it waits (is skipped) while
camera_info is expected: use_camera_intrinsics is true and camera_info has arrived on the camera's
topic, or the camera's first image is younger than CAMERA_INFO_GRACE_S. Otherwise it gets a
centred pinhole of fov_deg and the metric model runs without K. An implausible K, P, ROI or binning
(`geometry.check_calibration`) also gets that pinhole, said in one line; a rectification that cannot
be used (D, R) skips the frame, since its pixels are where the camera model cannot say.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from sensor_msgs.msg import CameraInfo

from sharpdepth_core.geometry import fallback_problem
from sharpdepth_ros.conversions import Rectifier, camera_info, has_distortion, image_intrinsics, pinhole_K

CAMERA_INFO_GRACE_S = 2.0  # images wait this long for a first camera_info before the fov_deg fallback


class CalibrationRefused(ValueError):
    """The frame's camera_info cannot be used and no fallback fits: the frame is skipped."""


@dataclass
class CameraModel:
    """A frame's image on the grid the depth is published on, with the camera model it was taken with."""

    rgb: np.ndarray
    info: CameraInfo
    K: np.ndarray
    calibrated: bool  # K is the camera's calibration, not the fov_deg pinhole
    seen: np.ndarray | None  # HxW pixels the camera saw (rectified frames); None: all
    refused: str | None = None  # why the frame's camera_info was refused for the pinhole (one throttled line)


def frame_info(infos: Mapping[str, CameraInfo], frame_id: str, image_hw: tuple[int, int], header, settings: dict,
               waited_s: float, info_topic: str) -> tuple[CameraInfo, bool]:
    """(this frame's CameraInfo, whether it is a real calibration rather than the fov_deg pinhole);
    ValueError while the frame must wait for its camera_info."""
    info = infos.get(frame_id)
    if info is not None:
        return info, True
    if settings["use_camera_intrinsics"] and (infos or waited_s < CAMERA_INFO_GRACE_S):
        seen = f" (camera_info arrives for {', '.join(repr(k) for k in infos)})" if infos else ""
        raise ValueError(f"no camera_info for frame_id '{frame_id}' yet on {info_topic}{seen}")
    return assumed_info(image_hw, header, settings["fov_deg"]), False


def fallback_notice(settings: dict, info_topic: str) -> str:
    """The line said once per camera when its frames first get the fov_deg pinhole."""
    why = ("use_camera_intrinsics is false" if not settings["use_camera_intrinsics"]
           else f"no camera_info on {info_topic} within {CAMERA_INFO_GRACE_S:g} s")
    return (f"{why}: frames without camera_info get a pinhole K of fov_deg {settings['fov_deg']:g} degrees (horizontal, "
            "centred) for depth/camera_info and the cloud; the metric model runs without K. Set fov_deg to your lens, "
            "or publish camera_info")


def assumed_info(image_hw: tuple[int, int], header, fov_deg: float) -> CameraInfo:
    """The fov_deg pinhole of frames without a usable calibration; ValueError for an image of a
    degenerate aspect ratio (`geometry.fallback_problem`)."""
    problem = fallback_problem(image_hw, fov_deg)
    if problem:
        raise ValueError(problem)
    h, w = image_hw
    return camera_info(pinhole_K(w, h, fov_deg), image_hw, header)


def camera_model(rgb: np.ndarray, info: CameraInfo, calibrated: bool, header, fov_deg: float, rectifier: Rectifier) -> CameraModel:
    """The frame on the fov_deg pinhole when its K cannot be used, rectified when it is distorted;
    CalibrationRefused when neither can describe it."""
    refused = f"camera_info of frame_id '{header.frame_id}' refused: "
    try:
        K = image_intrinsics(info, rgb.shape[:2])
    except ValueError as error:
        if not calibrated:
            raise
        problem = fallback_problem(rgb.shape[:2], fov_deg)
        if problem:
            raise CalibrationRefused(f"{refused}{error}; {problem}; its frames are skipped") from None
        info = assumed_info(rgb.shape[:2], header, fov_deg)
        return CameraModel(rgb, info, np.reshape(info.k, (3, 3)), False, None,
                           f"{refused}{error}; its frames get the fov_deg {fov_deg:g} pinhole K and the metric model runs without K")
    if not has_distortion(info):  # pinhole cameras (all-zero D) skip rectification entirely
        return CameraModel(rgb, info, K, calibrated, None)
    try:
        rgb, info, seen = rectifier(rgb, info)
    except ValueError as error:
        raise CalibrationRefused(f"{refused}{error}; its frames are skipped") from None
    return CameraModel(rgb, info, np.reshape(info.k, (3, 3)), calibrated, seen)  # the rectified pinhole: on the image grid
