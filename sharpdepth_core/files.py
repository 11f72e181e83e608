"""Writing files the way a tool that shares folders with its users must: whole or not at all, and
never through a name someone else put there.

`atomic_write` creates its temporary file exclusively (O_CREAT | O_EXCL: an existing entry of that
name, a symbolic link included, is never opened, followed or replaced) under a random name beside
the target, then renames it over the target. rename() replaces a link at the target itself, never
what it points to, so neither a planted link nor a user's file with a guessable temporary name is
ever written through.
"""
from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

TEMP_PREFIX = ".sharpdepth-"  # every temporary entry the project makes starts with this


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
