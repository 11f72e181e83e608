"""Side-by-side timing for the benchmarks: methods alternate, so a load change hits all of them alike;
and a SIGTERM (bench/gpu_check.sh's `timeout`) that ends a bench early without losing what it measured."""
from __future__ import annotations

import signal
import time
from collections.abc import Callable


class Stopped(BaseException):
    """Raised by the SIGTERM handler of `until_stopped` wherever the step is (a compile can take
    minutes): not an Exception, so a step's own failure handling does not swallow it."""


def _stop(signum, frame) -> None:
    raise Stopped(signal.Signals(signum).name)


def until_stopped(items: list, step: Callable[[object], None]) -> tuple[int, str | None]:
    """`step(item)` for each item until a SIGTERM (bench/gpu_check.sh's `timeout`): (items finished,
    None or "stopped by SIGTERM"). Afterwards SIGTERM is ignored, so the report of what was measured
    always gets out; the bench then exits with STOPPED_EXIT."""
    signal.signal(signal.SIGTERM, _stop)
    finished = 0
    try:
        for item in items:
            step(item)
            finished += 1
    except Stopped as exc:
        return finished, f"stopped by {exc}"
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return finished, None


STOPPED_EXIT = 128 + signal.SIGTERM


def time_alternately(methods: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Milliseconds of each zero-argument callable per round: one call of each per round, the order
    rotating, after one untimed warm-up call each (caches filled, as a node's first frame fills them)."""
    names = list(methods)
    for method in methods.values():
        method()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            methods[name]()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times
