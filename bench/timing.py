"""Side-by-side timing for the benchmarks: methods alternate, so a load change hits all of them alike."""
from __future__ import annotations

import time
from collections.abc import Callable


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
