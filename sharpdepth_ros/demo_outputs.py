"""The demo's output folder: one per camera count by default, holding exactly one run's outputs.

A run records the names it will write in `RECORD` before writing them. The next run into that folder
deletes what the record names (plain files, and the folders the record names once they are empty) and
nothing else, and refuses to start, touching nothing, where a name it would write is taken by an entry
it has no record of (a user's file, or an older demo's that kept no record).
"""
from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path

from sharpdepth_core.files import TEMP_PREFIX, write_text

RECORD = TEMP_PREFIX + "demo.json"


def default_out(cameras: int) -> Path:
    """`out/demo` for one camera (`make demo`), `out/demo-Ncams` for N: runs of different shapes never mix."""
    return Path("out/demo") if cameras == 1 else Path(f"out/demo-{cameras}cams")


def read_record(out: Path) -> set[str]:
    """The names (relative paths, folders ending '/') the last run recorded; none when there is no readable record."""
    try:
        names = json.loads((out / RECORD).read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return set()
    return {n for n in names if isinstance(n, str) and n and not Path(n).is_absolute() and ".." not in Path(n).parts}


def _write_record(out: Path, names: Collection[str]) -> None:
    write_text(out / RECORD, json.dumps({"files": sorted(names)}, indent=1) + "\n")


def start_run(out: Path, planned: Collection[str]) -> None:
    """Make `out` this run's: check that every entry in the way of `planned` (relative paths, folders
    ending '/') is one the last run recorded, delete the last run's outputs, record `planned`.
    ValueError, with nothing touched, where something in the way is not the demo's."""
    out.mkdir(parents=True, exist_ok=True)
    ours = read_record(out)
    theirs = sorted(name for name in planned if (out / name).exists() and name not in ours)
    theirs += sorted(p.relative_to(out).as_posix() for name in planned if name.endswith("/") and name in ours
                     and (out / name).is_dir() for p in (out / name).rglob("*")
                     if p.relative_to(out).as_posix() + ("/" if p.is_dir() else "") not in ours)
    if theirs:
        shown = ", ".join(theirs[:5]) + (" ..." if len(theirs) > 5 else "")
        raise ValueError(f"{out} holds {shown}, which this demo would write but has no record of writing ({out / RECORD}): "
                         "not overwritten; move it away or choose another --out")
    for name in sorted(ours, reverse=True):  # a folder's files before the folder
        path = out / name
        if name.endswith("/"):
            if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
                path.rmdir()
        elif path.is_file() and not path.is_symlink():
            path.unlink()
    _write_record(out, planned)


def claim(out: Path, names: Collection[str]) -> None:
    """Add `names` to this run's record, before they are written (names only known while it runs)."""
    _write_record(out, read_record(out) | set(names))
