"""How many batches run at once on a device, so that a batch's time can be told apart from its neighbours'.

On a CPU every ONNX Runtime session spreads over all cores, so two batches that run at once each take about
twice as long as alone; on a GPU they share its streaming multiprocessors. The SLO ladder
(:mod:`.ladder`) estimates a rung's completion from its cost *alone*, scaled by the batches of other rungs
running beside it; a rung that mostly runs while another is busy (a lower rung, chosen when the top one is
loaded) would otherwise learn its costs already slowed down, and be counted slower twice.

A :class:`DeviceLoad` integrates the number of batches running on its device over time; a batch that ran
from ``t0`` to ``t1`` ran beside ``(area(t1) - area(t0)) / (t1 - t0)`` batches on average, itself included,
and its time alone is estimated as its time divided by that. It also keeps the device's recent
:meth:`concurrency`: how many batches ran at once, on average over the last second or so, while any ran: what
a batch starting soon should expect beside it (the ladder's routing does not take the busy instances of
this instant for the whole future). One per device name, shared by every model on it; batches begin and end
in instance threads, hence the lock.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class DeviceLoad:
    def __init__(self, clock: Callable[[], float] = time.perf_counter, window_s: float = 1.0) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.window_s = window_s
        self.running = 0
        self._area = 0.0  # integral of `running` over time, in batch-seconds
        self._last = clock()
        # The same integral, and the time anything ran, both decaying with `window_s`.
        self._recent_area = self._recent_busy = 0.0

    def _advance(self, now: float) -> None:
        dt = now - self._last
        self._area += self.running * dt
        if dt > 0:
            keep = math.exp(-dt / self.window_s)
            self._recent_area = self._recent_area * keep + self.running * dt
            self._recent_busy = self._recent_busy * keep + (dt if self.running else 0.0)
        self._last = now

    def concurrency(self) -> float:
        """Batches running at once, on average over the recent past while any ran (1.0 when none did)."""
        with self._lock:
            self._advance(self._clock())
            return max(self._recent_area / self._recent_busy, 1.0) if self._recent_busy > 0 else 1.0

    def begin(self) -> tuple[float, float]:
        """A batch starts now: the mark to give :meth:`end`."""
        with self._lock:
            now = self._clock()
            self._advance(now)
            self.running += 1
            return now, self._area

    def end(self, mark: tuple[float, float]) -> tuple[float, float]:
        """The batch begun at ``mark`` ended now: (its seconds, its seconds alone as estimated)."""
        with self._lock:
            now = self._clock()
            self._advance(now)
            self.running -= 1
            area = self._area
        began, area0 = mark
        seconds = now - began
        if seconds <= 0:
            return seconds, seconds
        beside = max((area - area0) / seconds, 1.0)  # >= 1: the batch itself ran all along
        return seconds, seconds / beside


_loads: dict[str, DeviceLoad] = {}
_loads_lock = threading.Lock()


def device_load(device: str) -> DeviceLoad:
    """The load of ``device`` ("cpu", "cuda"; GPUs by index are one name here), shared process-wide."""
    with _loads_lock:
        load = _loads.get(device)
        if load is None:
            load = _loads[device] = DeviceLoad()
        return load
