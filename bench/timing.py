"""Side-by-side timing for the benchmarks: methods alternate, so a load change hits all of them alike;
and a SIGTERM (bench/gpu_check.sh's `timeout`) that ends a bench early without losing what it measured."""
from __future__ import annotations

import signal
import time
from collections.abc import Callable


class Stopped(BaseException):
    """Raised by `stop_on_sigterm`'s handler wherever the bench is (a compile can take minutes): not an
    Exception, so a setting's failure handling does not swallow it."""


def _stop(signum, frame) -> None:
    raise Stopped(signal.Signals(signum).name)


def stop_on_sigterm() -> None:
    """From now on SIGTERM raises Stopped: the bench reports what it measured, then exits 143."""
    signal.signal(signal.SIGTERM, _stop)


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
