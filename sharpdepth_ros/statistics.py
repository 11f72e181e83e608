"""The depth node's counters, its periodic report and its log throttling (no ROS here: unit-tested alone).

The node counts per camera (`Stats`); every stats_period it reports the difference since the last
report (`Report`): one log line and the values of a /diagnostics status. Problems are logged at most
once per THROTTLE_S seconds per kind (`Throttle`, keyed by `problem_key`), so a camera sending 30 bad
frames a second costs one line, not thirty.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field

THROTTLE_S = 5.0
MAX_PROBLEMS = 64  # kinds of problem whose last log time is remembered


@dataclass
class Stats:
    """Counters and per-stage seconds since start; the reporter logs differences between snapshots."""

    received: int = 0
    published: int = 0
    dropped: int = 0
    fallbacks: int = 0  # frames whose final fit was degenerate: the metric model's depth was published
    rejected: dict[str, int] = field(default_factory=dict)
    stage_s: dict[str, float] = field(default_factory=dict)

    def copy(self) -> "Stats":
        return Stats(self.received, self.published, self.dropped, self.fallbacks, dict(self.rejected), dict(self.stage_s))

    def __add__(self, other: "Stats") -> "Stats":
        return Stats(self.received + other.received, self.published + other.published, self.dropped + other.dropped,
                     self.fallbacks + other.fallbacks, _summed(self.rejected, other.rejected), _summed(self.stage_s, other.stage_s))

    def add_frame(self, stages: dict[str, float], fallback: bool) -> None:
        """A published frame, with the seconds of each of its stages."""
        self.published += 1
        self.fallbacks += int(fallback)
        for k, v in stages.items():
            self.stage_s[k] = self.stage_s.get(k, 0.0) + v

    def reject(self, kind: str) -> int:
        """Count a skipped frame of `kind`; how many of that kind so far."""
        self.rejected[kind] = self.rejected.get(kind, 0) + 1
        return self.rejected[kind]


def _summed(a: dict, b: dict) -> dict:
    return {k: a.get(k, 0) + b.get(k, 0) for k in {**a, **b}}


@dataclass
class Report:
    """What a camera did between two snapshots of its counters: the log line and /diagnostics values."""

    text: str
    values: dict[str, str]
    warn: bool  # frames were skipped, or frames came in and none went out
    busy: bool  # anything happened: worth a log line


def report(before: Stats, now: Stats, period_s: float) -> Report:
    """The rates, drops, skips and per-stage milliseconds per published frame between `before` and `now`."""
    period_s = max(period_s, 1e-9)
    received, published = now.received - before.received, now.published - before.published
    dropped = now.dropped - before.dropped
    rejected = {k: v - before.rejected.get(k, 0) for k, v in now.rejected.items() if v > before.rejected.get(k, 0)}
    latency = {k: 1e3 * (v - before.stage_s.get(k, 0.0)) / published for k, v in now.stage_s.items()} if published else {}
    text = (
        f"in {received / period_s:.1f} Hz, out {published / period_s:.1f} Hz, dropped {dropped} "
        f"(total {now.dropped}), skipped {sum(rejected.values())}, fit fallbacks {now.fallbacks - before.fallbacks}"
        + (f" {rejected}" if rejected else "")
        + ("; ms/frame " + ", ".join(f"{k} {v:.1f}" for k, v in latency.items()) if latency else "")
    )
    values = {"input_hz": f"{received / period_s:.2f}", "output_hz": f"{published / period_s:.2f}", "dropped": str(dropped),
              "dropped_total": str(now.dropped), "skipped": str(sum(rejected.values()))}
    values.update({f"latency_ms/{k}": f"{v:.2f}" for k, v in latency.items()})
    return Report(text, values, bool(rejected or (received and not published)), bool(received or published or rejected))


def diagnostic_rows(reports: list[tuple[str, Report]], state: str, why: str) -> list[tuple[str, int, str, dict]]:
    """(name, level 0 OK / 1 WARN / 2 ERROR, message, values) of each /diagnostics status: a camera's
    report with the lifecycle state; unconfigured (no cameras), the state alone, an error when a
    configure failed (`why`)."""
    if not reports:
        return [("depth", 2 if why else 0, why or state, {"state": state})]
    return [(name, int(r.warn), r.text if state == "active" else f"{state}: {r.text}", {"state": state, **r.values})
            for name, r in reports]


def problem_key(kind: str, message: str) -> str:
    """The kind of problem a log line is about, for throttling: the message with its variable parts
    (quoted names such as frame_ids and encodings, numbers) blanked."""
    return kind + ":" + re.sub(r"'[^']*'|\d+", "#", message)


class Throttle:
    """When each kind of problem was last logged (the latest MAX_PROBLEMS kinds: memory stays bounded)."""

    def __init__(self) -> None:
        self._last: OrderedDict[str, float] = OrderedDict()

    def due(self, key: str, now: float) -> bool:
        """Whether a line about `key` is due (none in the last THROTTLE_S seconds); books it if so."""
        due = now - self._last.get(key, -THROTTLE_S) >= THROTTLE_S
        if due:
            self._last[key] = now
            self._last.move_to_end(key)
            while len(self._last) > MAX_PROBLEMS:
                self._last.popitem(last=False)
        return due

    def clear(self) -> None:
        self._last.clear()

    def __len__(self) -> int:
        return len(self._last)


def farewell(s: Stats, busy: bool) -> list[str]:
    """What a node with counters `s` did, said when the process ends; `busy`: a model call still runs."""
    return ([f"shutdown: {s.received} frames received, {s.published} published, {s.dropped} dropped (a newer frame arrived "
             f"first), {sum(s.rejected.values())} skipped"]
            + (["shutdown: a model call was still running; exiting without waiting for it"] if busy else []))
