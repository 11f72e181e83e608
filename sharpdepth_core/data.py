"""Training data for GT-free distillation: any images, from folders or from robot logs.

Sources are image folders (recursive; files decoded as the CLI decodes them) and the camera topics
of rosbag2 / MCAP recordings, read with `rosbags` (no ROS install needed); a recording cut short by
a crash (no MCAP footer) is read as far as it is complete. Every image is resized to cover the
training resolution and centre-cropped, so a batch has one size. `MixingSampler` draws the epoch's
order from (seed, epoch) alone, so every process sees the same order (accelerate shards it) and a
resumed run replays it. A corrupt image is skipped with a warning and counted in the batch
(`skipped`), never fatal; a source without images, or with none readable, is a one-line `DataError`.
`DepthCache` keeps f_D's depth on disk so later epochs do not recompute it.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from .files import atomic_write
from .images import COLOR_ENCODINGS, DEFAULT_MAX_INPUT_PIXELS, IMAGE_SUFFIXES, list_images, message_to_rgb8, read_image_file
from .recordings import (
    IMAGE_MSGTYPES,
    RecordingError,
    is_recording,
    no_image_reason,
    open_recording,
    reader_errors,
    recording_parts,
    truncation,
)

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Training data that cannot be used at all (no images, none readable): one line, the run stops."""


class UnreadableImage(ValueError):
    """An image that cannot be decoded (truncated file, bad bytes, unsupported encoding)."""


class ImageFolder:
    """Every image file under `root`, recursively, in natural order (`images.list_images`)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        self.files = list_images(self.root, recursive=True)
        if not self.files:
            raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {self.root}")

    def __len__(self) -> int:
        return len(self.files)

    def key(self, i: int) -> str:
        """Identity of image i for the depth cache: path, size and modification time."""
        st = self.files[i].stat()
        return f"{self.files[i].resolve()}|{st.st_size}|{st.st_mtime_ns}"

    def read(self, i: int) -> np.ndarray:
        """uint8 [H, W, 3] RGB, decoded as the CLI does (16-bit scaled to 8; 32-bit and oversized refused)."""
        try:
            return read_image_file(self.files[i], DEFAULT_MAX_INPUT_PIXELS)
        except ValueError as err:  # the message names the file once
            raise UnreadableImage(str(err)) from err


def decode_image_message(msg: object) -> np.ndarray:
    """sensor_msgs Image (any encoding the node accepts, padded `step`) or CompressedImage -> uint8 RGB,
    its size checked from the message header before anything is copied or decoded, as in the node."""
    try:
        return message_to_rgb8(msg, DEFAULT_MAX_INPUT_PIXELS)
    except ValueError as err:
        raise UnreadableImage(str(err)) from err


def _camera_image_problem(topic: str, msg: object) -> str | None:
    """Why an image topic is not a camera's picture, None when it is one. Colour-mapped depth (this
    node's `depth/colored`, a RealSense colouriser) is rgb8 and has a camera_info beside it like a
    camera, so the topic's name decides there: any path segment naming depth or disparity."""
    if any("depth" in part or "disparity" in part for part in topic.lower().split("/")):
        return "depth, not a camera picture"
    if hasattr(msg, "encoding"):
        return None if msg.encoding in COLOR_ENCODINGS else f"encoding {msg.encoding}"
    return f"format {msg.format}" if "compresseddepth" in msg.format.lower() else None


