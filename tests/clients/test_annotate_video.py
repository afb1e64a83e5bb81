"""``peregrine-annotate`` on videos: a short video made here (a photograph panned across 12 frames), annotated
through a live server's DetectStream and from a video job's JSON Lines, read back and compared frame by frame
with ``draw_detections`` applied to the source frame (exactly, through the lossless FFV1 codec; with a stated
tolerance through MP4's lossy one)."""

from __future__ import annotations

import json
from pathlib import Path

import client_support
import cv2
import numpy as np
import pytest
import skimage.data
from peregrine.client import Detection, DetectionClient
from peregrine.client.annotate import FOURCC_BY_SUFFIX, VideoReader, draw_detections, main
from peregrine.server.app import PeregrineServer

detection_server = client_support.detection_server

FRAMES, WIDTH, HEIGHT, FPS = 12, 160, 120, 12.0
THRESHOLD = 0.45  # the seeded detector scores most boxes lower: a few boxes per frame, none on some


def panned_frames() -> list[np.ndarray]:
    """12 BGR frames of 160 x 120: a window moving across scikit-image's coffee photograph."""
    coffee = np.ascontiguousarray(skimage.data.coffee()[:, :, ::-1])  # 400 x 600
    return [cv2.resize(coffee[20 + 10 * i:320 + 10 * i, 40 + 15 * i:440 + 15 * i], (WIDTH, HEIGHT),
                       interpolation=cv2.INTER_AREA) for i in range(FRAMES)]


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The frames in a Matroska file with the lossless FFV1 codec: it reads back exactly as written."""
    path = tmp_path_factory.mktemp("video") / "pan.mkv"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"FFV1"), FPS, (WIDTH, HEIGHT))
    assert writer.isOpened()
    for frame in panned_frames():
        writer.write(frame)
    writer.release()
    return path


def read_back(path: Path) -> tuple[list[np.ndarray], float, tuple[int, int]]:
    with VideoReader(path) as reader:
        return list(reader), reader.fps, reader.size


def server_boxes(url: str, frames: list[np.ndarray]) -> list[list[Detection]]:
    """Each frame's boxes asked alone with Detect (raw RGB, as the command sends them)."""
    with DetectionClient(url, deadline_s=30.0) as client:
        return [client.detect(np.ascontiguousarray(f[:, :, ::-1]), model="det", score_threshold=THRESHOLD)
                for f in frames]


