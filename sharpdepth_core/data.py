"""Training data for GT-free distillation: any images, from folders or from robot logs.

Sources are image folders (recursive) and camera topics of rosbag2 / MCAP recordings, read with
`rosbags` (no ROS install needed). Every image is resized to cover the training resolution and
centre-cropped, so a batch has one size. `MixingSampler` draws the epoch's order from (seed, epoch)
alone, so every process sees the same order (accelerate shards it) and a resumed run replays it.
A corrupt image is skipped with a warning and counted in the batch (`skipped`), never fatal; a
source without images is a clear error at start-up. `DepthCache` keeps f_D's depth on disk so
later epochs do not recompute it.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from .images import compressed_to_rgb8, image_to_rgb8

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
BAG_SUFFIXES = (".mcap", ".db3", ".bag")
IMAGE_MSGTYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


class UnreadableImage(ValueError):
    """An image that cannot be decoded (truncated file, bad bytes, unsupported encoding)."""


class ImageFolder:
    """Every image file under `root`, recursively, in a stable (sorted) order."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not self.files:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {self.root}")

    def __len__(self) -> int:
        return len(self.files)

    def key(self, i: int) -> str:
        """Identity of image i for the depth cache: path, size and modification time."""
        st = self.files[i].stat()
        return f"{self.files[i].resolve()}|{st.st_size}|{st.st_mtime_ns}"

    def read(self, i: int) -> np.ndarray:
        """uint8 [H, W, 3] RGB."""
        try:
            with Image.open(self.files[i]) as im:
                return np.asarray(im.convert("RGB"))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise UnreadableImage(f"{self.files[i]}: {err}") from err


def decode_image_message(msg: object) -> np.ndarray:
    """sensor_msgs Image (any encoding the node accepts, padded `step`) or CompressedImage -> uint8 RGB."""
    try:
        return image_to_rgb8(msg) if hasattr(msg, "encoding") else compressed_to_rgb8(msg)
    except ValueError as err:
        raise UnreadableImage(str(err)) from err


class RosbagImages:
    """The camera images of a rosbag2 folder, an .mcap / .db3 file (or a ROS 1 .bag), read with rosbags.

    `topics` selects image topics (None: every Image/CompressedImage topic). The index of
    (topic, timestamp) pairs is built once by reading the log; an image is then fetched by its
    timestamp, which indexed MCAP and sqlite3 storages answer without a scan. The reader is opened
    lazily in each process (data-loader workers included) and never pickled.
    """

    def __init__(self, path: str | os.PathLike, topics: Sequence[str] | None = None):
        from rosbags.highlevel import AnyReader

        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"recording {self.path} does not exist")
        self._reader = None
        with self._open(AnyReader) as reader:
            image_conns = [c for c in reader.connections if c.msgtype in IMAGE_MSGTYPES]
            available = sorted({c.topic for c in image_conns})
            if topics:
                missing = sorted(set(topics) - set(available))
                if missing:
                    raise ValueError(f"{self.path}: no image topic {missing}; image topics are {available}")
                image_conns = [c for c in image_conns if c.topic in set(topics)]
            if not image_conns:  # (an empty connection list would mean "all topics" to rosbags)
                raise ValueError(f"no image messages in {self.path} (no Image/CompressedImage topic)")
            self.topics = sorted({c.topic for c in image_conns})
            seen: dict[tuple[str, int], int] = {}
            self.index: list[tuple[str, int, int]] = []  # (topic, timestamp ns, ordinal at that timestamp)
            for conn, t, _ in reader.messages(connections=image_conns):
                k = seen.get((conn.topic, t), 0)
                seen[(conn.topic, t)] = k + 1
                self.index.append((conn.topic, t, k))
        if not self.index:
            raise ValueError(f"no image messages in {self.path} (image topics: {available})")

    def _open(self, reader_cls):
        from rosbags.typesys import Stores, get_typestore

        return reader_cls([self.path], default_typestore=get_typestore(Stores.LATEST))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_reader": None}

    def __len__(self) -> int:
        return len(self.index)

    def key(self, i: int) -> str:
        topic, t, k = self.index[i]
        return f"{self.path.resolve()}|{topic}|{t}|{k}"

    def read(self, i: int) -> np.ndarray:
        from rosbags.highlevel import AnyReader, AnyReaderError

        if self._reader is None:
            self._reader = self._open(AnyReader)
            self._reader.open()
        topic, t, k = self.index[i]
        conns = [c for c in self._reader.connections if c.topic == topic and c.msgtype in IMAGE_MSGTYPES]
        for j, (conn, _, raw) in enumerate(self._reader.messages(connections=conns, start=t, stop=t + 1)):
            if j == k:
                try:
                    return decode_image_message(self._reader.deserialize(raw, conn.msgtype))
                except (UnreadableImage, AnyReaderError) as err:
                    raise UnreadableImage(f"{self.path} {topic} @ {t}: {err}") from err
        raise UnreadableImage(f"{self.path} {topic} @ {t}: message vanished from the recording")


def open_source(path: str | os.PathLike, topics: Sequence[str] | None = None) -> ImageFolder | RosbagImages:
    """A folder of images, or a recording: a rosbag2 folder (metadata.yaml), .mcap, .db3 or .bag."""
    p = Path(path)
    if p.suffix.lower() in BAG_SUFFIXES or (p / "metadata.yaml").is_file():
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
        for skipped in range(len(self)):
            source, j = self.locate((i + skipped) % len(self))
            try:
                image = source.read(j)
            except UnreadableImage as err:
                log.warning("skipping unreadable training image: %s", err)
                continue
            return {"image": fit_to_resolution(image, self.resolution), "key": source.key(j), "skipped": skipped}
        raise RuntimeError(f"none of the {len(self)} training images can be read")


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


def random_flip(*images: Tensor, p: float = 0.5) -> tuple[Tensor, ...]:
    """Flip each sample of every [B, C, H, W] tensor left-right together, with probability p (global RNG)."""
    flip = (torch.rand(images[0].shape[0]) < p).view(-1, 1, 1, 1).to(images[0].device)
    return tuple(torch.where(flip, x.flip(-1), x) for x in images)


class DepthCache:
    """f_D's depth per training image on disk (float32 .npy), keyed by image identity and `namespace`.

    The namespace names the metric model and the training resolution, so a different f_D or size
    never reads stale depth. Writes are atomic (temp file + rename): concurrent processes are safe.
    """

    def __init__(self, folder: str | os.PathLike, namespace: str):
        self.folder = Path(folder)
        self.namespace = namespace
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        digest = hashlib.sha256(f"{self.namespace}\n{key}".encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.npy"

    def load(self, keys: Sequence[str]) -> Tensor | None:
        """[B, 1, H, W] for all keys, or None if any is missing (the batch is then recomputed)."""
        paths = [self.path(k) for k in keys]
        if not all(p.is_file() for p in paths):
            return None
        return torch.from_numpy(np.stack([np.load(p, allow_pickle=False) for p in paths]))

    def save(self, keys: Sequence[str], depth: Tensor) -> None:
        for key, d in zip(keys, depth.detach().float().cpu().numpy()):
            path = self.path(key)
            path.parent.mkdir(exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                np.save(f, d, allow_pickle=False)
            os.replace(tmp, path)
