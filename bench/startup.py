"""How long a user waits for `--help` and for an argument mistake (issue 30 item 3's target: under 1 s
each). Every command runs in a fresh process, as a user types it; the median of `--runs` runs, in seconds,
beside the same command's exit status (each must fail fast, with its one line, or print help). Prints a
table and one JSON line. Measure on an idle machine: Python start-up itself is most of the time.

    .venv/bin/python bench/startup.py            # about 30 s on 2 cores (11 commands x 3 runs)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

BIN = Path(sys.executable).parent


def commands(tmp: Path) -> dict[str, list[str]]:
    """name -> argv. Each argument error names a real, readable image, so only that mistake is wrong."""
    image = tmp / "photo.png"
    Image.new("RGB", (64, 48), (90, 120, 150)).save(image)
    predict = [str(BIN / "sharpdepth"), "predict", str(image), "--out", str(tmp / "out")]
    return {
        "sharpdepth --help": [str(BIN / "sharpdepth"), "--help"],
        "predict --help": [str(BIN / "sharpdepth"), "predict", "--help"],
        "predict --device gpu": [*predict, "--device", "gpu"],
        "predict --intrinsics 1,2,3": [*predict, "--intrinsics", "1,2,3"],
        "predict --processing-res 4": [*predict, "--processing-res", "4"],
        "predict missing.png": [str(BIN / "sharpdepth"), "predict", str(tmp / "missing.png"), "--out", str(tmp / "out")],
        "predict --student unknown/hub-id": [*predict, "--student", "nobody/no-such-model", "--metric", "depth-pro"],
        "export --help": [str(BIN / "sharpdepth"), "export", "--help"],
        "sharpdepth_node --help": [str(BIN / "sharpdepth_node"), "--help"],
        "sharpdepth_replay --help": [str(BIN / "sharpdepth_replay"), "--help"],
        "sharpdepth_replay -p rate:=0.0": [str(BIN / "sharpdepth_replay"), "--ros-args", "-p", "rate:=0.0"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write the JSON result to this file")
    args = p.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # the hub id: no network attempt
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, argv in commands(Path(tmp)).items():
            times, code = [], None
            for _ in range(args.runs):
                t = time.perf_counter()
                code = subprocess.run(argv, env=env, capture_output=True, timeout=120).returncode
                times.append(time.perf_counter() - t)
            rows[name] = {"median_s": round(statistics.median(times), 3), "exit": code}
    print(f"{'command':<36} {'median s':>9} {'exit':>5}   ({args.runs} runs each; target < 1 s)")
    for name, row in rows.items():
        print(f"{name:<36} {row['median_s']:>9.2f} {row['exit']:>5}")
    result = {"bench": "startup", "runs": args.runs, "commands": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
