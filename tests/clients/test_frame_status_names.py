"""A streamed frame's status prints as its name (Python 3.11 made IntEnum print as a number: ``0``)."""

from __future__ import annotations

from pathlib import Path

import client_support
import numpy as np
from peregrine.client import DetectionClient, FrameStatus
from peregrine.server.app import PeregrineServer

detection_server = client_support.detection_server


def test_status_prints_as_its_name() -> None:
    assert [str(s) for s in FrameStatus] == ["OK", "DROPPED", "DEADLINE_EXCEEDED", "ERROR"]
    assert f"{FrameStatus.DROPPED}|{FrameStatus.OK:>4}|" == "DROPPED|  OK|"
    assert FrameStatus.OK == 0 and FrameStatus(3) is FrameStatus.ERROR  # still the protocol's numbers


def test_a_stream_result_prints_ok(detection_server: PeregrineServer, tmp_path: Path) -> None:
    frame = np.random.default_rng(0).integers(0, 256, (64, 96, 3), np.uint8)
    with DetectionClient(f"127.0.0.1:{detection_server.port}", deadline_s=30.0) as client:
        results = list(client.stream([frame, b"not an image"], model="det"))
    assert [f"{r.status}" for r in results] == ["OK", "ERROR"]
    assert "status=<FrameStatus.OK: 0>" in repr(results[0])
