"""Where weights come from: a local folder, or a Hugging Face hub id found in the local cache.

No model hub is reachable on many machines (robots, CI), so every loader goes through
`resolve_model_dir`, which answers in one line what is missing and how to provide it, and
`load_component`, which turns a broken or mismatched checkpoint into an error naming the file.
Weights are read as safetensors only.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_FILES = ["*.json", "*.txt", "*.safetensors"]  # configs, tokenizer files, weights: never pickles


def quiet_loading() -> None:
    """No diffusers/transformers progress bars while weights load (sharded checkpoints draw one per
    model): the CLI and the node report loading in their own single lines."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


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


PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"}


def weight_files(folder: Path) -> list[Path]:
    """The safetensors weights of one component folder, checked so that no loader can reach a pickle.

    diffusers and transformers load whatever a sharded-checkpoint index (`*.safetensors.index.json`)
    names, and `torch.load` any target that is not `.safetensors`, even beside a decoy `.safetensors`
    file. So every index in the folder must map its weights to `.safetensors` files that exist inside
    the folder; anything else, or a folder with pickle weights only, is a CheckpointError.
    """
    for index in sorted(folder.glob("*index*.json")):
        _check_index(index, folder)
    safe = sorted(folder.glob("*.safetensors"))
    if safe:
        return safe
    pickled = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES) if folder.is_dir() else []
    if pickled:
        raise CheckpointError(
            f"{pickled[0]}: only pickle weights found; SharpDepth loads safetensors only "
            f"(convert once with safetensors on a trusted machine)"
        )
    raise CheckpointError(f"{folder}: no *.safetensors weights")


def _check_index(index: Path, folder: Path) -> None:
    """A sharded-checkpoint index whose every target is a `.safetensors` file inside `folder`."""
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{index}: unreadable checkpoint index ({type(exc).__name__})") from exc
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if weight_map is None:
        return  # not a checkpoint index (no loader reads it as one)
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: weight_map must map tensor names to files")
    inside = folder.resolve()
    for target in sorted({str(t) for t in weight_map.values()}):
        path = (folder / target).resolve()
        if not target.endswith(".safetensors"):
            raise CheckpointError(f"{index}: maps weights to {target!r}, not a .safetensors file; SharpDepth loads safetensors only")
        if not path.is_relative_to(inside) or not path.is_file():
            raise CheckpointError(f"{index}: maps weights to {target!r}, which is not a file in {folder}")


MAX_CONFIG_BYTES = 1 << 20  # configs are a few kB; anything this large is not a model config
# Known numeric fields of the configs the project loads (diffusers UNet2DConditionModel, AutoencoderKL,
# DDIMScheduler, its own models, the transformers metric models), wherever they appear (nested configs
# too): (smallest, largest) of the value or of every item of a list; list lengths are block counts.
CONFIG_RANGES = {
    "layers_per_block": (1, 8), "transformer_layers_per_block": (1, 16), "num_hidden_layers": (1, 128),
    "block_out_channels": (1, 4096), "channels": (1, 4096), "in_channels": (1, 4096), "out_channels": (1, 4096),
    "latent_channels": (1, 64), "cross_attention_dim": (1, 4096), "hidden_size": (1, 8192),
    "projection_class_embeddings_input_dim": (1, 4096), "norm_num_groups": (1, 1024), "groups": (1, 1024),
    "attention_head_dim": (1, 64), "num_attention_heads": (1, 64), "sample_size": (1, 4096), "image_size": (1, 8192),
    "output_stride": (1, 256), "num_train_timesteps": (1, 100_000),
}
MAX_BLOCKS = 8  # entries of a per-block list (block_out_channels, down_block_types, ...)
# Estimated parameters of a UNet/VAE config: 2 x blocks x (layers + 1) resnets of two 3x3 convolutions, plus
# attention, at the widest channel count (~1.2e9 for SD-2's UNet, whose real count is 0.87e9). SDXL's UNet
# (2.6e9) fits; a larger model would not fit a GPU at the node's frame rates anyway.
MAX_ESTIMATED_PARAMETERS = 5e9


