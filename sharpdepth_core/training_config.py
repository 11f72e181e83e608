"""The training configuration: `TrainConfig`, its presets, and reading it from YAML and the command line.

`TrainConfig` is one plain dataclass; `PRESETS` holds `paper` and `reference` (the table of
docs/METHOD.md) and `nano` (the embedded small models, a CPU recipe). `make_config` layers a YAML
file and `key=value` overrides on a preset (or on a checkpoint's saved config when resuming), each
value coerced to its field's declared type; `add_field_arguments` and `command_line_overrides` are
the same fields as command-line flags (`train/distill.py`). `check_config` and `check_models` refuse
a run that cannot work, naming the setting to change, before anything loads. Nothing heavy is
imported: `distill.py --help` stays fast.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union, get_args, get_origin, get_type_hints

import yaml

from . import pipeline_config, small_scale
from .choices import METRIC_BACKENDS
from .embedded import EMBEDDED_DIR
from .hub_ids import DEFAULT_METRIC_IDS, LOTUS_G_ID
from .limits import MAX_PROCESSING_RES  # the training grid is bounded like the inference grid



def _opt(default, help: str):
    """A config field with its help text (shown by `train/distill.py --help`)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything a run needs; the defaults are the `reference` preset."""

    # models
    teacher: str = _opt(LOTUS_G_ID, "f_G: frozen SDS teacher (Lotus-G folder or hub id)")
    student_init: str | None = _opt(None, "initial student weights (default: the teacher)")
    metric_model: str = _opt("unidepth-v1", f"f_D backend: {', '.join(METRIC_BACKENDS)}")
    metric_path: str | None = _opt(None, "f_D weights folder or hub id (default: the backend's usual checkpoint)")
    # data
    data: list[str] = _opt([], "image folders and/or rosbag2 recordings (folder with metadata.yaml or .mcap files, .mcap, .db3)")
    data_probs: list[float] | None = _opt(None, "mixing probability per data source (default: every image once per epoch)")
    topics: list[str] | None = _opt(None, "image topics to read from recordings (default: the camera image topics: raw colour/mono "
                                                "or compressed images, no depth)")
    resolution: tuple[int, int] = _opt((576, 768), "training size H W (multiples of 8): resize to cover, centre crop")
    depth_cache: str | None = _opt(None, "folder for f_D's depth of each image, reused in later epochs")
    num_workers: int = _opt(4, "data-loader worker processes")
    # method
    lambda_sds: float = _opt(1.0, "weight of the SDS loss")
    lambda_rec: float = _opt(0.4, "weight of the noise-aware reconstruction loss")
    pure_noise_prob: float = _opt(0.2, "probability of feeding [z_i, noise] instead of the gated latent")
    gating_noise: bool = _opt(True, "noise where f_G and f_D disagree; false feeds the clean z_d (the 'no noise' ablation)")
    ema_difference_from_step: int = _opt(0, "step from which the student's EMA, not frozen f_G, makes the difference map")
    fit_difference: bool = _opt(False, "least-squares fit d̃ onto d_n before the difference map (the paper's variant)")
    # optimisation
    optimizer: Literal["adam", "adamw"] = _opt("adamw", "adam or adamw")
    lr: float = _opt(1e-6, "learning rate (per sample, see scale_lr)")
    scale_lr: bool = _opt(True, "multiply lr by batch_size x grad_accum x number of processes")
    adam_betas: tuple[float, float] = _opt((0.9, 0.999), "Adam beta1 beta2")
    weight_decay: float = _opt(1e-2, "decoupled weight decay (adamw)")
    lr_schedule: Literal["constant", "cosine"] = _opt("cosine", "constant or cosine (after warm-up)")
    warmup_steps: int = _opt(200, "linear warm-up steps")
    batch_size: int = _opt(1, "images per process and micro-step")
    grad_accum: int = _opt(8, "micro-steps per optimizer step")
    max_steps: int | None = _opt(None, "stop after this many optimizer steps")
    epochs: int | None = _opt(6, "stop after this many passes over the data")
    grad_clip: float | None = _opt(1.0, "clip the gradient norm to this (None: no clipping)")
    mixed_precision: Literal["no", "fp16", "bf16"] = _opt("bf16", "no, fp16 or bf16")
    gradient_checkpointing: bool = _opt(False, "recompute UNet and VAE-decoder activations to save memory")
    ema_beta: float = _opt(0.9999, "EMA decay")
    ema_update_after_step: int = _opt(100, "EMA copies the student until this step")
    ema_update_every: int = _opt(10, "EMA update interval in steps")
    ema_before_step: bool = _opt(True, "update the EMA just before optimizer.step() (one step behind), as the reference script")
    flip_before_metric: bool = _opt(True, "flip the image before f_D, as the reference script; false: f_D on the image, "
                                          "then image and depth flipped together")
    # bookkeeping
    output_dir: str = _opt("runs/sharpdepth", "checkpoints and TensorBoard logs go here")
    seed: int = _opt(0, "seed of data order, noise and flips")
    checkpoint_every: int = _opt(1000, "save a checkpoint every N steps")
    keep_checkpoints: int = _opt(3, "keep the last N checkpoints")
    log_every: int = _opt(10, "log scalars every N steps")
    validate_every: int = _opt(500, "log validation pictures at step 1, every N steps and at the end (0: never)")
    validation_images: int = _opt(2, "how many training images to picture at validation")


PRESETS: dict[str, TrainConfig] = {
    "reference": TrainConfig(),
    # The paper's text: Adam at a constant 1e-6, batch 1 x 16, 13k iterations, λ_rec 0.3, f_G replaced
    # by the EMA "as training progresses" (no step given: 1000 is this project's choice), the
    # least-squares fit before the difference map, no pure-noise branch; precision/clipping unstated.
    "paper": dataclasses.replace(
        TrainConfig(),
        lambda_rec=0.3, pure_noise_prob=0.0, ema_difference_from_step=1000, fit_difference=True,
        optimizer="adam", scale_lr=False, weight_decay=0.0, lr_schedule="constant", warmup_steps=0,
        grad_accum=16, max_steps=13_000, epochs=None, grad_clip=None, mixed_precision="no",
        ema_before_step=False, flip_before_metric=False,
    ),
    # A laptop CPU, offline, minutes: the embedded small models (f_G teacher, small-conv f_D) at their
    # camera's resolution, the reference method at the small scale of train/nano/configs/sharpdepth.yaml
    # (a learning rate and an EMA horizon fitted to a few hundred steps).
    "nano": dataclasses.replace(
        TrainConfig(),
        teacher=str(EMBEDDED_DIR / "teacher"), metric_model="small-conv", metric_path=str(EMBEDDED_DIR / "metric"),
        resolution=(small_scale.H, small_scale.W),  # the embedded models' camera depth_cache="runs/depth_cache", num_workers=2,
        lr=1e-4, scale_lr=False, lr_schedule="cosine", warmup_steps=20, batch_size=4, grad_accum=1, max_steps=300,
        epochs=None, mixed_precision="no", ema_beta=0.99, ema_update_after_step=10, ema_update_every=1,
        output_dir="runs/nano", checkpoint_every=100, log_every=10, validate_every=100,
    ),
}


def _optional_of(tp):
    """The X of a field typed `X | None`, else None."""
    if get_origin(tp) in (Union, types.UnionType):
        return next(a for a in get_args(tp) if a is not type(None))
    return None


def _coerce(name: str, tp, value):
    """`value` (from YAML or a command line string) as the field's declared type, or a clear error."""
    origin, args = get_origin(tp), get_args(tp)
    bad = ValueError(f"config {name}: cannot use {value!r} as {getattr(tp, '__name__', tp)}")
    if (inner := _optional_of(tp)) is not None:
        if value is None or (isinstance(value, str) and value.strip().lower() in {"", "none", "null", "~"}):
            return None
        return _coerce(name, inner, value)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"config {name}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [value]
        if not isinstance(value, (list, tuple)):
            value = [value]
        items = [_coerce(name, args[0] if origin is list else args[min(i, len(args) - 1)], v) for i, v in enumerate(value)]
        if origin is tuple and len(items) != len(args):
            raise ValueError(f"config {name}: needs {len(args)} values, got {len(items)}")
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        words = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
        if str(value).strip().lower() not in words:
            raise bad
        return words[str(value).strip().lower()]
    if isinstance(value, bool) or (tp is int and isinstance(value, float) and not value.is_integer()):
        raise bad
    try:
        if tp in (int, float):
            return tp(value)
    except (TypeError, ValueError):
        raise bad from None
    if tp is str and isinstance(value, (str, int, float)):
        return str(value)
    raise bad


