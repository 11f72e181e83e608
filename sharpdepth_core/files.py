"""Writing files and folders the way a tool that shares folders with its users must: whole or not at
all, never through a name someone else put there, and never deleting what the project did not write.

`atomic_write` creates its temporary file exclusively (O_CREAT | O_EXCL: an existing entry of that
name, a symbolic link included, is never opened, followed or replaced) under a random name beside
the target, then renames it over the target. rename() replaces a link at the target itself, never
what it points to, so neither a planted link nor a user's file with a guessable temporary name is
ever written through.

`replacing_dir` writes a whole folder (a model, an export) beside or inside its target and swaps it
in. Its scratch folders carry a marker file that names them (`SCRATCH_MARK`): a crashed save's
leftovers are recognised by that marker, never by their name alone, so a user's own entry named
`.sharpdepth-anything` is the user's.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable, Collection
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import BinaryIO, Iterator

TEMP_PREFIX = ".sharpdepth-"  # every temporary entry the project makes starts with this
SCRATCH_MARK = ".sharpdepth-scratch"  # the file inside each scratch folder that proves the project made it


def temp_name(path: Path) -> Path:
    """A fresh name beside `path` that no one can predict."""
    return path.with_name(f"{TEMP_PREFIX}{path.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp")


@contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """Open a new temporary file beside `path` for binary writing; on success it replaces `path`, on
    any error it is removed and `path` is untouched. The file gets the umask's mode (0666 & ~umask),
    like any file the user's programs write (tempfile.mkstemp would force 0600)."""
    path = Path(path)
    for _ in range(100):
        tmp = temp_name(path)
        try:
            f = open(tmp, "xb")
            break
        except FileExistsError:  # astronomically unlikely: another random name
            continue
    else:
        raise FileExistsError(f"{path.parent}: could not create a temporary file")
    try:
        with f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    """`Path.write_bytes`, atomically and exclusively (see `atomic_write`)."""
    with atomic_write(path) as f:
        f.write(data)


def write_text(path: str | Path, text: str) -> None:
    """`Path.write_text` (UTF-8), atomically and exclusively (see `atomic_write`)."""
    write_bytes(path, text.encode("utf-8"))


def open_regular_file(path) -> io.BufferedReader:
    """`path` opened for reading, or ValueError unless it is a regular file: a FIFO named `1.png`
    would block the reader forever waiting for a writer, a device never ends. O_NONBLOCK makes the
    open itself return at once for a FIFO; fstat then judges what was opened, not what was listed."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path}: not a regular file (a FIFO, device or folder); not read")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_file(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes`: the bounded reading of small files the user
    names (poses, calibrations, manifests, records). ValueError, one line naming the file, for a FIFO
    (reading it would block), a device such as /dev/zero (it never ends), a folder, a larger file or
    one that cannot be read; only `max_bytes` + 1 bytes are ever read."""
    try:
        with open_regular_file(path) as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror or type(exc).__name__})") from exc
    if len(data) > max_bytes:
        raise ValueError(f"{path}: larger than {max_bytes:,} bytes; not read")
    return data


def read_json_file(path: str | Path, max_bytes: int) -> object:
    """`read_regular_file`, parsed as JSON; ValueError (one line naming the file) also for invalid JSON
    or JSON nested deeper than the parser's recursion allows (a RecursionError otherwise)."""
    data = read_regular_file(path, max_bytes)
    try:
        return json.loads(data)
    except RecursionError as exc:
        raise ValueError(f"{path}: JSON nested too deep") from exc
    except ValueError as exc:  # UnicodeDecodeError included
        raise ValueError(f"{path}: not valid JSON ({str(exc)[:200]})") from exc


RECORD_SUFFIX = ".sha256"


def write_recorded(path: Path, data: bytes) -> None:
    """Write `data` to `path` with a record of its SHA-256 beside it (`<name>.sha256`), written after it:
    the proof, for `is_recorded`, that the project wrote this very content (a cache it may replace)."""
    write_bytes(path, data)
    write_text(path.with_name(path.name + RECORD_SUFFIX), hashlib.sha256(data).hexdigest() + "\n")


