"""clients/examples/robot_loop.py: its watchdog, its YOLOv8 decoding, and the loop against a real server
serving a small YOLOv8 (128x128 input, seeded random weights)."""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import client_support
import numpy as np
import pytest
from peregrine.client.images import LetterboxParams
from peregrine.server.app import PeregrineServer
from peregrine.server.config import ServerConfig
from peregrine.server.modelgen.yolo import yolov8_detector

EXAMPLE = Path(__file__).parents[2] / "clients" / "examples" / "robot_loop.py"


@pytest.fixture(scope="module")
def robot_loop() -> ModuleType:
    spec = importlib.util.spec_from_file_location("robot_loop", EXAMPLE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["robot_loop"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def yolo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    repo = tmp_path_factory.mktemp("yolo")
    client_support.onnx_models.write(repo, "yolov8n", yolov8_detector(0, imgsz=128), "max_batch_size = 4\n")
    server = PeregrineServer(ServerConfig(model_repository=repo, grpc_port=0, http_port=None))
    server.start()
    yield f"127.0.0.1:{server.port}"
    server.stop(grace=0.5)


def test_watchdog_fires_at_a_missed_deadline_only(robot_loop: ModuleType) -> None:
    fired: list[int] = []
    event = threading.Event()

    def on_miss(frame_id: int) -> None:
        fired.append(frame_id)
        event.set()

    dog = robot_loop.Watchdog(on_miss)
    try:
        dog.arm(1, time.monotonic() + 30.0)
        assert dog.disarm(1)  # answered in time
        dog.arm(2, time.monotonic() + 0.05)
        assert event.wait(10.0)
        assert not dog.disarm(2)  # the late answer learns that the watchdog already acted
    finally:
        dog.close()
    assert fired == [2]


def test_yolov8_decoding_thresholds_suppresses_and_maps_back(robot_loop: ModuleType) -> None:
    out = np.zeros((1, 4 + 3, 5), np.float32)
    # anchors: cx, cy, w, h (model pixels) and three class scores
    out[0, :4, 0], out[0, 4 + 1, 0] = [50, 50, 20, 20], 0.9
    out[0, :4, 1], out[0, 4 + 1, 1] = [52, 50, 20, 20], 0.8  # same class, overlaps anchor 0: suppressed
    out[0, :4, 2], out[0, 4 + 2, 2] = [52, 50, 20, 20], 0.7  # other class: kept
    out[0, :4, 3], out[0, 4 + 0, 3] = [10, 10, 4, 4], 0.1  # below the threshold
    params = LetterboxParams(scale=0.5, pad_x=0.0, pad_y=10.0)
    dets = robot_loop.decode_yolov8(out, params, score_threshold=0.25)
    assert [(d.class_id, round(d.score, 2)) for d in dets] == [(1, 0.9), (2, 0.7)]
    assert (dets[0].x1, dets[0].y1, dets[0].x2, dets[0].y2) == pytest.approx((80, 60, 120, 100))


def test_the_loop_runs_against_a_server(robot_loop: ModuleType, yolo_url: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--url", yolo_url, "--fps", "20", "--duration", "1.0", "--deadline-ms", "5000"]
    assert robot_loop.main(args) == 0
    out = capsys.readouterr().out
    assert "watchdog brakes 0" in out and "errors: none" in out


def test_every_missed_deadline_brakes(robot_loop: ModuleType, yolo_url: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    # 0.01 ms is less than any round trip: every frame misses and the watchdog brakes for each.
    assert robot_loop.main(["--url", yolo_url, "--fps", "20", "--duration", "0.5", "--deadline-ms", "0.01"]) == 0
    out = capsys.readouterr().out
    frames = int(out.split("frames")[1].split()[0])
    assert frames > 0 and f"watchdog brakes {frames}" in out and "on time     0" in out
