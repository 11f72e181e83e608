"""Which cameras the node's single model worker serves next (no ROS here: the policy alone, unit-tested).

Model calls stay serialized (one cannot be interrupted, and parallel calls are unsafe with TensorRT
or CUDA graphs), so fairness is in the order: the worker runs one batch at a time, for the camera
that used the least of its time recently. A camera whose frames are cheap (small images) then never
waits behind a queue of an expensive camera's frames (4000x3000), only behind the one call already
running; a camera that keeps the worker busy on its own still leaves the others their turn.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence


class FairShare:
    """Worker seconds charged per camera, decayed with a half-life (recent use counts, old use fades):
    `next_batch` picks the ready camera charged least (ties: the order cameras were given in), with
    every other ready camera of its batch key (one model call); `charge` books what that call cost."""

    def __init__(self, cameras: Sequence[Hashable], half_life_s: float = 2.0) -> None:
        self._used = {camera: 0.0 for camera in cameras}
        self._half_life_s = half_life_s
        self._at: float | None = None  # when `_used` was last decayed

    def _decay(self, now: float) -> None:
        if self._at is not None and now > self._at:
            factor = 0.5 ** ((now - self._at) / self._half_life_s)
            self._used = {camera: used * factor for camera, used in self._used.items()}
        self._at = now if self._at is None else max(self._at, now)

    def next_batch(self, ready: Mapping[Hashable, Hashable], now: float) -> list:
        """Of `ready` (camera -> batch key: frames of one key can share a model call), the camera charged
        least and every ready camera of its key, in the cameras' order; [] when none is ready."""
        if not ready:
            return []
        self._decay(now)
        order = list(self._used)
        first = min(ready, key=lambda camera: (self._used[camera], order.index(camera)))
        return [camera for camera in order if camera in ready and ready[camera] == ready[first]]

    def charge(self, cameras: Sequence[Hashable], seconds: float, now: float) -> None:
        """`seconds` of worker time spent on one batch of `cameras`, split evenly between them."""
        self._decay(now)
        for camera in cameras:
            self._used[camera] += seconds / len(cameras)
