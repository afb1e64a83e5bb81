"""A deadline watchdog for perception loops: it brakes for every frame whose result did not come in time.

Used by the robot loop example (clients/examples/robot_loop.py) and the ROS bridge (clients/ros/): a frame is
armed with its absolute deadline when it is sent, disarmed when its result arrives; a frame still armed at
its deadline gets ``on_miss`` called, from the watchdog's own thread, at that moment (not when the late
result finally shows up).
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable


class Watchdog:
    """Holds an absolute deadline (time.monotonic()) per frame; for every frame not disarmed by its
    deadline, its thread calls ``on_miss(frame_id)`` at that deadline. ``disarm`` returns False when the
    watchdog already fired for the frame (the result is too late to act on)."""

    def __init__(self, on_miss: Callable[[int], None]) -> None:
        self._on_miss = on_miss
        self._cond = threading.Condition()
        self._deadlines: list[tuple[float, int]] = []  # a heap of (deadline, frame id)
        self._armed: set[int] = set()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()

    def arm(self, frame_id: int, deadline: float) -> None:
        with self._cond:
            heapq.heappush(self._deadlines, (deadline, frame_id))
            self._armed.add(frame_id)
            self._cond.notify()

    def disarm(self, frame_id: int) -> bool:
        """Stand the watchdog down for a frame; True when it had not fired yet."""
        with self._cond:
            if frame_id in self._armed:
                self._armed.discard(frame_id)
                return True
            return False

    def close(self) -> None:
        """Stop the thread; frames still armed are left unjudged."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        with self._cond:
            while not self._stop:
                while self._deadlines and self._deadlines[0][1] not in self._armed:
                    heapq.heappop(self._deadlines)  # answered in time
                if not self._deadlines:
                    self._cond.wait()
                    continue
                deadline, frame_id = self._deadlines[0]
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                heapq.heappop(self._deadlines)
                self._armed.discard(frame_id)
                self._on_miss(frame_id)
