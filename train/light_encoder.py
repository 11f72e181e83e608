#!/usr/bin/env python3
"""Train a light depth encoder for a pipeline: the VAE encoder's latent of f_D's depth, cheaply.

Every frame encodes f_D's normalised depth with the full VAE encoder, z_d = enc(norm(f_D(I)))
(docs/METHOD.md, "Cost of a frame"). This script distils that encode into `LightDepthEncoder` without
any ground truth: for images of the target domain it runs f_D, normalises its depth as the pipeline
does, and regresses the VAE's latent of it (L1). The result goes to `<pipeline>/light_encoder/`, where
the `fast` speed preset (`--speed fast`, the node's `speed:=fast`) finds it.

  python train/light_encoder.py --model PIPELINE_DIR --data IMAGES_OR_BAGS... [--steps 2000]

Full-size recipe (SD-2 VAE, the SharpDepth release): the same command on a GPU with --resolution 576
768 --batch 8 --steps 20000 --device cuda over a few thousand images of your camera; then compare its
accuracy against the exact path's (as `bench/speed_accuracy.py` does for the embedded models) before
using it. (Shared with train/light_decoder.py: train/light_networks.py.)
"""
from __future__ import annotations

import sys

import torch

from light_networks import main as train_light
from sharpdepth_core.models.light_encoder import LIGHT_ENCODER_DIR, LightDepthEncoder
from sharpdepth_core.normalization import normalize_depth
from sharpdepth_core.pipeline import SharpDepthPipeline


def pairs(pipe: SharpDepthPipeline, image: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(f_D's normalised depth, its VAE latent): what the pipeline encodes, at the training size."""
    d_n, _, _ = normalize_depth(pipe.metric_model(image).depth)
    return d_n, pipe.student.codec.encode_depth(d_n)


def build(pipe: SharpDepthPipeline, channels: tuple[int, ...]) -> LightDepthEncoder:
    return LightDepthEncoder(pipe.student.vae.config.latent_channels, channels)


def main(argv: list[str] | None = None) -> int:
    return train_light(argv, __doc__, "light_encoder.py", LIGHT_ENCODER_DIR, build, pairs, LightDepthEncoder.load,
                       channels=[16, 16, 32, 64], lr=2e-3)


if __name__ == "__main__":
    sys.exit(main())
