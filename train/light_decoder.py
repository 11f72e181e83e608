#!/usr/bin/env python3
"""Train a light depth decoder for a pipeline: the VAE decoder's depth output from a latent, cheaply.

The pipeline's first VAE decode exists only to make the difference map e (docs/METHOD.md, "Cost of a
frame"). This script distils that decode into `LightDepthDecoder` without any ground truth: for images
of the target domain it takes the latents the pipeline would decode — the student's affine pass
ẑ_a = G([z_i, ε]) and the metric depth latent z_d = enc(norm(f_D(I))) — and regresses the decoder's
output `dec(z)` (L1). The result goes to `<pipeline>/light_decoder/`, where `--difference light` (CLI)
or `difference_map:=light` (node) finds it.

  python train/light_decoder.py --model PIPELINE_DIR --data IMAGES_OR_BAGS... [--steps 2000]

Full-size recipe (SD-2 VAE, the SharpDepth release): the same command on a GPU with --resolution 576
768 --batch 8 --steps 20000 --device cuda over a few thousand images of your camera; then compare its
accuracy against the exact path's (as `bench/speed_accuracy.py` does for the embedded models) and
its speed (`python bench/pipeline.py --config full`) before using it. (Shared with train/light_encoder.py:
train/light_networks.py.)
"""
from __future__ import annotations

import sys

import torch

from light_networks import main as train_light
from sharpdepth_core.models.light_decoder import LIGHT_DECODER_DIR, LightDepthDecoder
from sharpdepth_core.normalization import normalize_depth
from sharpdepth_core.pipeline import SharpDepthPipeline


def latents(pipe: SharpDepthPipeline, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The two kinds of latent the pipeline decodes or encodes for one batch: [ẑ_a; z_d]."""
    codec = pipe.student.codec
    z_i = codec.encode_image(image)
    eps = torch.randn(z_i.shape, generator=generator).to(z_i.device)
    z_a = pipe.student(z_i, eps)
    d_n, _, _ = normalize_depth(pipe.metric_model(image).depth)
    return torch.cat([z_a, codec.encode_depth(d_n)])


def pairs(pipe: SharpDepthPipeline, image: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    z = latents(pipe, image, generator)
    return z, pipe.student.codec.decode_depth(z)


def build(pipe: SharpDepthPipeline, channels: tuple[int, ...]) -> LightDepthDecoder:
    return LightDepthDecoder(pipe.student.vae.config.latent_channels, channels)


def main(argv: list[str] | None = None) -> int:
    return train_light(argv, __doc__, "light_decoder.py", LIGHT_DECODER_DIR, build, pairs, LightDepthDecoder.load,
                       channels=[64, 32, 16, 16], lr=2e-3)


if __name__ == "__main__":
    sys.exit(main())