def config_types() -> dict[str, object]:
    return get_type_hints(TrainConfig)


def override(cfg: TrainConfig, values: Mapping[str, object]) -> TrainConfig:
    """A copy of cfg with `values` (field name -> YAML value or string) applied; unknown names are errors."""
    types_ = config_types()
    changes = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in types_:
            close = difflib.get_close_matches(name, types_, n=1)
            raise ValueError(f"unknown config field {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        changes[name] = _coerce(name, types_[name], value)
    return dataclasses.replace(cfg, **changes)


def read_config_file(path: str | Path) -> dict:
    """A YAML mapping of config fields (not yet checked against TrainConfig)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"config file {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"config file {path} must hold a mapping of field: value")
    return loaded


def make_config(preset: str = "reference", yaml_file: str | Path | None = None, overrides: Mapping[str, object] = {},
                base: str | Path | None = None) -> TrainConfig:
    """Preset (or, when resuming, `base`: a checkpoint's saved config.yaml), then the YAML file, then
    explicit overrides (the command line), each winning over the last."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = PRESETS[preset] if base is None else _override_from_file(TrainConfig(), base)
    if yaml_file is not None:
        cfg = _override_from_file(cfg, yaml_file)
    return override(cfg, overrides)


def _override_from_file(cfg: TrainConfig, path: str | Path) -> TrainConfig:
    values = read_config_file(path)
    try:
        return override(cfg, values)
    except ValueError as exc:  # name the file the bad value came from
        raise ValueError(f"{path}: {exc}") from None


def config_dict(cfg: TrainConfig) -> dict:
    """Plain YAML-able values (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def check_config(cfg: TrainConfig) -> None:
    """Refuse a run that cannot work, naming the field, before any model is loaded."""
    problems = [f"{name}: {value} must be finite" for name, value in _floats(cfg) if not math.isfinite(value)]
    if not cfg.data:
        problems.append("data: give at least one image folder or recording")
    if cfg.data_probs is not None and len(cfg.data_probs) != len(cfg.data):
        problems.append(f"data_probs: {len(cfg.data_probs)} values for {len(cfg.data)} data sources")
    if cfg.data_probs is not None and not (all(p >= 0 for p in cfg.data_probs) and sum(cfg.data_probs) > 0):
        problems.append(f"data_probs: {cfg.data_probs} must be >= 0 with a positive sum")
    if any(v <= 0 or v % 8 or v > MAX_PROCESSING_RES for v in cfg.resolution):
        problems.append(f"resolution: {cfg.resolution} must be positive multiples of 8, at most {MAX_PROCESSING_RES}")
    if not 0 <= cfg.pure_noise_prob <= 1:
        problems.append(f"pure_noise_prob: {cfg.pure_noise_prob} is not in [0, 1]")
    if cfg.max_steps is None and cfg.epochs is None:
        problems.append("max_steps / epochs: set at least one")
    for name in ("batch_size", "grad_accum", "keep_checkpoints", "checkpoint_every", "log_every", "ema_update_every"):
        if getattr(cfg, name) < 1:
            problems.append(f"{name}: must be >= 1")
    for name in ("num_workers", "warmup_steps", "validate_every", "validation_images", "ema_update_after_step",
                 "ema_difference_from_step"):
        if getattr(cfg, name) < 0:
            problems.append(f"{name}: must be >= 0")
    if not 0 <= cfg.ema_beta < 1:
        problems.append(f"ema_beta: {cfg.ema_beta} is not in [0, 1)")
    if (cfg.max_steps is not None and cfg.max_steps < 1) or (cfg.epochs is not None and cfg.epochs < 1):
        problems.append("max_steps / epochs: must be >= 1")
    if cfg.lr <= 0:
        problems.append(f"lr: {cfg.lr} must be > 0")
    if problems:
        raise ValueError("invalid training config: " + "; ".join(problems))


def _floats(cfg: TrainConfig) -> list[tuple[str, float]]:
    """(field, value) of every float in the config, list and tuple items included (NaN passes every
    comparison check: `lr <= 0` is False for it)."""
    return [(name, v) for name, value in dataclasses.asdict(cfg).items()
            for v in (value if isinstance(value, (list, tuple)) else [value]) if isinstance(v, float)]


def check_models(cfg: TrainConfig) -> None:
    """Find every model the config names before loading any, and name the setting(s) to change in one
    error (offline, each default hub id would otherwise fail alone, one run at a time)."""
    from .models.hub import CheckpointError, MissingWeightsError, resolve_model_dir
    from .models.metric import metric_weights

    problems: list[tuple[str, str]] = []  # (setting to change, what is wrong)

    def find(setting: str, path_or_id: str, what: str) -> None:
        try:
            resolve_model_dir(path_or_id, what)
        except (MissingWeightsError, CheckpointError) as exc:
            problems.append((setting, str(exc)))

    find("teacher", cfg.teacher, "f_G teacher")
    if cfg.student_init:
        find("student_init", cfg.student_init, "initial student")
    try:
        weights = metric_weights(cfg.metric_model, cfg.metric_path)
    except (ValueError, ImportError) as exc:
        problems.append(("metric_model", str(exc)))
    except MissingWeightsError as exc:
        problems.append(("metric_path", str(exc)))
    else:
        find("metric_path" if cfg.metric_path else "metric_path (default of metric_model)", weights, f"f_D ({cfg.metric_model})")
    if problems:
        embedded = str(EMBEDDED_DIR) in (cfg.teacher, cfg.metric_path)
        raise MissingWeightsError(
            "the models of this config cannot be found; set " + ", ".join(setting for setting, _ in problems)
            + f" (--set KEY=VALUE or --KEY{'' if embedded else '; --preset nano uses the embedded small models'}): "
            + " | ".join(f"{setting}: {message}" for setting, message in problems)
        )


# --- the command line (train/distill.py) --------------------------------------------------------


def _shown(value) -> str:
    """A preset's value in `--help`: the embedded models' folder as <embedded>."""
    return str(value).replace(str(EMBEDDED_DIR), "<embedded>")


def add_field_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field (`--lambda-rec` and `--lambda_rec`), its help showing each preset's value
    where they differ; list fields take several values. Unset flags leave no attribute."""
    names = " / ".join(PRESETS)
    group = parser.add_argument_group(
        "config fields", f"[value of every preset, or {names} where they differ; <embedded> is {EMBEDDED_DIR}; "
                         "--print-config --preset NAME prints one preset whole]")
    types_ = config_types()
    for f in dataclasses.fields(TrainConfig):
        values = [getattr(preset, f.name) for preset in PRESETS.values()]
        shown = _shown(values[0]) if all(v == values[0] for v in values) else " / ".join(map(_shown, values))
        flags = [f"--{f.name.replace('_', '-')}"] + ([f"--{f.name}"] if "_" in f.name else [])
        tp = _optional_of(types_[f.name]) or types_[f.name]
        group.add_argument(*flags, dest=f.name, nargs="+" if get_origin(tp) in (list, tuple) else None,
                           default=argparse.SUPPRESS, metavar=f.name.upper(), help=f"{f.metadata['help']} [{shown}]")


def command_line_overrides(assignments: list[str], args: argparse.Namespace) -> dict[str, object]:
    """`--set KEY=VALUE` items, then the field flags given (the later wins), for `make_config`; the
    values stay strings and lists of strings: `override` coerces them."""
    overrides: dict[str, object] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set needs KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides.update({k: v for k, v in vars(args).items() if k in names})
    return overrides


def _located(path_or_id: str | None) -> str | None:
    """A local folder as its absolute path (valid from anywhere); a hub id (or None) as it is."""
    if path_or_id is not None and Path(path_or_id).expanduser().is_dir():
        return str(Path(path_or_id).expanduser().resolve())
    return path_or_id


def distilled_from(cfg: TrainConfig) -> dict:
    """What the student this config trains learns from (pipeline.json's `distilled_from`): its teachers,
    and `embedded`: whether one of them, or its initial weights, is an embedded model. Those know the
    synthetic scenes only, and so does a student they taught: the CLI and the node say so."""
    sources = {"teacher": _located(cfg.teacher),
               "metric": _located(cfg.metric_path or DEFAULT_METRIC_IDS.get(cfg.metric_model)),
               "student_init": _located(cfg.student_init)}
    sources = {k: v for k, v in sources.items() if v is not None}
    embedded = any(Path(v).is_relative_to(EMBEDDED_DIR.resolve()) for v in sources.values())
    return {**sources, "embedded": embedded}


def student_pipeline_config(cfg: TrainConfig) -> dict:
    """The pipeline.json of the student this config trains: what `--student` needs besides its weights."""
    origin = distilled_from(cfg)
    return pipeline_config.make(cfg.metric_model, max(cfg.resolution), cfg.fit_difference, False,
                                metric_path=origin.get("metric"), distilled_from=origin)
