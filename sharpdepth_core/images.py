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


# --- image files and compressed frames: size first, then decode ----------------------------------

# The largest image decoded, checked from the header before any pixel is read. 25 MP passes a 24 MP
# photo (6000 x 4000) and every robot camera; its float RGB copy is 300 MB, within a robot computer's
# memory. A larger "image" is more likely a decompression bomb (a 61 KiB PNG of 8000 x 8000 cost
# 4.8 GB and 80 s in the node) than a frame; raise the limit (max_input_pixels) for a bigger camera.
DEFAULT_MAX_INPUT_PIXELS = 25_000_000


def check_size(height: int, width: int, max_pixels: int | None, what: str = "image") -> None:
    """ValueError when height x width is above max_pixels (None or 0: no limit)."""
    if max_pixels and int(height) * int(width) > max_pixels:
        raise ValueError(
            f"{what} of {width}x{height} = {int(height) * int(width) / 1e6:.1f} MP is above the limit of "
            f"{max_pixels / 1e6:.1f} MP (max_input_pixels); refused before decoding"
        )


def _pillow_rgb8(im, what: str) -> np.ndarray:
    """An opened (not yet decoded) Pillow image -> HxWx3 uint8 RGB: grey replicated, alpha dropped,
    16-bit scaled to 8 (x 255 / 65535), 32-bit integer or float refused (depth maps, not photos)."""
    im.load()
    if im.mode.startswith("I;16"):
        gray = (np.asarray(im, dtype=np.float64) / 257).round().astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if im.mode in ("I", "F"):
        raise ValueError(f"{what}: unsupported image mode {im.mode} (32-bit samples); convert it to 8 or 16 bit")
    return np.asarray(im.convert("RGB"))


def read_image_file(path, max_pixels: int | None = DEFAULT_MAX_INPUT_PIXELS) -> np.ndarray:
    """An image file -> HxWx3 uint8 RGB, the same for the CLI and the trainer; ValueError (one line,
    naming the file once) for anything unreadable, too large, or not a photo."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            check_size(im.height, im.width, max_pixels, str(path))
            return _pillow_rgb8(im, str(path))
    except Image.DecompressionBombError as exc:  # Pillow's own limit (178 MP), hit while opening
        raise ValueError(f"{path}: image too large to decode safely ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        reason = str(exc).replace(str(path), "").strip(" :'\"") or type(exc).__name__
        raise ValueError(f"{path}: not a readable image ({type(exc).__name__}: {reason})") from exc


def compressed_size(data) -> tuple[int, int] | None:
    """(height, width) of a compressed frame from its header alone (Pillow reads no pixels to answer),
    None if Pillow does not know the format (OpenCV then decides)."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(bytes(data))) as im:
            return im.height, im.width
    except Image.DecompressionBombError:
        return (1 << 16, 1 << 16)  # beyond Pillow's own limit: larger than any max_input_pixels
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None