def read_recorded(path: Path) -> bytes | None:
    """The content of a file written by `write_recorded` and unchanged since; None for anything else."""
    record = path.with_name(path.name + RECORD_SUFFIX)
    try:
        if path.is_symlink() or record.is_symlink() or not path.is_file() or record.stat().st_size != 65:
            return None
        data, digest = path.read_bytes(), record.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return data if hashlib.sha256(data).hexdigest() == digest else None


def is_recorded(path: Path) -> bool:
    """A file written by `write_recorded` and unchanged since, or the record of one."""
    if path.name.endswith(RECORD_SUFFIX):
        path = path.with_name(path.name[: -len(RECORD_SUFFIX)])
    return read_recorded(path) is not None


def _umask() -> int:
    """The process's umask, read without changing it (Linux), else by setting it back at once."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def honour_umask(folder: Path) -> None:
    """Give a written folder the modes the umask asks for: safetensors writes weights 0600 and
    tempfile.mkdtemp makes folders 0700 whatever the umask, so a saved model would be unreadable to
    the user's group (a robot's other accounts)."""
    mask = _umask()
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        mode = (0o777 if path.is_dir() else 0o666) & ~mask
        if path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)


@dataclass(frozen=True)
class Extra:
    """A top-level entry that an earlier save of some kind may hold besides what a new save writes
    (an engine cache, external weights): a plain file (`files` None), or a folder of plain files
    whose names match one of the glob patterns in `files`, nothing deeper, and for which `owned`
    (when given) says True: the content check of files only the project writes (a TensorRT plan is
    recorded with its hash). Anything of that name that does not fit, in kind or content, is the user's."""

    name: str
    files: tuple[str, ...] | None = None
    owned: Callable[[Path], bool] | None = None

    def foreign(self, root: Path) -> list[str]:
        """What in `root / name` does not fit (paths relative to `root`, folders marked '/')."""
        entry = root / self.name
        if self.files is None:
            return [] if entry.is_file() and not entry.is_symlink() else sorted(_tree(root, entry))
        if entry.is_symlink() or not entry.is_dir():
            return sorted(_tree(root, entry))
        return sorted(
            name for p in entry.iterdir()
            if p.is_symlink() or not p.is_file() or not any(fnmatchcase(p.name, pattern) for pattern in self.files)
            or (self.owned is not None and not self.owned(p))
            for name in _tree(root, p)
        )


def foreign_entries(path: Path, produced: Collection[str], also: Collection[Extra] = ()) -> list[str]:
    """Everything in the folder `path`, at any depth, that is neither in `produced` (relative paths,
    folders marked '/') nor fits one of the `also` descriptions: what a replacing save must not delete."""
    extras = {e.name: e for e in also}
    foreign = []
    for p in sorted(path.iterdir()):
        if is_scratch(p):  # a crashed earlier save's leftovers
            continue
        if p.name in extras:
            foreign += extras[p.name].foreign(path)
        else:
            foreign += sorted(name for name in _tree(path, p) if name not in produced)
    return foreign


def refusal(path: Path, foreign: list[str], what: str = "this save does not write") -> ValueError:
    """The one-line refusal to replace a folder holding the user's entries, naming them."""
    shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
    return ValueError(f"{path}: refusing to replace a non-empty folder that the project did not write (it holds {shown}, "
                      f"which {what}); choose a new or empty folder, or move those files away")


def scratch_dir(parent: Path, name: str | None = None) -> Path:
    """A new folder in `parent` for work in progress, marked as the project's (see `is_scratch`):
    `name` if given (it must start with TEMP_PREFIX and not exist), else a random `.sharpdepth-partial-*`."""
    if name is None:
        folder = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX + "partial-", dir=parent))
    else:
        assert name.startswith(TEMP_PREFIX), name
        folder = parent / name
        folder.mkdir()
    (folder / SCRATCH_MARK).write_text(_mark(folder.name))
    return folder


def _mark(name: str) -> str:
    return f"sharpdepth scratch folder {name}: work in progress of a save that did not finish; safe to delete\n"


