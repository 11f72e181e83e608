"""Model loaders: the one-step diffusion depth model (Lotus-G / student), the VAE depth codec, the
metric depth backends and the light depth decoder and encoder.

Every loader takes a local folder or a hub id (`from_pretrained`), reads safetensors only and
answers in one line what is missing when weights are absent (`MissingWeightsError`) or unusable
(`CheckpointError`).
"""
from ..embedded import EMBEDDED_DIR
from .codec import DepthCodec
from .hub import CheckpointError, MissingWeightsError, resolve_model_dir
from .metric import DEFAULT_METRIC_IDS, METRIC_BACKENDS, load_metric_model
from .metric_backend import MetricBackend, MetricPrediction
from .student import PROMPT_EMBEDS_FILE, DiffusionDepthModel


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
