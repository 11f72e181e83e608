"""`pipeline.json`: what a pipeline folder records besides its weights (metric backend and weights,
processing grid, the paper's difference-map option, whether the weights are random, the camera the
models were trained for, what the student was distilled from). The trainer writes one beside each
checkpoint's student, so that `--student` alone loads it. This module is its one reader and writer.
"""
from __future__ import annotations

import json
from pathlib import Path

from .files import write_text
from .hub_ids import DEFAULT_METRIC_IDS
from .limits import check_processing_res

FILE = "pipeline.json"
# the fields and their types, in the order written; anything else in a file is ignored
FIELDS = {"metric_backend": str, "metric_path": str, "processing_res": int, "difference_fit_first": bool,
          "untrained": bool, "camera": dict, "distilled_from": dict}


def make(metric_backend: str, processing_res: int, difference_fit_first: bool, untrained: bool, *,
         metric_path: str | None = None, camera: dict | None = None, distilled_from: dict | None = None) -> dict:
    """A pipeline.json's content; fields that are None are left out (their readers' defaults apply)."""
    values = {"metric_backend": metric_backend, "metric_path": metric_path, "processing_res": processing_res,
              "difference_fit_first": difference_fit_first, "untrained": untrained, "camera": camera,
              "distilled_from": distilled_from}
    return {k: v for k, v in values.items() if v is not None}


def write(folder: Path, config: dict) -> None:
    write_text(Path(folder) / FILE, json.dumps(config, indent=2) + "\n")


def read(folder: Path) -> dict:
    """`folder`'s pipeline.json as a dict of known, well-typed fields; MissingWeightsError when there is
    none, CheckpointError (one line) when it is not one."""
    from .models.hub import CheckpointError, MissingWeightsError, read_config

    path = Path(folder) / FILE
    if not path.is_file():
        raise MissingWeightsError(f"SharpDepth pipeline: no {FILE} in {folder}; pass a pipeline folder (student/, metric/, "
                                  f"{FILE}) or a student and a metric backend")
    config = read_config(path, "SharpDepth pipeline")
    for key, kind in FIELDS.items():
        value = config.get(key)
        if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            raise CheckpointError(f"{path}: {key} must be {'an' if kind is int else 'a'} {kind.__name__}, got {value!r}")
    try:
        check_processing_res(config.get("processing_res"))
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    return {k: v for k, v in config.items() if k in FIELDS}


def beside_student(student) -> dict:
    """The pipeline.json the trainer writes beside a student folder; {} for a hub id or a bare student."""
    student = Path(student).expanduser()
    return read(student.parent) if student.is_dir() and (student.parent / FILE).is_file() else {}


def metric_source(config: dict, metric: str | None = None, metric_path: str | Path | None = None,
                  own_metric: Path | None = None) -> tuple[str | None, str | Path | None]:
    """(metric backend, its weights) a pipeline loads, the one rule of `SharpDepthPipeline.from_pretrained`
    and of predict's check before loading: the given ones; else those `config` names (a pipeline folder's
    pipeline.json, or `beside_student`'s), the folder's own `own_metric` folder first for the weights; else
    for the weights the backend's usual hub id. None: no backend named, or weights for one without a
    published checkpoint (`models.metric.metric_weights` then says which in one line)."""
    metric = metric or config.get("metric_backend")
    if metric_path is None:
        metric_path = own_metric if own_metric is not None and own_metric.is_dir() else config.get("metric_path")
    return metric, metric_path or DEFAULT_METRIC_IDS.get(metric or "")
