#!/usr/bin/env python3
"""SharpDepth GT-free distillation (no ground truth: any image folder or robot recording is data).

  python train/distill.py --preset reference --data /data/images /data/drive.mcap --output-dir runs/a
  python train/distill.py --preset nano --data /data/images                    # CPU, offline: embedded models
  accelerate launch --num_processes 4 train/distill.py --config my.yaml      # several GPUs / machines
  python train/distill.py --resume latest --output-dir runs/a                  # continue after a stop

The config is resolved as: --preset, then --config FILE.yaml, then --set KEY=VALUE (repeatable),
then the per-field flags (config fields, above); each later one wins. With --resume, the
checkpoint's own saved config takes the place of the preset (the options given override it; what
differs is printed). `--print-config --preset NAME` shows every field of a preset.
`--print-config` shows the result, checks it, and exits. SIGINT/SIGTERM save a checkpoint and stop
(exit status 128 + signal; a second one, later, stops at once); `--resume latest` continues.
The student of every checkpoint (`<output_dir>/checkpoints/step-NNNNNNN/student`) loads directly in
the pipeline and the ROS node, and a finished run writes `<output_dir>/pipeline` (`--model`).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import yaml

from sharpdepth_core.checkpoints import resolve_resume
from sharpdepth_core.models.hub import quiet_loading
from sharpdepth_core.trainer import train
from sharpdepth_core.training_config import (
    PRESETS,
    TrainConfig,
    add_field_arguments,
    check_config,
    command_line_overrides,
    config_dict,
    make_config,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="distill.py", description=__doc__.split("\n\n")[0], epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        usage="%(prog)s [--preset P] [--config FILE.yaml] [--set KEY=VALUE ...] [--resume latest|PATH] [--FIELD VALUE ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", choices=sorted(PRESETS), help="base settings (docs/METHOD.md table; nano: the embedded small "
                   "models on a CPU) [reference]")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML mapping of config fields")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one field (YAML value)")
    p.add_argument("--resume", metavar="latest|PATH", help="continue from the newest checkpoint in output_dir, or PATH, "
                   "with its saved config")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    add_field_arguments(p)
    return p


def resolve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[TrainConfig, Path | None]:
    """The run's config and the checkpoint it resumes (None: a new run); when resuming, the
    checkpoint's saved config.yaml takes the place of the preset."""
    try:
        overrides = command_line_overrides(args.set, args)
        cfg = make_config(args.preset or "reference", args.config, overrides)
        checkpoint = resolve_resume(cfg.output_dir, args.resume)
        if checkpoint is None:
            return cfg, None
        if args.preset:
            print(f"distill.py: note: --preset {args.preset} is not used: resuming {checkpoint} with its saved config",
                  file=sys.stderr)
        resumed = make_config(yaml_file=args.config, overrides=overrides, base=checkpoint / "config.yaml")
        # "latest" was found in cfg.output_dir: the run lives there even if its saved config names another
        return (dataclasses.replace(resumed, output_dir=cfg.output_dir) if args.resume == "latest" else resumed), checkpoint
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one INFO line per saved file otherwise
    cfg, checkpoint = resolve(args, parser)
    try:
        if args.print_config:  # shown even when incomplete (a preset alone has no data), then checked:
            print(yaml.safe_dump(config_dict(cfg), sort_keys=False), end="", flush=True)
            check_config(cfg)  # what training would refuse is refused here too
            return 0
        quiet_loading()  # no "Loading checkpoint shards" bar per sharded model: the trainer's line says what loads
        result = train(cfg, resume=checkpoint and str(checkpoint))
    except (ValueError, OSError, ImportError) as exc:  # bad data, weights, config or output folder: one line
        print(f"distill.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C / SIGTERM: stopped at once
        print("distill.py: stopped at once, without a new checkpoint; --resume latest continues from the last one",
              file=sys.stderr)
        return 130
    if result.interrupted:
        return 128 + result.interrupted
    print(f"done: step {result.state.step}; student: {result.checkpoint / 'student'}; "
          f"pipeline (--model, the node's model): {result.pipeline}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