def read_config(path: Path, what: str) -> dict:
    """A model or pipeline config file as a dict, checked before anything is built from it: size, JSON
    nesting, and the known numeric fields (CONFIG_RANGES, an estimated parameter count); any problem is
    one CheckpointError naming the file and the field."""
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise CheckpointError(f"{what}: {path} is {path.stat().st_size:,} bytes, not a model config (at most {MAX_CONFIG_BYTES:,})")
        config = json.loads(path.read_text())
    except RecursionError as exc:
        raise CheckpointError(f"{what}: {path}: JSON nested too deep to be a config") from exc
    except OSError as exc:
        raise CheckpointError(f"{what}: cannot read {path} ({exc.strerror or type(exc).__name__})") from exc
    except ValueError as exc:
        raise CheckpointError(f"{what}: {path}: not valid JSON ({str(exc)[:200]})") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{what}: {path}: expected a JSON object of settings, got a {type(config).__name__}")
    _check_fields(config, path, what)
    _check_size(config, path, what)
    return config


def _check_fields(config: dict, path: Path, what: str, prefix: str = "") -> None:
    for key, value in config.items():
        field = prefix + key
        if isinstance(value, dict):
            _check_fields(value, path, what, field + ".")
        elif key.endswith("_block_types") or key == "block_out_channels":
            if not isinstance(value, list) or not 1 <= len(value) <= MAX_BLOCKS:
                raise CheckpointError(f"{what}: {path}: {field} must list 1 to {MAX_BLOCKS} blocks, got {_short(value)}")
        if key in CONFIG_RANGES and value is not None:
            low, high = CONFIG_RANGES[key]
            items = value if isinstance(value, list) else [value]
            if not items or len(items) > MAX_BLOCKS or not all(
                    isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in items):
                raise CheckpointError(f"{what}: {path}: {field} must be an integer from {low} to {high} (or a list of at most "
                                      f"{MAX_BLOCKS}), got {_short(value)}")


def _check_size(config: dict, path: Path, what: str) -> None:
    """The estimated parameter count of a UNet/VAE-style config (block_out_channels), bounded."""
    channels = config.get("block_out_channels") or config.get("channels")
    if not channels:
        return
    layers = config.get("layers_per_block") or 1
    layers = max(layers) if isinstance(layers, list) else layers
    estimate = 2 * len(channels) * (layers + 1) * 30 * max(channels) ** 2
    if estimate > MAX_ESTIMATED_PARAMETERS:
        raise CheckpointError(f"{what}: {path}: block_out_channels {channels} with layers_per_block {layers} make about "
                              f"{estimate:.1e} parameters, more than {MAX_ESTIMATED_PARAMETERS:.0e}: not a usable model")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


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



MAX_OWN_WEIGHT = 1e4  # trained weights of the project's small networks are O(1); far beyond is damage


def load_own_model(model_cls, path_or_id, what: str, **kwargs):
    """A diffusers ModelMixin this project defines and saved (small-conv f_D, the light depth decoder and encoder): the
    folder's config must name `model_cls`, weights are safetensors and every tensor is accounted for."""
    folder = resolve_model_dir(path_or_id, what)
    config = folder / model_cls.config_name
    if not config.is_file():
        raise CheckpointError(f"{what}: {folder} has no {model_cls.config_name}")
    found = read_config(config, what).get("_class_name")
    if found != model_cls.__name__:
        raise CheckpointError(f"{what}: {config} describes {found!r}, expected {model_cls.__name__!r}")
    files = weight_files(folder)
    model = load_component(lambda: model_cls.from_pretrained(folder, use_safetensors=True, output_loading_info=True, **kwargs), files, what)
    for name, tensor in model.state_dict().items():
        if tensor.numel() and (not tensor.isfinite().all() or tensor.abs().max() > MAX_OWN_WEIGHT):
            raise CheckpointError(f"{what}: {files[0]}: tensor {name} holds NaN, inf or values beyond {MAX_OWN_WEIGHT:.0e}; "
                                  "not a trained model (train or copy it again)")
    return model


def to_dtype(model, dtype):
    """`model.to(dtype)` in place, without the warning diffusers' ModelMixin.to prints on every dtype
    cast ("modules ... should be kept in float32: []") even when the model keeps none in float32;
    a model that does name such modules still goes through diffusers (and its warning)."""
    import torch

    if getattr(model, "_keep_in_fp32_modules", None):
        return model.to(dtype)
    return torch.nn.Module.to(model, dtype)