class RosbagImages:
    """The camera images of a rosbag2 folder, an .mcap / .db3 file (or a ROS 1 .bag), read with rosbags.

    `topics` selects image topics; by default the camera image topics (`_camera_image_problem`:
    raw rgb8/bgr8/rgba8/bgra8/mono8/mono16 or compressed images, not depth products), and the log
    says which were used and which were left out. The index of (topic, timestamp) pairs is built
    once by reading the log; an image is then fetched by its timestamp, which indexed MCAP and
    sqlite3 storages answer without a scan. The reader is opened lazily in each process (data-loader
    workers included) and never pickled.

    An MCAP file cut short (no footer: the recorder was killed) is read up to its last complete
    record, as is a rosbag2 folder whose recorder never wrote metadata.yaml; the log says how much.
    """

    def __init__(self, path: str | os.PathLike, topics: Sequence[str] | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"recording {self.path} does not exist")
        self._reader = None
        try:
            self._parts = recording_parts(self.path)
            with open_recording(self._parts) as reader:
                self._build_index(reader, topics)
        except RecordingError as err:
            raise DataError(str(err)) from err
        except reader_errors() as err:
            raise DataError(f"recording {self.path} cannot be read: {err}") from err

    def _build_index(self, reader, topics: Sequence[str] | None) -> None:
        image_conns = [c for c in reader.connections if c.msgtype in IMAGE_MSGTYPES]
        available = sorted({c.topic for c in image_conns})
        if topics:
            missing = sorted(set(topics) - set(available))
            if missing:
                raise DataError(f"{self.path}: no image topic {missing}; image topics are {available}")
            image_conns = [c for c in image_conns if c.topic in set(topics)]
        if not image_conns:  # (an empty connection list would mean "all topics" to rosbags)
            raise DataError(f"no image messages in {self.path} (no Image/CompressedImage topic){no_image_reason(self.path, self._parts)}")
        problems: dict[str, str | None] = {t: None for t in topics or ()}  # chosen topics are used as they are
        seen: dict[tuple[str, int], int] = {}
        self.index: list[tuple[str, int, int]] = []  # (topic, timestamp ns, ordinal at that timestamp)
        for conn, t, raw in reader.messages(connections=image_conns):
            if conn.topic not in problems:  # decided on the topic's first readable message
                try:
                    problems[conn.topic] = _camera_image_problem(conn.topic, reader.deserialize(raw, conn.msgtype))
                except reader_errors():
                    continue
            if problems[conn.topic] is not None:
                continue
            k = seen.get((conn.topic, t), 0)
            seen[(conn.topic, t)] = k + 1
            self.index.append((conn.topic, t, k))
        left_out = ", ".join(f"{t} ({why})" for t, why in sorted(problems.items()) if why)
        if not self.index:
            reason = (f"no camera image topic (left out: {left_out}); choose with --topics" if left_out
                      else f"image topics: {available}")
            raise DataError(f"no image messages in {self.path} ({reason}){no_image_reason(self.path, self._parts)}")
        counts = Counter(topic for topic, _, _ in self.index)
        self.topics = sorted(counts)
        used = ", ".join(f"{t} ({counts[t]} images)" for t in self.topics)
        log.info("recording %s: training on %s%s", self.path, used,
                 f"; not camera images, left out: {left_out} (choose with --topics)" if left_out else "")
        kept = truncation(self._parts)
        if kept:
            log.warning("recording %s is truncated (no MCAP footer: the recorder did not finish it); recovered %d messages "
                        "from its complete records (%s), %d of them camera images used for training; the rest is lost",
                        self.path, reader.message_count, kept, len(self.index))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_reader": None}

    def __len__(self) -> int:
        return len(self.index)

    def key(self, i: int) -> str:
        topic, t, k = self.index[i]
        return f"{self.path.resolve()}|{topic}|{t}|{k}"

    def read(self, i: int) -> np.ndarray:
        topic, t, k = self.index[i]
        try:
            if self._reader is None:
                self._reader = open_recording(self._parts)
                self._reader.open()
            conns = [c for c in self._reader.connections if c.topic == topic and c.msgtype in IMAGE_MSGTYPES]
            for j, (conn, _, raw) in enumerate(self._reader.messages(connections=conns, start=t, stop=t + 1)):
                if j == k:
                    return decode_image_message(self._reader.deserialize(raw, conn.msgtype))
        except (UnreadableImage, *reader_errors()) as err:
            raise UnreadableImage(f"{self.path} {topic} @ {t}: {err}") from err
        raise UnreadableImage(f"{self.path} {topic} @ {t}: message vanished from the recording")


def open_source(path: str | os.PathLike, topics: Sequence[str] | None = None) -> ImageFolder | RosbagImages:
    """A folder of images, or a recording: a rosbag2 folder (metadata.yaml, or .mcap files whose
    recorder stopped before writing it), .mcap, .db3 or .bag."""
    p = Path(path)
    if is_recording(p):
        return RosbagImages(p, topics)
    return ImageFolder(p)


def fit_to_resolution(image: np.ndarray, hw: tuple[int, int]) -> Tensor:
    """uint8 [h, w, 3] -> float [3, H, W] in [0, 1]: resize to cover H x W (bilinear, antialias), centre crop."""
    H, W = hw
    x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].float() / 255
    h, w = x.shape[-2:]
    s = max(H / h, W / w)
    rh, rw = max(H, round(h * s)), max(W, round(w * s))
    if (rh, rw) != (h, w):
        x = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (rh - H) // 2, (rw - W) // 2
    return x[0, :, top : top + H, left : left + W].clamp(0, 1).contiguous()


class TrainingImages(Dataset):
    """Sources concatenated; item i -> {"image": [3, H, W] in [0, 1], "key": str, "skipped": int}.

    An unreadable item is logged and replaced by the next readable one (deterministically, so
    resumed runs agree); `skipped` counts the replaced items so the trainer can report the total
    across workers and processes.
    """

    def __init__(self, sources: Sequence[ImageFolder | RosbagImages], resolution: tuple[int, int]):
        if not sources:
            raise ValueError("no training data: give at least one image folder or recording")
        H, W = (int(v) for v in resolution)
        if H <= 0 or W <= 0 or H % 8 or W % 8:
            raise ValueError(f"training resolution must be positive multiples of 8 (VAE), got {H}x{W}")
        self.sources = list(sources)
        self.resolution = (H, W)
        self.offsets = np.cumsum([0] + [len(s) for s in self.sources])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, i: int) -> tuple[ImageFolder | RosbagImages, int]:
        s = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.sources[s], i - int(self.offsets[s])

    def __getitem__(self, i: int) -> dict:
        last = None
        for skipped in range(len(self)):
            source, j = self.locate((i + skipped) % len(self))
            try:
                image = source.read(j)
            except UnreadableImage as err:
                log.warning("skipping unreadable training image: %s", err)
                last = err
                continue
            return {"image": fit_to_resolution(image, self.resolution), "key": source.key(j), "skipped": skipped}
        raise DataError(f"none of the {len(self)} training images can be read (the last: {last})")


