"""Images -> numpy RGB, without ROS: the one reading path of the node, predict, the trainer and the replay.

Messages are read by attribute only, so rclpy messages and rosbags' deserialised messages both work.
Encodings: rgb8, bgr8, rgba8, bgra8, mono8, mono16 (and 32FC1 depth), padded `step`, big-endian
16-bit; CompressedImage through OpenCV. Files through Pillow, regular files only. Every image's size
is checked from its header (message fields, file or frame header) before anything is decoded; a
format whose size cannot be read so is refused. Anything else is a ValueError that says what is wrong.
"""
from __future__ import annotations

import io
import re
from pathlib import Path

import cv2
import numpy as np

from .files import open_regular_file

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

# The image files read from folders (predict, the trainer, the replay): one list, so no reader
# refuses a folder another reads.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

def natural_key(path: Path) -> list:
    """Sort key that puts frame2 before frame10 (runs of digits compare as numbers)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.as_posix())]


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """The image files of a folder (`recursive`: and its subfolders), as predict, the trainer and the
    replay all list them: an image suffix, not hidden (dot files: editors' and this project's own
    temporary files), not a folder, in natural order (frame2 before frame10). A FIFO or device named
    like an image is listed, so that its reader refuses it in one line instead of passing over it."""
    entries = folder.rglob("*") if recursive else folder.iterdir()
    return sorted((p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and not p.is_dir()),
                  key=natural_key)


# The largest image decoded, checked from the header before any pixel is read. 25 MP passes a 24 MP
# photo (6000 x 4000) and every robot camera; its float RGB copy is 300 MB, within a robot computer's
# memory. A larger "image" is more likely a decompression bomb (a 61 KiB PNG of 8000 x 8000 cost
# 4.8 GB and 80 s in the node) than a frame; raise the limit (max_input_pixels) for a bigger camera.
DEFAULT_MAX_INPUT_PIXELS = 25_000_000


def check_size(height: int, width: int, max_pixels: int | None, what: str = "image") -> None:
    """ValueError when height x width is above max_pixels (None or 0: no limit)."""
    if max_pixels and int(height) * int(width) > max_pixels:
        raise ValueError(
            f"{what} of {width}x{height} = {_pixels(int(height) * int(width))} is above the limit of "
            f"{_pixels(max_pixels)} (max_input_pixels); refused before decoding"
        )


def _pixels(n: int) -> str:
    """A pixel count as people read it: megapixels, or pixels below 0.1 MP (where "0.0 MP" says nothing)."""
    return f"{n / 1e6:.1f} MP" if n >= 100_000 else f"{n:,} pixels"


def _pillow_rgb8(im, what: str) -> np.ndarray:
    """A decoded Pillow image -> HxWx3 uint8 RGB: grey replicated, alpha dropped, 16-bit scaled to 8
    (x 255 / 65535), 32-bit integer or float refused (depth maps, not photos)."""
    if im.mode.startswith("I;16"):
        gray = (np.asarray(im, dtype=np.float64) / 257).round().astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if im.mode in ("I", "F"):
        raise ValueError(f"{what}: unsupported image mode {im.mode} (32-bit samples); convert it to 8 or 16 bit")
    return np.asarray(im.convert("RGB"))


def read_image_file(path, max_pixels: int | None = DEFAULT_MAX_INPUT_PIXELS) -> np.ndarray:
    """An image file -> HxWx3 uint8 RGB, upright as its EXIF orientation says (as photo tools show it),
    the one reader of predict, the trainer's folders and the replay's folders; ValueError (one line,
    naming the file once) for anything not a regular file, unreadable, too large, or not a photo."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with open_regular_file(path) as f, Image.open(f) as im:
            check_size(im.height, im.width, max_pixels, str(path))  # a rotation keeps width x height
            im.load()
            ImageOps.exif_transpose(im, in_place=True)  # after load: a PNG's EXIF may follow its pixels
            return _pillow_rgb8(im, str(path))
    except Image.DecompressionBombError as exc:  # Pillow's own limit (178 MP), hit while opening
        raise ValueError(f"{path}: image too large to decode safely ({exc})") from exc
    except UnidentifiedImageError as exc:  # its message names the file object ("<_io.BufferedReader name=3>")
        raise ValueError(f"{path}: not a readable image (not a format Pillow can identify, or damaged)") from exc
    except (OSError, SyntaxError) as exc:
        reason = str(exc).replace(str(path), "").strip(" :'\"") or type(exc).__name__
        raise ValueError(f"{path}: not a readable image ({type(exc).__name__}: {reason})") from exc


# OpenCV decodes compressed formats whose header Pillow cannot read (Radiance .hdr, PFM, PAM) and has
# no header-only call, so their size would be known only after decoding them whole (a 4 MB .hdr of
# 8000 x 8000: 1.5 GB and 4.4 s, then refused as float). They are refused instead of parsed here:
# image_transport sends JPEG or PNG, .hdr and PFM are float images that to_rgb8 refuses after decoding
# anyway, and every header parser of our own would be one more surface for hostile input.
def message_size(msg) -> tuple[int, int]:
    """(height, width) of an Image (its fields) or a CompressedImage (its header, read by Pillow: no
    pixel decoded); ValueError for a compressed format whose size cannot be known before decoding."""
    if hasattr(msg, "encoding"):
        return int(msg.height), int(msg.width)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(bytes(msg.data))) as im:
            return im.height, im.width
    except Image.DecompressionBombError as exc:  # beyond Pillow's own limit (178 MP), as for files
        raise ValueError(f"compressed image too large to decode safely ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"could not decode compressed image ({len(msg.data)} bytes, format '{msg.format}'): not a format "
                         "whose size can be read before decoding (JPEG, PNG, BMP, TIFF, WebP, PPM/PGM); refused") from exc


def check_message_size(msg, max_pixels: int | None) -> None:
    """ValueError when an Image or CompressedImage is above max_pixels (None or 0: no limit, and any
    format OpenCV decodes), judged from its header before anything is copied or decoded."""
    if max_pixels:
        check_size(*message_size(msg), max_pixels, "image")


def message_to_rgb8(msg, max_pixels: int | None = DEFAULT_MAX_INPUT_PIXELS) -> np.ndarray:
    """Image or CompressedImage -> HxWx3 uint8 RGB, size checked first: the recordings' reader for the
    trainer and the replay (the node checks in its callback and decodes on its worker). A camera
    frame's EXIF orientation is not applied: drivers and image_transport ignore it too."""
    check_message_size(msg, max_pixels)
    return image_to_rgb8(msg) if hasattr(msg, "encoding") else compressed_to_rgb8(msg)