def is_scratch(entry: Path) -> bool:
    """A scratch folder this project made (a crashed save's leftover): a real folder named with
    TEMP_PREFIX that holds the marker file `scratch_dir` wrote for that very name. A name alone proves
    nothing: `.sharpdepth-notes/` or `.sharpdepth-predict.json` of the user's are never leftovers."""
    mark = entry / SCRATCH_MARK
    if not entry.name.startswith(TEMP_PREFIX) or entry.is_symlink() or not entry.is_dir():
        return False
    try:
        return not mark.is_symlink() and mark.is_file() and mark.stat().st_size < 512 and mark.read_text() == _mark(entry.name)
    except (OSError, UnicodeDecodeError):
        return False


def remove_scratch(entry: Path) -> None:
    """Delete a scratch folder, if it still is one (see `is_scratch`)."""
    if is_scratch(entry):
        shutil.rmtree(entry, ignore_errors=True)


@contextmanager
def replacing_dir(path: str | Path, also: Collection[Extra] = ()) -> Iterator[Path]:
    """Write a folder in a temporary place, then put it at `path`: a crash never leaves half a model.

    An existing `path` is replaced only when it is empty or an earlier save of the same kind: it holds
    every top-level file this write produced (the writer's own files: pipeline.json, export.json,
    config.json and weights, ...), and every file and folder in it, at any depth, is one this write
    also produced or fits one of the `also` descriptions (what an earlier save of this kind may hold
    besides, e.g. an engine cache: names *and* kinds and contents). Anything else is refused with a
    ValueError naming the folder and what is in the way, and nothing in it is touched: the project
    never deletes what it did not write. An existing folder keeps its place (and inode: the current
    directory or a symlinked folder stays valid); its entries are swapped. The work happens in a
    marked scratch folder (`scratch_dir`), inside `path` when it exists, else beside it.
    """
    path = Path(os.path.abspath(Path(path).expanduser()))  # "." and "x/.." have no usable name
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} exists and is not a folder")
    existed = path.is_dir()
    if not existed:
        path.parent.mkdir(parents=True, exist_ok=True)
    scratch = scratch_dir(path if existed else path.parent)
    new = scratch / "new"
    new.mkdir()
    try:
        yield new
        honour_umask(new)
        if existed:
            _swap_entries(path, new, also)
        else:
            new.rename(path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _swap_entries(path: Path, new: Path, also: Collection[Extra]) -> None:
    """Move `new`'s entries into `path` in place of its old ones (checked as `replacing_dir` says)."""
    old = [p for p in path.iterdir() if p != new.parent]
    leftovers = [p for p in old if is_scratch(p)]  # from a crashed earlier save
    old = [p for p in old if p not in leftovers]
    if old:
        foreign = foreign_entries(path, _tree(new), also)
        if foreign:
            raise refusal(path, foreign)
        missing = sorted(p.name for p in new.iterdir() if p.is_file() and not (path / p.name).is_file())
        if missing:
            raise ValueError(
                f"{path}: refusing to replace a non-empty folder that the project did not write (it lacks "
                f"{', '.join(missing[:5])}, so it is no earlier save of this kind); choose a new or empty folder, "
                "or move those files away"
            )
    for entry in leftovers:
        remove_scratch(entry)
    trash = scratch_dir(path, f"{TEMP_PREFIX}old-{secrets.token_hex(6)}")
    for entry in old:
        entry.rename(trash / entry.name)
    for entry in new.iterdir():
        entry.rename(path / entry.name)
    shutil.rmtree(trash, ignore_errors=True)  # kept if a rename above failed: the earlier save stays recoverable


def _tree(root: Path, entry: Path | None = None) -> set[str]:
    """Relative paths of `entry` (default: everything in `root`) and all it holds, folders marked '/'."""
    entries = [entry] if entry is not None else list(root.iterdir())
    names = set()
    for e in entries:
        if e.is_dir() and not e.is_symlink():
            names.add(e.relative_to(root).as_posix() + "/")
            names |= {p.relative_to(root).as_posix() + ("/" if p.is_dir() and not p.is_symlink() else "") for p in e.rglob("*")}
        else:
            names.add(e.relative_to(root).as_posix())
    return names
