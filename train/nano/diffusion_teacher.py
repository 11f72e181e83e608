#!/usr/bin/env python3
"""Step 3: the affine diffusion teacher f_G, Lotus-G's architecture in a small config (SD-2-shaped
UNet with 8 input channels, projection task embedding, empty-prompt cross-attention), trained the
Lotus way on normalised depth: one UNet call at t = 999 on [image latent, noise], x0 prediction, MSE
to the depth latent, plus L1 of the decoded depth (through the frozen VAE decoder) on a few images per
batch, which keeps boundaries crisp.

Its scenes are F_G_STYLE (chosen by pilot on the val seeds, bench/NANO_REPORT.md "Design") through
the target camera. Latents of the training scenes are computed once (the VAE is frozen).
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel

from common import OUT, batch, optimize, progress, scenes, setup
from sharpdepth_core.small_scale import F_G_STYLE
from sharpdepth_core.models.student import DiffusionDepthModel, empty_prompt_embedding
from sharpdepth_core.tiny import tiny_clip, tiny_scheduler
from sharpdepth_core.normalization import normalize_depth

DECODE_IMAGES = 4  # images per batch that also get the decoded-depth L1


def nano_unet() -> UNet2DConditionModel:
    # diffusers reads attention_head_dim as the number of heads (SD-2's legacy naming): 2 heads of
    # 16-64 channels train 1.7x faster on CPU than 8 heads of 4-16, measured here
    return UNet2DConditionModel(
        sample_size=16, in_channels=8, out_channels=4, block_out_channels=(32, 64, 128), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=16, use_linear_projection=True,
        class_embed_type="projection", projection_class_embeddings_input_dim=4,
    )


@torch.no_grad()
def latents(codec, rgb: np.ndarray, depth: np.ndarray, n: int, vae_dir: Path, style: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image latents, depth latents and d_n of the first n scenes (computed once, in chunks, and
    cached for this VAE's weights: encoding costs minutes on two CPU cores)."""
    weights = hashlib.sha256(b"".join(f.read_bytes() for f in sorted(vae_dir.glob("*")))).hexdigest()[:16]
    cache = OUT / "cache" / f"latents_{style}_{n}_{weights}.pt"
    if cache.is_file():
        return tuple(torch.load(cache, weights_only=True))
    z_i, z_d, d_ns = [], [], []
    for s in range(0, n, 64):
        image, d = batch(rgb, depth, np.arange(s, min(s + 64, n)), flip=False)
        d_n, _, _ = normalize_depth(d)
        z_i.append(codec.encode_image(image))
        z_d.append(codec.encode_depth(d_n))
        d_ns.append(d_n)
    out = [torch.cat(z_i), torch.cat(z_d), torch.cat(d_ns)]
    tmp = cache.with_name(cache.name + ".tmp")
    torch.save(out, tmp)
    tmp.replace(cache)
    return tuple(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2500)
    p.add_argument("--scenes", type=int, default=4000, help="training scenes to encode")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--decode-weight", type=float, default=0.5)
    p.add_argument("--vae", default=str(OUT / "vae"))
    p.add_argument("--style", default=F_G_STYLE, help=f"the scenes' style, or styles joined by + for a mix (default {F_G_STYLE})")
    p.add_argument("--out", default=str(OUT / "f_G"))
    args = p.parse_args()
    setup(0)
    vae = AutoencoderKL.from_pretrained(args.vae, use_safetensors=True).eval().requires_grad_(False)
    torch.manual_seed(0)
    text_encoder, tokenizer = tiny_clip()  # only for the constant empty-prompt embedding
    model = DiffusionDepthModel(nano_unet(), vae, tiny_scheduler(), empty_prompt_embedding(text_encoder, tokenizer))
    print(f"f_G UNet: {sum(p.numel() for p in model.unet.parameters()) / 1e6:.2f} M parameters")
    codec = model.codec
    styles = args.style.split("+")  # a mix: an equal share of each style's scenes
    parts = [latents(codec, *scenes(style, "f_G"), args.scenes // len(styles), Path(args.vae), style) for style in styles]
    z_i, z_d, d_n = (torch.cat(x) for x in zip(*parts))
    print(f"encoded {len(z_i)} {args.style} scenes", flush=True)
    model.unet.requires_grad_(True).train()
    opt = torch.optim.AdamW(model.unet.parameters(), lr=args.lr, weight_decay=1e-2)
    rng = np.random.default_rng(2)
    for step in progress(args.steps, "f_G"):
        idx = torch.from_numpy(rng.integers(0, len(z_i), args.batch))
        flip = torch.rand(()) < 0.5  # the latent grid of a flipped image is close to the flipped grid
        zi, zd, dn = (x[idx].flip(-1) if flip else x[idx] for x in (z_i, z_d, d_n))
        pred = model(zi, torch.randn_like(zd))  # Lotus: x0 at t = 999 from [image latent, noise]
        loss_latent = F.mse_loss(pred, zd)
        loss_decoded = (codec.decode_depth(pred[:DECODE_IMAGES]) - dn[:DECODE_IMAGES]).abs().mean()
        loss = loss_latent + args.decode_weight * loss_decoded
        optimize(opt, loss, model.unet.parameters(), args.lr, step, step / args.steps)
    model.eval().requires_grad_(False).save_pretrained(args.out)
    DiffusionDepthModel.from_pretrained(args.out)  # the public loader reads it back
    print(f"f_G: {args.steps} steps -> {args.out}")


if __name__ == "__main__":
    main()
