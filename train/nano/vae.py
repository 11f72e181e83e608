#!/usr/bin/env python3
"""Step 1: a small AutoencoderKL (SD-2 layout: ×8 downsampling, 4 latent channels) for images and
normalised depth of every style, seen through the target camera.

Loss: L1 reconstruction plus a small KL term, half of each batch images, half depth replicated to 3
channels (as the depth codec feeds it), on random 64x64 crops (the network is convolutional; crops
cut the cost on two CPU cores by three). Afterwards the scaling factor is set to 1 / std of the depth
and image latents, SD's own rule, so scaled latents have unit variance as the t = 999 noise assumes.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from diffusers import AutoencoderKL

from common import OUT, batch, optimize, progress, scenes, setup
from sharpdepth_core.small_scale import TARGET
from sharpdepth_core.models.codec import DepthCodec
from sharpdepth_core.normalization import normalize_depth
from sharpdepth_core.synthetic import STYLES

CROP = 64


def nano_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 64, 64), layers_per_block=1, latent_channels=4, norm_num_groups=8,
        sample_size=128, scaling_factor=1.0,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--kl", type=float, default=1e-5)
    p.add_argument("--out", default=str(OUT / "vae"))
    args = p.parse_args()
    setup(0)
    data = [scenes(style, "vae") for style in STYLES]
    vae = nano_vae().train()
    print(f"VAE: {sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M parameters")
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    rng, half = np.random.default_rng(0), args.batch // 2
    for step in progress(args.steps, "VAE"):
        rgb, depth = data[step % len(data)]
        image, d = batch(rgb, depth, rng.integers(0, len(rgb), args.batch))
        d_n, _, _ = normalize_depth(d[:half])  # normalised over the whole image, as the pipeline does
        x = torch.cat([image[half:] * 2 - 1, d_n.expand(-1, 3, -1, -1)])
        y0, x0 = (int(v) for v in rng.integers(0, (x.shape[-2] - CROP + 1, x.shape[-1] - CROP + 1)))
        x = x[..., y0 : y0 + CROP, x0 : x0 + CROP]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        l1_img, l1_depth = (rec - x).abs()[:half].mean(), (rec - x).abs()[half:].mean()
        loss = l1_img + 2 * l1_depth + args.kl * post.kl().mean()
        optimize(opt, loss, vae.parameters(), args.lr, step, step / args.steps, floor=0.1)
    vae.eval()
    with torch.no_grad():  # scaling factor: unit variance of the posterior means (SD's 0.18215 rule)
        image, d = batch(*data[STYLES.index(TARGET)], np.arange(64), flip=False)
        d_n, _, _ = normalize_depth(d)
        codec = DepthCodec(vae)
        z = torch.cat([codec.encode_image(image), codec.encode_depth(d_n)])
        vae.register_to_config(scaling_factor=float(1 / z.std()))
        err = (DepthCodec(vae).decode_depth(DepthCodec(vae).encode_depth(d_n)) - d_n).abs().mean()
    vae.save_pretrained(args.out)
    print(f"VAE: {args.steps} steps, scaling factor {vae.config.scaling_factor:.4f}, "
          f"depth round-trip L1 {err:.4f} (target style) -> {args.out}")


if __name__ == "__main__":
    main()
