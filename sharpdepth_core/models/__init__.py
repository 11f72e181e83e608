"""Model loaders: the one-step diffusion depth model (Lotus-G / student), the VAE depth codec, the
metric depth backends and the light depth decoder and encoder.

Every loader takes a local folder or a hub id (`from_pretrained`), reads safetensors only and
answers in one line what is missing when weights are absent (`MissingWeightsError`) or unusable
(`CheckpointError`).

The names below load on first use (PEP 562): `models.hub`, which every front end uses to check a
model path, then imports without diffusers and transformers, so an argument error is said at once.
"""
from importlib import import_module

from ..choices import METRIC_BACKENDS
from ..embedded import EMBEDDED_DIR
from ..hub_ids import DEFAULT_METRIC_IDS
from .hub import CheckpointError, MissingWeightsError, resolve_model_dir

_LAZY = {"DepthCodec": ".codec", "load_metric_model": ".metric", "MetricBackend": ".metric_backend",
         "MetricPrediction": ".metric_backend", "PROMPT_EMBEDS_FILE": ".student", "DiffusionDepthModel": ".student"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_LAZY[name], __name__), name)


__all__ = [
    "CheckpointError",
    "DEFAULT_METRIC_IDS",
    "DepthCodec",
    "DiffusionDepthModel",
    "EMBEDDED_DIR",
    "METRIC_BACKENDS",
    "MetricBackend",
    "MetricPrediction",
    "MissingWeightsError",
    "PROMPT_EMBEDS_FILE",
    "load_metric_model",
    "resolve_model_dir",
]
