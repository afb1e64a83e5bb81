"""``peregrine-load``'s detection modes end to end against a real in-process server: camera mode over
DetectStream (a server that keeps up, and one that falls behind and drops frames), the unary Detect
mode, their JSON/CSV reports and exit codes; and the frames they send."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import client_support
import numpy as np
import pytest
import skimage.data
from peregrine.client.load import frame_payload, parse_frame_size
from peregrine.client.load.cli import main
from PIL import Image

# Fixtures shared with the other client tests (see client_support).
detection_server = client_support.detection_server
detection_url = client_support.detection_url

QUICK = ["--no-progress"]
STAGES = {"decode", "queue", "pre", "infer", "post", "total", "batch_size"}


def test_camera_mode_reports_every_frame(detection_url: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    rc = main(["det", "-u", detection_url, "--cameras", "2", "--fps", "10", "--warmup", "0.3", "--duration", "1",
               "--frame-size", "480x270", "--deadline-ms", "5000", "--json", str(out_json), "--csv", str(out_csv),
               "--slo-p99-ms", "60000", *QUICK])
    assert rc == 0
    text = capsys.readouterr().out
    assert "camera mode, 2 x 10 fps" in text and "JPEG q90 480x270" in text and "server ms" in text
    r = json.loads(out_json.read_text())
    assert (r["mode"], r["api"], r["cameras"], r["fps"]) == ("camera", "stream", 2, 10)
    # Frames are on a schedule: camera i sends at i/20 + k/10 s; those in [0.3, 1.3) s are measured.
    assert r["sent"] == 20 and r["offered_rps"] == 20
    assert r["ok"] + sum(r["errors"].values()) == r["sent"] and r["ok"] > 0
    assert r["dropped"] == r["errors"].get("DROPPED", 0) <= r["server_dropped_total"]
    assert r["deadline_misses"] == r["errors"].get("DEADLINE_EXCEEDED", 0)  # nothing answered OK after 5 s
    lat = r["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p99"] <= lat["max"] and r["hdr_histogram_us"]
    stages = r["stages_ms"]
    assert set(stages) == STAGES and stages["infer"]["p50"] > 0 and stages["batch_size"]["p50"] >= 1
    assert stages["total"]["p50"] <= lat["max"]  # the server's share is inside the client's latency
    with out_csv.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == r["sent"]
    for camera in ("0", "1"):
        mine = [r for r in rows if r["camera"] == camera]
        assert [int(r["sequence"]) for r in mine] == list(range(3, 13))
        np.testing.assert_allclose([float(r["intended_s"]) for r in mine],
                                   int(camera) * 0.05 + np.arange(3, 13) / 10, atol=1e-6)


def test_camera_mode_counts_the_frames_a_slow_server_drops(detection_url: str, tmp_path: Path) -> None:
    # det_slow runs a lone frame after 400 ms and keeps one waiting: of 20 frames/s it answers about 2.5,
    # the newest waiting one each time; the rest are dropped. The open loop keeps sending on schedule.
    out_json = tmp_path / "r.json"
    rc = main(["det_slow", "-u", detection_url, "--cameras", "1", "--fps", "20", "--warmup", "0", "--duration", "1",
               "--encoding", "raw", "--slo-p99-ms", "100", "--json", str(out_json), *QUICK])
    assert rc == 1  # a p99 of 400+ ms misses the SLO
    r = json.loads(out_json.read_text())
    assert r["sent"] == 20 and r["send_lag_ms"]["max"] < 100
    assert r["ok"] >= 1 and r["dropped"] >= 10
    assert r["ok"] + r["dropped"] == r["sent"] and r["errors"] == {"DROPPED": r["dropped"]}
    assert r["server_dropped_total"] == r["dropped"]  # no warm-up: the server counted the same frames
    assert r["latency_ms"]["p50"] >= client_support.DET_SLOW_WINDOW_US / 1000
    assert r["stages_ms"]["queue"]["p50"] >= client_support.DET_SLOW_WINDOW_US / 1000 * 0.9


@pytest.mark.parametrize("load", [["-c", "2", "-b", "2"], ["-r", "20", "--deadline-ms", "10000"]])
def test_detect_mode_over_image_files(detection_url: str, tmp_path: Path, load: list[str]) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(skimage.data.coffee()).save(images / "coffee.jpg", quality=85)
    Image.fromarray(skimage.data.chelsea()).save(images / "chelsea.png")
    (images / "notes.txt").write_text("not an image")
    out_json = tmp_path / "r.json"
    rc = main(["det", "-u", detection_url, "--detect", *load, "--image", str(images), "--warmup", "0.2",
               "--duration", "0.6", "--json", str(out_json), *QUICK])
    assert rc == 0
    r = json.loads(out_json.read_text())
    assert r["api"] == "detect" and r["mode"] in ("closed", "open")
    assert r["ok"] == r["sent"] > 0 and r["errors"] == {}
    assert r["payload"].startswith("2 images per request: 2 image files" if "-b" in load else "2 image files")
    assert set(r["stages_ms"]) == STAGES and r["stages_ms"]["batch_size"]["p50"] >= (2 if "-b" in load else 1)


def test_detection_modes_that_cannot_start_exit_2(detection_url: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no_such_model", "-u", detection_url, "--cameras", "1", *QUICK]) == 2
    assert "NOT_FOUND" in capsys.readouterr().err
    assert main(["plain", "-u", detection_url, "--detect", "-c", "1", *QUICK]) == 2  # not a detection pipeline
    assert "INVALID_ARGUMENT" in capsys.readouterr().err
    (tmp_path / "x.npy").write_bytes(b"")
    assert main(["det", "-u", detection_url, "--cameras", "1", "--npy", str(tmp_path / "x.npy"), *QUICK]) == 2
    assert main(["det", "-u", detection_url, "--cameras", "1", "--image", str(tmp_path / "none"), *QUICK]) == 2
    assert main(["det", "-u", detection_url, "--cameras", "1", "--frame-size", "big", *QUICK]) == 2
    assert "WIDTHxHEIGHT" in capsys.readouterr().err


def test_frames_are_fitted_encoded_or_sent_as_they_are(tmp_path: Path) -> None:
    assert parse_frame_size("1920x1080") == (1920, 1080)
    for bad in ("1920", "0x10", "ax b"):
        with pytest.raises(ValueError):
            parse_frame_size(bad)
    jpeg = tmp_path / "a.jpg"
    Image.fromarray(skimage.data.astronaut()).save(jpeg, quality=80)
    as_is = frame_payload([jpeg])
    assert as_is.images == [jpeg.read_bytes()] and "as they are" in as_is.description
    fitted = frame_payload([jpeg], (320, 180), "jpeg", 70)
    with Image.open(io.BytesIO(fitted.images[0])) as img:  # type: ignore[arg-type]
        assert (img.format, img.size) == ("JPEG", (320, 180))
    raw = frame_payload([jpeg], (64, 48), "raw")
    assert isinstance(raw.images[0], np.ndarray) and raw.images[0].shape == (48, 64, 3)
    png = frame_payload([], (100, 100), "png")  # scikit-image's photographs
    assert len(png.images) == 5 and all(bytes(i[:4]) == b"\x89PNG" for i in png.images)  # type: ignore[index]


def test_detection_options_reach_the_server(detection_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Out-of-range options come back from the server as INVALID_ARGUMENT naming the field: they were sent.
    assert main(["det", "-u", detection_url, "--detect", "--classes", "0,999", *QUICK]) == 2
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in err and "classes" in err
    assert main(["det", "-u", detection_url, "--cameras", "1", "--max-detections", "100000", *QUICK]) == 2
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in err and "max_detections" in err
    with pytest.raises(SystemExit):
        main(["det", "-u", detection_url, "--detect", "--classes", "person", *QUICK])
    assert "expected class ids" in capsys.readouterr().err
    rc = main(["det", "-u", detection_url, "--cameras", "1", "--fps", "5", "--warmup", "0.2", "--duration", "0.6",
               "--max-detections", "1", "--classes", "0,2", "--score-threshold", "0.3", *QUICK])
    assert rc == 0
