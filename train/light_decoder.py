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
accuracy against the exact path's (as `bench/difference_accuracy.py` does for the embedded models) and
its speed (`python bench/pipeline.py --config full`) before using it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from sharpdepth_core.data import MixingSampler, TrainingImages, open_source
from sharpdepth_core.models.hub import replacing_dir
from sharpdepth_core.models.light_decoder import LIGHT_DECODER_DIR, LightDepthDecoder
from sharpdepth_core.normalization import normalize_depth
from sharpdepth_core.pipeline import DEFAULT_PROCESSING_RES, SharpDepthPipeline


def latents(pipe: SharpDepthPipeline, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The two kinds of latent the pipeline decodes or encodes for one batch: [ẑ_a; z_d]."""
    codec = pipe.student.codec
    z_i = codec.encode_image(image)
    eps = torch.randn(z_i.shape, generator=generator).to(z_i.device)
    z_a = pipe.student(z_i, eps)
    d_n, _, _ = normalize_depth(pipe.metric_model(image).depth)
    return torch.cat([z_a, codec.encode_depth(d_n)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="the pipeline folder (student/, metric/, pipeline.json)")
    p.add_argument("--data", nargs="+", required=True, help="image folders and/or rosbag2/MCAP recordings of the target domain")
    p.add_argument("--out", type=Path, help=f"output folder (default: <model>/{LIGHT_DECODER_DIR})")
    p.add_argument("--resolution", type=int, nargs=2, metavar=("H", "W"),
                   help="training size (default: the pipeline's camera, else 4:3 at its processing resolution)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--channels", type=int, nargs="+", default=[64, 32, 16, 16], help="widths, one per x2 stage plus one")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    try:
        pipe = SharpDepthPipeline.from_pretrained(args.model, device=args.device)
        res = pipe.processing_res or DEFAULT_PROCESSING_RES
        camera = pipe.camera or {"height": res * 3 // 4 // 8 * 8, "width": res}
        hw = tuple(args.resolution) if args.resolution else (camera["height"], camera["width"])
        data = TrainingImages([open_source(d) for d in args.data], hw)
    except (ValueError, FileNotFoundError) as exc:
        print(f"light_decoder.py: error: {exc}", file=sys.stderr)
        return 2
    factor = pipe.student.codec.downsample_factor
    channels = args.channels
    if 2 ** (len(channels) - 1) != factor:
        print(f"light_decoder.py: error: --channels needs {factor.bit_length()} widths for the VAE's x{factor}", file=sys.stderr)
        return 2
    net = LightDepthDecoder(pipe.student.vae.config.latent_channels, tuple(channels)).to(args.device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch, sampler=MixingSampler([len(data)], seed=args.seed),
                                         drop_last=True)
    if len(loader) == 0:
        print(f"light_decoder.py: error: {len(data)} images are fewer than one batch of {args.batch}", file=sys.stderr)
        return 2
    generator = torch.Generator().manual_seed(args.seed)
    bar, step = tqdm(total=args.steps, desc="light decoder", unit="step"), 0
    while step < args.steps:
        for batch in loader:
            with torch.no_grad():
                z = latents(pipe, batch["image"].to(args.device), generator)
                target = pipe.student.codec.decode_depth(z)
            loss = (net(z) - target).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            bar.update()
            bar.set_postfix(l1=f"{loss.item():.4f}")
            if step >= args.steps:
                break
    bar.close()
    out = args.out or args.model / LIGHT_DECODER_DIR
    with replacing_dir(out) as tmp:  # whole or not at all; never over files it did not write
        net.eval().save_pretrained(tmp)
    LightDepthDecoder.load(out)  # the public loader reads it back
    params = sum(q.numel() for q in net.parameters())
    print(f"light depth decoder ({params / 1e3:.0f} k parameters, last L1 {loss.item():.4f}) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
