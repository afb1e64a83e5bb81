"""Latest frame wins: the per-stream policy of ``DetectStream``.

A camera stream runs at most ``max_in_flight`` frames at once and keeps at most ``max_waiting`` frames
waiting behind them. A frame that arrives when the waiting room is full pushes out the oldest waiting
frame, which is answered as dropped: a robot wants the newest view of the world, not a backlog.
Pure bookkeeping (no threads, no clock); the transport drives it under its own lock.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class FrameWindow(Generic[T]):
    def __init__(self, max_in_flight: int, max_waiting: int) -> None:
        if max_in_flight < 1 or max_waiting < 1:
            raise ValueError(f"expected max_in_flight >= 1 and max_waiting >= 1, got {max_in_flight}, {max_waiting}")
        self.max_in_flight = max_in_flight
        self.max_waiting = max_waiting
        self.waiting: deque[T] = deque()
        self.in_flight = 0
        self.dropped = 0

    def offer(self, frame: T) -> list[T]:
        """Queue a newly arrived frame; returns the frames it pushed out (oldest first) to be answered
        as dropped."""
        self.waiting.append(frame)
        pushed = []
        # The oldest frames are due the free slots and are not waiting for one; of the rest, only the
        # newest max_waiting stay.
        free = max(self.max_in_flight - self.in_flight, 0)
        while len(self.waiting) > free + self.max_waiting:
            pushed.append(self.waiting[free])
            del self.waiting[free]
        self.dropped += len(pushed)
        return pushed

    def take(self) -> T | None:
        """The oldest waiting frame when a slot is free (it counts as in flight until :meth:`finish`)."""
        if self.in_flight >= self.max_in_flight or not self.waiting:
            return None
        self.in_flight += 1
        return self.waiting.popleft()

    def finish(self) -> None:
        """A frame taken with :meth:`take` is answered."""
        if self.in_flight <= 0:
            raise RuntimeError("finish() without a frame in flight")
        self.in_flight -= 1

    def drain(self) -> list[T]:
        """Remove and return every waiting frame (the stream ended or was cancelled)."""
        frames = list(self.waiting)
        self.waiting.clear()
        return frames
