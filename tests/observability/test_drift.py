"""Drift: sketches with literal numbers, and a real server whose camera goes dark (issue 19, item 2)."""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Callable
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from peregrine.proto import detection_pb2 as det
from peregrine.proto import detection_pb2_grpc as det_grpc
from peregrine.server.app import PeregrineServer
from peregrine.server.drift_cli import main as drift_main
from peregrine.server.observability import drift
from prometheus_client.parser import text_string_to_metric_families
from support import jobs

pytestmark = pytest.mark.timeout(180)


def test_psi_with_literal_numbers() -> None:
    same = np.array([10, 20, 30, 40])
    assert drift.psi(same, same * 3) == 0.0  # shares, not counts
    # Everything moved from one bin to the other: both shares floored at 1e-4.
    assert drift.psi(np.array([100, 0]), np.array([0, 100])) == pytest.approx(2 * 0.9999 * np.log(1e4), rel=1e-6)
    # A small shift: 50/50 -> 60/40.
    expected = (0.6 - 0.5) * np.log(0.6 / 0.5) + (0.4 - 0.5) * np.log(0.4 / 0.5)
    assert drift.psi(np.array([50, 50]), np.array([60, 40])) == pytest.approx(expected)
    assert drift.psi(np.array([0, 0]), same[:2]) == 0.0  # nothing to compare with


def test_a_sketch_counts_what_comes_in_and_goes_out() -> None:
    sketch = drift.Sketch()
    grey = np.full((100, 200, 3), 200, np.uint8)
    boxes = np.array([[0, 0, 10, 10, 0.95, 3], [0, 0, 100, 200, 0.35, 150]], np.float32)
    sketch.add(grey, 100 * 200, boxes)
    assert sketch.frames == 1
    assert sketch.counts["brightness"][200 // 16] == 1 and sketch.counts["contrast"][0] == 1
    assert sketch.counts["luma"][200 // 16] == 100 * 200
    assert sketch.counts["detections"][np.searchsorted(drift.EDGES["detections"], 2, side="right") - 1] == 1
    assert sketch.counts["class"][3] == 1 and sketch.counts["class"][drift.CLASS_BINS - 1] == 1  # 150: the last bin
    assert sketch.counts["score"][9] == 1 and sketch.counts["score"][3] == 1
    assert sketch.counts["box_area"].sum() == 2 and sketch.counts["box_area"][-2] == 1  # the whole frame: [0.3, 1]
    again = drift.Sketch.from_json(sketch.to_json())
    assert all(np.array_equal(again.counts[f], sketch.counts[f]) for f in sketch.counts)
    assert drift.thumbnail(np.zeros((1080, 1920, 3), np.uint8)).size <= 3 * 2 * drift.THUMBNAIL_PIXELS


def test_a_camera_that_goes_dark_is_reported(tmp_path: Path, start_server: Callable[..., PeregrineServer],
                                             caplog: pytest.LogCaptureFixture) -> None:
    repo = jobs.repository(tmp_path / "models")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in jobs.PHOTOS:
        (photos / f"{name}.jpg").write_bytes(jobs.photo(name))
    baseline = tmp_path / "baseline.json"
    assert drift_main(["baseline", "--model", "cam", "--input", str(photos), "--repository", str(repo),
                       "--output", str(baseline)]) == 0
    assert drift.Sketch.load(baseline).frames == len(jobs.PHOTOS)
    server = start_server(repo, http_port=0, drift_sample_rate=1.0, drift_window=12, drift_threshold=0.25,
                          drift_baselines=(f"cam={baseline}",), drift_dir=tmp_path / "windows")
    assert server.drift is not None
    stub = det_grpc.DetectionServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))

    def send(images: list[bytes]) -> None:
        for jpeg in images:
            stub.Detect(det.DetectRequest(model_name="cam", images=[det.Image(encoded=jpeg)]))
        server.drift.flush()

    normal = [jobs.photo(name) for name in jobs.PHOTOS] * 2
    dark = [cv2.imencode(".jpg", (cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) * 0.15)
                         .astype(np.uint8))[1].tobytes() for j in normal]
    with caplog.at_level(logging.WARNING, logger="peregrine.server.observability.drift"):
        send(normal)
        assert not [r for r in caplog.records if "moved" in r.message]
        psi = _psi(server)
        assert psi["brightness"] < 0.25, psi
        send(dark)
        psi = _psi(server)
        assert psi["brightness"] > 1.0 and psi["mean_r"] > 0.25, psi
        warnings = [r.message for r in caplog.records if "moved" in r.message]
        assert len(warnings) == 1 and "brightness" in warnings[0] and "window 2" in warnings[0]
        # Noise and a smaller camera move other features.
        decoded = [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) for j in normal]
        rng = np.random.default_rng(0)
        noised = [np.clip(d + rng.normal(0, 60, d.shape), 0, 255).astype(np.uint8) for d in decoded]
        send([cv2.imencode(".png", n)[1].tobytes() for n in noised])
        assert _psi(server)["contrast"] > 0.25
        send([cv2.imencode(".jpg", cv2.resize(d, (d.shape[1] // 4, d.shape[0] // 4)))[1].tobytes() for d in decoded])
        assert _psi(server)["pixels"] > 0.25
    # The windows were written; the report says the same, and exits 1 for a moved feature.
    report = tmp_path / "report.md"
    assert drift_main(["report", "--reference", str(baseline), "--current",
                       str(tmp_path / "windows" / "cam-2.json"), "--output", str(report)]) == 1
    text = report.read_text()
    assert "| brightness |" in text and "moved" in text and report.with_suffix(".png").exists()
    assert drift_main(["report", "--reference", str(baseline), "--current", str(tmp_path / "windows" / "cam-1.json"),
                       "--output", str(tmp_path / "same.md")]) == 0


def _psi(server: PeregrineServer) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10).read().decode()
    family = next(f for f in text_string_to_metric_families(text) if f.name == "peregrine_drift_psi")
    return {s.labels["feature"]: s.value for s in family.samples if s.labels["model"] == "cam"}
