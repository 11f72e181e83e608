"""Robot recordings (rosbag2 folders, .mcap, .db3, ROS 1 .bag) opened with `rosbags`, recovering what a
crash left: the one reader of the trainer and the replay publisher (no torch, no ROS install needed).

An MCAP file cut short (no footer: the recorder was killed) is read up to its last complete record,
as is a rosbag2 folder whose recorder never wrote metadata.yaml; `truncation` says how much was kept,
so a reader that finds no image can say the file is truncated rather than that it has no camera.
"""
from __future__ import annotations

import io
import struct
from pathlib import Path

BAG_SUFFIXES = (".mcap", ".db3", ".bag")
IMAGE_MSGTYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
MCAP_MAGIC = b"\x89MCAP0\r\n"


class RecordingError(ValueError):
    """A recording that cannot be opened at all (one line, naming the file)."""


def is_recording(path: Path) -> bool:
    """A bag file, a rosbag2 folder (metadata.yaml), or a folder of .mcap files whose recorder
    stopped before writing metadata.yaml."""
    return path.suffix.lower() in BAG_SUFFIXES or (path / "metadata.yaml").is_file() or (path.is_dir() and any(path.glob("*.mcap")))


def _complete_mcap_end(path: Path) -> int | None:
    """None for a complete MCAP file (it ends with the magic bytes); for one cut short (a recorder
    killed before writing its footer) the end of its last complete record in the data section."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size >= 2 * len(MCAP_MAGIC):
            f.seek(size - len(MCAP_MAGIC))
            if f.read() == MCAP_MAGIC:
                return None
        f.seek(0)
        if f.read(len(MCAP_MAGIC)) != MCAP_MAGIC:
            return None  # not an MCAP file: rosbags says so
        end = len(MCAP_MAGIC)
        while end + 9 <= size:  # a record: opcode (1 byte), length (uint64), content
            f.seek(end)
            opcode, length = struct.unpack("<BQ", f.read(9))
            if opcode in (0x02, 0x0F) or end + 9 + length > size:  # footer, data end, or the cut record
                break
            end += 9 + length
    return end


class _McapPrefix(io.RawIOBase):
    """A read-only file: the first `end` bytes of an MCAP file, then an empty footer (no summary)."""

    # Footer record (opcode 0x02, 20 bytes: summary start, summary offset start, CRC, all 0), magic.
    TAIL = struct.pack("<BQQQI", 0x02, 20, 0, 0, 0) + MCAP_MAGIC

    def __init__(self, path: Path, end: int):
        super().__init__()
        self._file, self._end, self._pos = open(path, "rb"), end, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._end + len(self.TAIL)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        if self._pos < self._end:
            self._file.seek(self._pos)
            n = self._file.readinto(view[: min(len(view), self._end - self._pos)])
        else:
            tail = self.TAIL[self._pos - self._end :][: len(view)]
            view[: len(tail)] = tail
            n = len(tail)
        self._pos += n
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


class CompletePart:
    """A truncated MCAP file as rosbags is given it (the few path methods its reader uses): the
    complete records and an empty footer, which rosbags reads by scanning, as any unindexed MCAP."""

    suffix = ".mcap"

    def __init__(self, path: Path, end: int):
        self.path, self.end = path, end

    def exists(self) -> bool:
        return True

    def is_dir(self) -> bool:
        return False

    def open(self, mode: str = "rb") -> io.BufferedReader:
        return io.BufferedReader(_McapPrefix(self.path, self.end))

    def __str__(self) -> str:
        return str(self.path)


def reader_errors() -> tuple[type[Exception], ...]:
    """What rosbags raises for a recording it cannot read (its high-level reader does not wrap all)."""
    from rosbags.highlevel import AnyReaderError
    from rosbags.rosbag1 import ReaderError as Rosbag1Error
    from rosbags.rosbag2 import ReaderError as Rosbag2Error

    return AnyReaderError, Rosbag1Error, Rosbag2Error


def recording_parts(path: Path) -> list[Path | CompletePart]:
    """What rosbags opens: the recording itself, or its MCAP files with any truncated one cut to its
    complete records."""
    files = [path] if path.is_file() else sorted(path.glob("*.mcap"))
    ends = {f: _complete_mcap_end(f) for f in files if f.suffix.lower() == ".mcap"}
    complete = all(e is None for e in ends.values())
    if complete and (path.is_file() or (path / "metadata.yaml").is_file()):
        return [path]
    parts = [CompletePart(f, ends[f]) if ends.get(f) is not None else f for f in files]
    if not parts:
        raise RecordingError(f"recording {path}: no metadata.yaml and no .mcap file")
    return parts


def truncation(parts: list[Path | CompletePart]) -> str:
    """'' for complete recordings; else which files were cut and how much of each is readable."""
    cut = [p for p in parts if isinstance(p, CompletePart)]
    return ", ".join(f"{p.path.name}: {p.end / 1e6:.2f} of {p.path.stat().st_size / 1e6:.2f} MB" for p in cut)


def open_recording(parts: list[Path | CompletePart]):
    """An (unopened) rosbags AnyReader of the parts, with the latest ROS 2 message definitions."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    return AnyReader(parts, default_typestore=get_typestore(Stores.LATEST))


def no_image_reason(path: Path, parts: list[Path | CompletePart]) -> str:
    """Why a recording without image messages has none: a truncated file says so (a single-chunk MCAP
    cut anywhere keeps no complete record, so it looks empty), else nothing."""
    kept = truncation(parts)
    return (f"; recording {path} is truncated (no MCAP footer: the recorder did not finish it) and its complete "
            f"records hold no image ({kept} readable)") if kept else ""
