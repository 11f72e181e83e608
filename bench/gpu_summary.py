"""bench/gpu_check.sh's summary: one table and $OUT/summary.json from the steps' outputs in $OUT.

Every bench prints one JSON line last; the summary takes that line of each step's output (so a step
that timed out or failed shows as such, with its exit status, and the others still count).

    python3 bench/gpu_summary.py /tmp/gpu-out
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from sharpdepth_core.files import write_text


def last_json(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def figures(name: str, result: dict) -> list[str]:
    """The lines of the table for one step's JSON."""
    if name in ("pipeline", "fast"):
        lines = [f"{r['setting']} @ {r['res']}: {r['fps']:.2f} frames/s ({1e3 * r['s']['total']:.1f} ms)" for r in result["results"]]
        return lines + [f"skipped {s['setting']}: {s['reason']}" for s in result["skipped"]]
    if name == "profile":
        top = [f"{stage} {s['wall_ms']:.1f} ms ({s['top'][0]['name'][:50] if s['top'] else '-'})" for stage, s in list(result["stages"].items())[:3]]
        syncs = result["host_syncs_per_frame"]
        syncs = syncs if isinstance(syncs, str) else f"{syncs['total']:g} per frame"
        return [f"{result['setting']} @ {result['res']}: " + "; ".join(top), f"host syncs per frame: {syncs}"]
    if name == "accuracy":
        return [f"{m}: AbsRel {v['abs_rel']:.4f} ({100 * v['cost']['abs_rel']:+.1f} %), DBE {v['dbe_acc']:.2f} / {v['dbe_compl']:.2f} "
                f"({100 * v['cost']['dbe_acc']:+.1f} / {100 * v['cost']['dbe_compl']:+.1f} %), within budget {v['within_budget']}"
                for m, v in result["methods"].items()]
    if name == "vae":
        return [f"{r['variant']}: frame {r['frame_ms']:.1f} ms ({r['speedup']:.2f}x fp32), mean Δ {r['difference_vs_fp32']['mean']:.1e}"
                for r in result["results"]] + [f"fastest at bf16's level: {result['fastest_at_bf16_level']}"]
    if name == "first_frame":
        return [f"{run}: first depth {r['first_depth_s']:.1f} s, next frame {r['second_frame_s']:.3f} s" for run, r in result["runs"].items()]
    if name == "cameras":
        out = []
        for r in result["results"]:
            lat = r.get("latency_s") or {"median": float("nan"), "p95": float("nan")}
            mem = f", GPU {r['gpu_peak_mib']:.0f} MiB" if r.get("gpu_peak_mib") is not None else ""
            out.append(f"{r['cameras']} camera(s): {r['aggregate_fps']:.2f} frames/s ({r['node_share_of_pipeline']:.2f} of the pipeline "
                       f"alone), latency median {1e3 * lat['median']:.0f} ms p95 {1e3 * lat['p95']:.0f} ms{mem}")
        return out
    return []


def summary(out: Path) -> dict:
    status = dict(line.split() for line in (out / "status.txt").read_text().splitlines() if line.strip())
    steps = {}
    for name, rc in status.items():
        text = (out / f"{name}.txt").read_text(errors="replace") if (out / f"{name}.txt").is_file() else ""
        result = last_json(text)
        entry = {"rc": int(rc), "timed_out": rc == "124"}
        if name == "tests":
            entry["result"] = text.strip().splitlines()[-1] if text.strip() else ""
        elif result is not None:
            entry["result"] = result
        steps[name] = entry
    return {"bench": "gpu_check", "steps": steps}


def table(result: dict) -> str:
    lines = []
    for name, step in result["steps"].items():
        state = "ok" if step["rc"] == 0 else ("timed out" if step["timed_out"] else f"failed (exit {step['rc']})")
        lines.append(f"{name:<12} {state}")
        res = step.get("result")
        try:
            body = [res] if isinstance(res, str) else figures(name, res) if res else []
        except (KeyError, TypeError, IndexError) as exc:  # a partial result must not hide the other steps
            body = [f"(unreadable result: {type(exc).__name__} {exc})"]
        lines += [f"    {line}" for line in body]
    return "\n".join(lines)


def main(argv=None) -> None:
    out = Path((argv or sys.argv[1:] or ["/tmp/gpu-out"])[0])
    if not (out / "status.txt").is_file():
        sys.exit(f"gpu_summary: {out / 'status.txt'} not found (run bench/gpu_check.sh first)")
    result = summary(out)
    devices = {s["result"].get("device") for s in result["steps"].values() if isinstance(s.get("result"), dict)} - {None}
    result["devices"] = sorted(devices)
    print(f"gpu_check on {', '.join(sorted(devices)) or '?'}")
    print(table(result))
    write_text(out / "summary.json", json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
