"""bench/train_step.py: enough timed steps by default, and the bf16 / fp32 ratio said in its output."""
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("train_step_bench", REPO / "bench" / "train_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_is_twenty_timed_steps_after_warm_up():
    args = _bench().build_parser().parse_args([])
    assert args.steps >= 20 and args.warmup >= 1


def test_the_bf16_ratio_is_stated_per_config():
    row = {"device": "cpu", "resolution": 32}
    rows = [{**row, "config": "small", "precision": "no", "s_per_step_min": 0.10},
            {**row, "config": "small", "precision": "bf16", "s_per_step_min": 0.18},
            {"config": "sd2-512", "precision": "no", "error": "needs a GPU"}]
    assert _bench().bf16_ratios(rows) == [
        "small: bf16 takes 1.80x the fp32 time per step on this CPU; train in fp32 (mixed_precision: no) here"]
