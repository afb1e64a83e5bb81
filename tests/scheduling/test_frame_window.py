"""The latest-frame-wins window of DetectStream, with literal frames."""

from __future__ import annotations

import pytest
from peregrine.server.scheduling.frames import FrameWindow


def test_frames_fill_free_slots_before_anything_is_dropped() -> None:
    w: FrameWindow[int] = FrameWindow(max_in_flight=2, max_waiting=1)
    assert w.offer(1) == [] and w.offer(2) == [] and w.offer(3) == []  # two slots free + one waiting place
    assert w.offer(4) == [3]  # 1 and 2 are due the free slots; the oldest frame waiting for a slot goes
    assert w.take() == 1 and w.take() == 2 and w.take() is None
    assert list(w.waiting) == [4]


def test_latest_frame_wins_while_slots_are_busy() -> None:
    w: FrameWindow[int] = FrameWindow(max_in_flight=1, max_waiting=1)
    w.offer(1)
    assert w.take() == 1
    assert w.offer(2) == []
    assert w.offer(3) == [2]
    assert w.offer(4) == [3]
    assert w.dropped == 2
    assert w.take() is None  # the slot is still busy
    w.finish()
    assert w.take() == 4


def test_waiting_room_of_several_keeps_the_newest() -> None:
    w: FrameWindow[int] = FrameWindow(max_in_flight=1, max_waiting=3)
    w.offer(0)
    w.take()
    dropped = [f for i in range(1, 8) for f in w.offer(i)]
    assert dropped == [1, 2, 3, 4]
    assert list(w.waiting) == [5, 6, 7]


def test_drain_and_finish_bookkeeping() -> None:
    w: FrameWindow[str] = FrameWindow(max_in_flight=1, max_waiting=2)
    w.offer("a")
    w.offer("b")
    w.take()
    assert w.drain() == ["b"]
    w.finish()
    with pytest.raises(RuntimeError):
        w.finish()
    with pytest.raises(ValueError):
        FrameWindow(0, 1)


def test_frames_due_free_slots_are_never_pushed_out() -> None:
    """A burst that arrives before anything is taken keeps its first frames for the free slots."""
    w: FrameWindow[str] = FrameWindow(max_in_flight=1, max_waiting=1)
    assert w.offer("a") == [] and w.offer("b") == []
    assert w.offer("c") == ["b"]
    assert w.offer("d") == ["c"]
    assert w.take() == "a" and list(w.waiting) == ["d"]
