"""What train/light_decoder.py and train/light_encoder.py share: both distil one VAE call of a pipeline
into a small network, GT-free, on images of the target domain. Per batch, the script's `pairs(pipe,
image, generator)` gives (what the network reads, what the VAE call returns for it); the network learns
that mapping (L1), and is saved whole or not at all into the pipeline folder, where the pipeline finds it.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from sharpdepth_core.data import MixingSampler, TrainingImages, open_source
from sharpdepth_core.files import replacing_dir
from sharpdepth_core.models.hub import quiet_loading
from sharpdepth_core.pipeline import DEFAULT_PROCESSING_RES, SharpDepthPipeline

Pairs = Callable[[SharpDepthPipeline, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def parser(doc: str, folder: str, channels: list[int], lr: float) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog="\n\n".join(doc.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="the pipeline folder (student/, metric/, pipeline.json)")
    p.add_argument("--data", nargs="+", required=True, help="image folders and/or rosbag2/MCAP recordings of the target domain")
    p.add_argument("--out", type=Path, help=f"output folder (default: <model>/{folder})")
    p.add_argument("--resolution", type=int, nargs=2, metavar=("H", "W"),
                   help="training size (default: the pipeline's camera, else 4:3 at its processing resolution)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--channels", type=int, nargs="+", default=channels, help="widths, one per x2 stage plus one")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None, doc: str, script: str, folder: str, build: Callable, pairs: Pairs, load: Callable,
         channels: list[int], lr: float) -> int:
    """Parse, load the pipeline and data, train `build(pipe, channels)` on `pairs`, save to <model>/<folder>."""
    args = parser(doc, folder, channels, lr).parse_args(argv)
    torch.manual_seed(args.seed)
    quiet_loading()  # one progress bar: ours
    try:
        pipe = SharpDepthPipeline.from_pretrained(args.model, device=args.device)
        res = pipe.processing_res or DEFAULT_PROCESSING_RES
        camera = pipe.camera or {"height": res * 3 // 4 // 8 * 8, "width": res}
        hw = tuple(args.resolution) if args.resolution else (camera["height"], camera["width"])
        data = TrainingImages([open_source(d) for d in args.data], hw)
        factor = pipe.student.codec.downsample_factor
        if 2 ** (len(args.channels) - 1) != factor:
            raise ValueError(f"--channels needs {factor.bit_length()} widths for the VAE's x{factor}")
    except (ValueError, FileNotFoundError) as exc:
        print(f"{script}: error: {exc}", file=sys.stderr)
        return 2
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch, sampler=MixingSampler([len(data)], seed=args.seed),
                                         drop_last=True)
    if len(loader) == 0:
        print(f"{script}: error: {len(data)} images are fewer than one batch of {args.batch}", file=sys.stderr)
        return 2
    net = build(pipe, tuple(args.channels)).to(args.device).train()
    loss = fit(net, pipe, loader, pairs, args)
    out = args.out or args.model / folder
    with replacing_dir(out) as tmp:  # whole or not at all; never over files it did not write
        net.eval().save_pretrained(tmp)
    load(out)  # the public loader reads it back
    params = sum(q.numel() for q in net.parameters())
    print(f"{folder.replace('_', ' ')} ({params / 1e3:.0f} k parameters, last L1 {loss:.4f}) -> {out}")
    return 0


def fit(net: torch.nn.Module, pipe: SharpDepthPipeline, loader, pairs: Pairs, args: argparse.Namespace) -> float:
    """AdamW with a one-cycle schedule for args.steps steps of L1 between net(input) and the VAE's target."""
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    generator = torch.Generator().manual_seed(args.seed)
    bar, step = tqdm(total=args.steps, desc=type(net).__name__, unit="step"), 0
    while step < args.steps:
        for batch in loader:
            with torch.no_grad():
                x, target = pairs(pipe, batch["image"].to(args.device), generator)
            loss = (net(x) - target).abs().mean()
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
    return loss.item()
