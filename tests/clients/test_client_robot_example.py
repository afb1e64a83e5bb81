"""clients/examples/robot_loop.py: its watchdog, and the loop streaming to a real server's detection
pipelines: one that keeps up, one that falls behind and drops frames, and deadlines nothing can meet."""

from __future__ import annotations

import importlib.util
import re
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import client_support
import pytest

# Fixtures shared with the other client tests (see client_support).
detection_server = client_support.detection_server
detection_url = client_support.detection_url

EXAMPLE = Path(__file__).parents[2] / "clients" / "examples" / "robot_loop.py"


@pytest.fixture(scope="module")
def robot_loop() -> ModuleType:
    spec = importlib.util.spec_from_file_location("robot_loop", EXAMPLE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["robot_loop"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def summary_numbers(out: str) -> dict[str, int]:
    frames = int(re.search(r"frames\s+(\d+) sent", out).group(1))  # type: ignore[union-attr]
    on_time = int(re.search(r"on time\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    brakes = int(re.search(r"watchdog brakes (\d+)", out).group(1))  # type: ignore[union-attr]
    return {"frames": frames, "on_time": on_time, "brakes": brakes}


def test_watchdog_fires_for_each_missed_deadline_only(robot_loop: ModuleType) -> None:
    fired: list[int] = []
    both = threading.Event()

    def on_miss(frame_id: int) -> None:
        fired.append(frame_id)
        if len(fired) == 2:
            both.set()

    dog = robot_loop.Watchdog(on_miss)
    try:
        now = time.monotonic()
        dog.arm(1, now + 30.0)
        dog.arm(2, now + 0.05)
        dog.arm(3, now + 30.0)
        dog.arm(4, now + 0.02)  # armed later, due earlier
        assert dog.disarm(1)  # answered in time
        assert both.wait(10.0)
        assert not dog.disarm(2)  # the late answer learns that the watchdog already acted
        assert dog.disarm(3)
    finally:
        dog.close()
    assert fired == [4, 2]


def test_the_loop_runs_against_a_server(robot_loop: ModuleType, detection_url: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    # Four frames may run at once: a pause of the shared CI machine then delays a frame instead of having a
    # newer one supersede it (latest frame wins), which is the next test's case, not this one's.
    args = ["--url", detection_url, "--model", "det", "--fps", "10", "--duration", "1.0", "--deadline-ms", "5000",
            "--max-in-flight", "4"]
    assert robot_loop.main(args) == 0
    out = capsys.readouterr().out
    n = summary_numbers(out)
    assert n["frames"] >= 5 and n["on_time"] == n["frames"]
    assert "watchdog brakes 0" in out and "errors: none" in out and "not on time none" in out


def test_every_missed_deadline_brakes(robot_loop: ModuleType, detection_url: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    # 0.01 ms is less than any round trip: every frame misses and the watchdog brakes for each.
    args = ["--url", detection_url, "--model", "det", "--fps", "20", "--duration", "0.5", "--deadline-ms", "0.01"]
    assert robot_loop.main(args) == 0
    out = capsys.readouterr().out
    n = summary_numbers(out)
    assert n["frames"] > 0 and n["brakes"] == n["frames"] and n["on_time"] == 0
    assert "errors: none" in out  # missed deadlines are not errors


def test_dropped_frames_brake_at_once(robot_loop: ModuleType, detection_url: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    # det_slow answers a lone frame after 400 ms and keeps one waiting: at 20 fps most frames are dropped.
    # The deadline is long, so every brake comes from a dropped frame, not from the watchdog's clock.
    args = ["--url", detection_url, "--model", "det_slow", "--fps", "20", "--duration", "1.0",
            "--deadline-ms", "10000"]
    assert robot_loop.main(args) == 0
    out = capsys.readouterr().out
    n = summary_numbers(out)
    dropped = int(re.search(r"dropped (\d+)", out).group(1))  # type: ignore[union-attr]
    assert dropped >= 5 and n["brakes"] == dropped and n["on_time"] == n["frames"] - dropped >= 1


def test_an_unreachable_model_exits_2(robot_loop: ModuleType, detection_url: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert robot_loop.main(["--url", detection_url, "--model", "no_such_model", "--duration", "0.2"]) == 2
    assert "NOT_FOUND" in capsys.readouterr().err