class MixingSampler(Sampler[int]):
    """Indices into `TrainingImages`; an epoch's order depends only on (seed, epoch).

    Without `probs`: a shuffled pass over every image. With `probs` (one per source): each draw
    picks a source with that probability, then an image of it uniformly (with replacement), so a
    small source can be oversampled. The epoch length is the total number of images either way.
    """

    def __init__(self, sizes: Sequence[int], probs: Sequence[float] | None = None, seed: int = 0):
        self.sizes = [int(n) for n in sizes]
        if probs is not None:
            if len(probs) != len(self.sizes):
                raise ValueError(f"{len(probs)} mixing probabilities for {len(self.sizes)} data sources")
            if any(p < 0 for p in probs) or sum(probs) <= 0:
                raise ValueError(f"mixing probabilities must be >= 0 with a positive sum, got {list(probs)}")
        self.probs = None if probs is None else torch.tensor(probs, dtype=torch.float64) / sum(probs)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(self.sizes)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        n = len(self)
        if self.probs is None:
            yield from torch.randperm(n, generator=g).tolist()
            return
        offsets = torch.tensor(np.cumsum([0] + self.sizes[:-1]))
        source = torch.multinomial(self.probs, n, replacement=True, generator=g)
        within = (torch.rand(n, generator=g, dtype=torch.float64) * torch.tensor(self.sizes)[source]).long()
        yield from (offsets[source] + within).tolist()


def draw_flips(batch: int, p: float = 0.5) -> Tensor:
    """Which samples of a batch to flip left-right: [B] bool from the global RNG (saved in checkpoints)."""
    return torch.rand(batch) < p


def flip_where(x: Tensor, flips: Tensor) -> Tensor:
    """x [B, C, H, W] with the samples marked in `flips` flipped left-right."""
    return torch.where(flips.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)


class DepthCache:
    """f_D's depth per training image on disk (float32 .npy [1, H, W]), keyed by image identity.

    Entries are namespaced by `model` (the metric backend and its weights) and the training
    resolution, so a different f_D or size never reads stale depth. Writes are atomic (temporary
    file + rename: concurrent processes are safe) and honour the umask. An entry that cannot be
    used (unreadable, truncated, wrong shape, not finite) is logged once, naming its file, and
    reported missing, so the trainer recomputes and overwrites it.
    """

    def __init__(self, folder: str | os.PathLike, model: str, resolution: tuple[int, int]):
        self.folder = Path(folder)
        self.shape = (1, *(int(v) for v in resolution))
        self.namespace = f"{model}|{self.shape[1]}x{self.shape[2]}"
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        digest = hashlib.sha256(f"{self.namespace}\n{key}".encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.npy"

    def _read(self, path: Path) -> np.ndarray | None:
        try:
            depth = np.load(path, allow_pickle=False)
            problem = (f"of shape {depth.shape}, expected {self.shape}" if depth.shape != self.shape
                       else f"of dtype {depth.dtype}" if depth.dtype != np.float32
                       else "not finite everywhere" if not np.isfinite(depth).all() else None)
        except (OSError, ValueError, EOFError) as exc:  # truncated or not an .npy file
            problem = f"unreadable ({type(exc).__name__}: {exc})"
        if problem is None:
            return depth
        log.warning("depth cache %s: entry %s is %s; recomputing it with f_D", self.folder, path, problem)
        return None

    def load(self, keys: Sequence[str]) -> Tensor | None:
        """[B, 1, H, W] for all keys, or None if any is missing or unusable (the batch is then recomputed)."""
        paths = [self.path(k) for k in keys]
        if not all(p.is_file() for p in paths):  # before reading any: a batch with a new entry is recomputed anyway
            return None
        depths = []
        for path in paths:
            depth = self._read(path)
            if depth is None:
                return None
            depths.append(depth)
        return torch.from_numpy(np.stack(depths))

    def save(self, keys: Sequence[str], depth: Tensor) -> None:
        for key, d in zip(keys, depth.detach().float().cpu().numpy()):
            path = self.path(key)
            path.parent.mkdir(exist_ok=True)
            with atomic_write(path) as f:
                np.save(f, d, allow_pickle=False)
