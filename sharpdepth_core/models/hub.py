"""Where weights come from: a local folder, or a Hugging Face hub id found in the local cache.

No model hub is reachable on many machines (robots, CI), so every loader goes through
`resolve_model_dir`, which answers in one line what is missing and how to provide it, and
`load_component`, which turns a broken or mismatched checkpoint into an error naming the file.
Weights are read as safetensors only.
"""
from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_FILES = ["*.json", "*.txt", "*.safetensors"]  # configs, tokenizer files, weights: never pickles


class MissingWeightsError(FileNotFoundError):
    """A checkpoint that is neither a local folder nor in the Hugging Face cache."""


class CheckpointError(ValueError):
    """A checkpoint that exists but cannot be used: corrupt, mismatched, or not safetensors."""


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return bool(constants.HF_HUB_OFFLINE) or env


def is_hub_id(path_or_id: str | Path) -> bool:
    """`owner/name` that is not an existing local path."""
    s = str(path_or_id)
    return bool(_HUB_ID.match(s)) and not Path(s).exists()


def resolve_model_dir(path_or_id: str | Path, what: str, allow_patterns: list[str] | None = HUB_FILES) -> Path:
    """A local folder for `path_or_id`: the folder itself, else the hub snapshot (cache first) of
    the files matching `allow_patterns` (at any depth: `*` crosses folder names in the hub's globs).

    Raises MissingWeightsError with one line: what is missing, the hub id, how to provide it.
    """
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{what}: {path} is a file, expected a model folder")
    if not is_hub_id(path_or_id):
        raise MissingWeightsError(f"{what}: no model folder at {path} (pass an existing folder or a hub id owner/name)")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id = str(path_or_id)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError):
        pass
    reason = "HF_HUB_OFFLINE is set"
    if not _offline():
        try:
            return Path(snapshot_download(repo_id, allow_patterns=allow_patterns))
        except Exception as exc:  # any network or hub failure ends in the same advice
            reason = f"download failed: {type(exc).__name__}"
    raise MissingWeightsError(
        f"{what}: '{repo_id}' is not a local folder and not in the Hugging Face cache {constants.HF_HUB_CACHE} "
        f"({reason}); pass a local folder, or run `hf download {repo_id}` on a connected machine and copy "
        f"its cache (HF_HOME, default ~/.cache/huggingface) to this one"
    )


def require_subfolders(folder: Path, names: list[str], what: str) -> None:
    """Fail early, naming every missing part, when a diffusers folder lacks components."""
    missing = [n for n in names if not (folder / n).is_dir()]
    if missing:
        raise CheckpointError(f"{what}: {folder} lacks {', '.join(n + '/' for n in missing)} (expected a diffusers folder)")


def weight_files(folder: Path) -> list[Path]:
    """The safetensors weights of one component folder; refuses pickle-only checkpoints by name."""
    safe = sorted(folder.glob("*.safetensors"))
    if safe:
        return safe
    pickled = sorted(p for p in folder.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".ckpt"}) if folder.is_dir() else []
    if pickled:
        raise CheckpointError(
            f"{pickled[0]}: only pickle weights found; SharpDepth loads safetensors only "
            f"(convert once with safetensors on a trusted machine)"
        )
    raise CheckpointError(f"{folder}: no *.safetensors weights")


def load_component(load: Callable[[], T], files: list[Path], what: str) -> T:
    """Run a `from_pretrained` call; a failure becomes a CheckpointError that names the files.

    A `(model, loading_info)` result (`output_loading_info=True`) is checked too: a tensor missing
    from the checkpoint or of the wrong shape is an error, never a silently random weight.
    """
    names = ", ".join(str(f) for f in files)
    try:
        result = load()
    except (MissingWeightsError, CheckpointError):
        raise
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"{what}: cannot load {names}: {type(exc).__name__}: {msg}"[:600]) from exc
    if isinstance(result, tuple):
        result, info = result
        bad = list(info.get("missing_keys", [])) + list(info.get("mismatched_keys", []))
        if bad:
            raise CheckpointError(f"{what}: {names} does not match its config: {len(bad)} missing or mismatched tensors, e.g. {bad[0]}")
    return result


@contextmanager
def replacing_dir(path: str | Path) -> Iterator[Path]:
    """Write a model folder beside its destination, then swap it in: a crash never leaves half a model."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(path.name + ".old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
