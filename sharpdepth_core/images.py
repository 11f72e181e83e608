"""Camera image messages -> numpy, without ROS: shared by the node and the trainer's rosbag reader.

Reads messages by attribute only, so rclpy messages and rosbags' deserialised messages both work.
Encodings: rgb8, bgr8, rgba8, bgra8, mono8, mono16 (and 32FC1 depth), padded `step`, big-endian
16-bit; CompressedImage through OpenCV. Anything else is a ValueError that says what is wrong.
"""
from __future__ import annotations

import cv2
import numpy as np

# encoding -> (channels, dtype of one channel)
ENCODINGS: dict[str, tuple[int, np.dtype]] = {
    "rgb8": (3, np.dtype(np.uint8)),
    "bgr8": (3, np.dtype(np.uint8)),
    "rgba8": (4, np.dtype(np.uint8)),
    "bgra8": (4, np.dtype(np.uint8)),
    "mono8": (1, np.dtype(np.uint8)),
    "mono16": (1, np.dtype(np.uint16)),
    "32FC1": (1, np.dtype(np.float32)),
}
COLOR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16")


def image_to_numpy(msg) -> np.ndarray:
    """Image -> HxW or HxWxC array in the message's encoding; ValueError names what is wrong."""
    if msg.encoding not in ENCODINGS:
        raise ValueError(f"unsupported image encoding '{msg.encoding}' (accepted: {', '.join(ENCODINGS)})")
    channels, dtype = ENCODINGS[msg.encoding]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h == 0 or w == 0:
        raise ValueError(f"image has zero size ({w}x{h})")
    row = w * channels * dtype.itemsize
    if step < row:
        raise ValueError(f"image step {step} is smaller than width x bytes per pixel = {row} ({msg.encoding})")
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size != step * h:
        raise ValueError(f"image data has {data.size} bytes, step x height = {step * h}")
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    pixels = data.reshape(h, step)[:, :row].view(dtype).reshape((h, w, channels) if channels > 1 else (h, w))
    return pixels.astype(pixels.dtype.newbyteorder("="), copy=False)


def to_rgb8(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """An accepted colour/mono encoding -> contiguous HxWx3 uint8 RGB, the models' input."""
    if encoding not in COLOR_ENCODINGS:
        raise ValueError(f"image encoding '{encoding}' is not a colour or mono camera image (accepted: {', '.join(COLOR_ENCODINGS)})")
    if encoding == "mono16":
        # Per-image scaling: 16-bit cameras often fill only 10-12 bits, and the models see relative
        # intensities anyway.
        pixels = (pixels.astype(np.float32) * (255.0 / max(int(pixels.max()), 1))).round().astype(np.uint8)
        encoding = "mono8"
    if encoding == "mono8":
        return np.ascontiguousarray(np.repeat(pixels[..., None], 3, axis=-1))
    order = {"rgb8": [0, 1, 2], "rgba8": [0, 1, 2], "bgr8": [2, 1, 0], "bgra8": [2, 1, 0]}[encoding]
    return np.ascontiguousarray(pixels[..., order])


def image_to_rgb8(msg) -> np.ndarray:
    """Camera Image (any accepted encoding, padded step) -> HxWx3 uint8 RGB."""
    if msg.encoding not in COLOR_ENCODINGS:  # checked before decoding: a 32FC1 image is no camera image
        raise ValueError(f"unsupported image encoding '{msg.encoding}' (accepted: {', '.join(COLOR_ENCODINGS)})")
    return to_rgb8(image_to_numpy(msg), msg.encoding)


def compressed_to_rgb8(msg) -> np.ndarray:
    """CompressedImage (jpeg, png; colour, mono or 16-bit) -> HxWx3 uint8 RGB via OpenCV."""
    data = np.frombuffer(msg.data, dtype=np.uint8)
    pixels = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if pixels is None:
        raise ValueError(f"could not decode compressed image ({data.size} bytes, format '{msg.format}')")
    if pixels.ndim == 2:
        return to_rgb8(pixels, "mono16" if pixels.dtype == np.uint16 else "mono8")
    if pixels.dtype != np.uint8:
        raise ValueError(f"compressed colour image has {pixels.dtype} samples, expected 8-bit (format '{msg.format}')")
    return to_rgb8(pixels, "bgra8" if pixels.shape[2] == 4 else "bgr8")