def test_a_video_through_a_server_keeps_its_frames_rate_and_size(
        detection_server: PeregrineServer, video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"127.0.0.1:{detection_server.port}"
    out = tmp_path / "pan_boxes.mkv"
    assert main([str(video), "-o", str(out), "-u", url, "--model", "det", "--score-threshold", str(THRESHOLD)]) == 0
    source = panned_frames()
    boxes = server_boxes(url, source)
    assert sum(map(len, boxes)) >= 5 and len({tuple(b) for b in boxes}) > 3  # boxes, and not alike
    assert f"{FRAMES} frames at 12 fps, {FRAMES} annotated, {sum(map(len, boxes))} boxes" in capsys.readouterr().out
    frames, fps, size = read_back(out)
    assert (len(frames), fps, size) == (FRAMES, FPS, (WIDTH, HEIGHT))
    for n, (frame, src, dets) in enumerate(zip(frames, source, boxes, strict=True)):
        # Frame n carries frame n's boxes (pipelined frames stay in order), drawn as on an image; a frame
        # without boxes is the source's.
        np.testing.assert_array_equal(frame, draw_detections(src, dets), err_msg=f"frame {n}")
        assert (frame != src).any() == bool(dets)
    assert not list(tmp_path.glob(".*partial*"))


def test_stride_draws_every_nth_frame_and_writes_the_others_unchanged(
        detection_server: PeregrineServer, video: Path, tmp_path: Path) -> None:
    url = f"127.0.0.1:{detection_server.port}"
    out = tmp_path / "strided.avi"  # AVI's default codec is Motion JPEG: FFV1 asked for by name
    assert main([str(video), "-o", str(out), "-u", url, "--model", "det", "--score-threshold", str(THRESHOLD),
                 "--stride", "5", "--in-flight", "1", "--fourcc", "FFV1"]) == 0
    source = panned_frames()
    asked = {0: source[0], 5: source[5], 10: source[10]}
    boxes = dict(zip(asked, server_boxes(url, list(asked.values())), strict=True))
    assert sum(map(len, boxes.values())) > 0
    frames, fps, size = read_back(out)
    assert (len(frames), fps, size) == (FRAMES, FPS, (WIDTH, HEIGHT))
    for n, (frame, src) in enumerate(zip(frames, source, strict=True)):
        np.testing.assert_array_equal(frame, draw_detections(src, boxes[n]) if n in boxes else src,
                                      err_msg=f"frame {n}")


def job_lines() -> tuple[list[dict], dict[int, list[Detection]]]:
    """What a video job with stride 3 writes (frames 0, 3, 6, 9; frame 6 failed), boxes made up here."""
    car = {"x1": 10.0, "y1": 20.0, "x2": 90.0, "y2": 100.0, "score": 0.8, "class_id": 2, "label": "car"}
    person = {"x1": 60.0, "y1": 5.0, "x2": 150.0, "y2": 115.0, "score": 0.6, "class_id": 0, "label": "person"}
    faint = {**person, "score": 0.1}
    per_frame = {0: [car], 3: [person, faint], 9: []}
    lines: list[dict] = []
    for index, frame in enumerate((0, 3, 6, 9)):
        line = {"index": index, "source": f"frame {frame}", "stamp_ns": round(frame / FPS * 1e9)}
        if frame == 6:
            line["error"] = "frame 6: could not be decoded"
        else:
            line.update(height=HEIGHT, width=WIDTH, boxes=per_frame[frame])
        lines.append(line)
    drawn = {f: [Detection(**{k: v for k, v in b.items()}) for b in boxes if b["score"] >= 0.5]
             for f, boxes in per_frame.items()}
    return lines, drawn


def test_a_video_jobs_results_are_drawn_on_their_frames(video: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    lines, drawn = job_lines()
    results = tmp_path / "pan.jsonl"
    results.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    source = panned_frames()
    expected = [draw_detections(src, drawn[n]) if n in drawn else src for n, src in enumerate(source)]
    lossless = tmp_path / "out" / "pan.mkv"
    assert main([str(video), "--results", str(results), "-o", str(tmp_path / "out"), "--score-threshold", "0.5"]) == 0
    assert f"{FRAMES} frames at 12 fps, 3 annotated, 2 boxes" in capsys.readouterr().out
    frames, fps, size = read_back(lossless)
    assert (len(frames), fps, size) == (FRAMES, FPS, (WIDTH, HEIGHT))
    for n, (frame, want) in enumerate(zip(frames, expected, strict=True)):
        np.testing.assert_array_equal(frame, want, err_msg=f"frame {n}")

    # MP4 (mp4v, lossy): the same frames, count, rate and size; where the boxes are drawn, the output is
    # far nearer the drawing than the source (elsewhere both are the source, up to the codec's loss).
    assert FOURCC_BY_SUFFIX[".mp4"] == "mp4v"
    lossy = tmp_path / "pan.mp4"
    assert main([str(video), "--results", str(results), "-o", str(lossy), "--score-threshold", "0.5"]) == 0
    frames, fps, size = read_back(lossy)
    assert (len(frames), fps, size) == (FRAMES, FPS, (WIDTH, HEIGHT))
    for n in (0, 3):
        mask = (expected[n] != source[n]).any(axis=2)
        to_drawing = np.abs(frames[n].astype(int) - expected[n])[mask].mean()
        to_source = np.abs(frames[n].astype(int) - source[n])[mask].mean()
        assert to_drawing < 0.5 * to_source, (n, to_drawing, to_source)
    for n in (1, 6, 9):
        assert np.abs(frames[n].astype(int) - source[n]).mean() < 12  # the codec's loss, no drawing


def test_bad_arguments_and_files_say_what_was_wrong(detection_server: PeregrineServer, video: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    url = f"127.0.0.1:{detection_server.port}"
    results = tmp_path / "r.jsonl"
    results.write_text(json.dumps({"index": 0, "source": "frame 0", "boxes": []}) + "\n")
    for argv, field in [
        ([str(video), "--stride", "0"], "--stride"),
        ([str(video), "--in-flight", "65"], "--in-flight"),
        ([str(video), "--in-flight", "0"], "--in-flight"),
        ([str(video), "--fourcc", "MPEG4"], "--fourcc"),
        ([str(video), str(video), "--results", str(results)], "--results"),
        ([str(video), "--results", str(results), "--stride", "2"], "--stride"),
    ]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        assert field in capsys.readouterr().err

    # A line that is not a video frame's; a file that is no video; a codec OpenCV does not have; a model the
    # server does not have: exit status 1, the reason on stderr, and no output file.
    results.write_text(json.dumps({"index": 0, "source": "frame 0", "boxes": []}) + "\n"
                       + json.dumps({"index": 1, "source": "row 1", "boxes": []}) + "\n")
    assert main([str(video), "--results", str(results), "-o", str(tmp_path / "a.mkv")]) == 1
    err = capsys.readouterr().err
    assert "r.jsonl:2" in err and "'source'" in err and "frame <n>" in err
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    assert main([str(fake), "-o", str(tmp_path / "b.mp4"), "-u", url, "--model", "det"]) == 1
    assert "cannot read" in capsys.readouterr().err
    results.write_text(json.dumps({"index": 0, "source": "frame 0", "boxes": []}) + "\n")
    assert main([str(video), "--results", str(results), "-o", str(tmp_path / "c.mp4"), "--fourcc", "XXXX"]) == 1
    assert "c.mp4: OpenCV here has no 'XXXX' encoder for .mp4" in capsys.readouterr().err
    assert main([str(video), "-o", str(tmp_path / "d.mkv"), "-u", url, "--model", "nope"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    assert not [p.name for p in tmp_path.iterdir() if p.name not in ("r.jsonl", "fake.mp4")]
