"""``peregrine batch --annotate DIR``: beside the JSON Lines, each input with its boxes drawn (issue 21). The
pictures are compared with ``draw_detections`` of the source and the boxes of its own JSON line: byte for byte
for images (OpenCV writes the same JPEG from the same pixels), frame by frame through a lossless codec for a
video, exactly for a recording's PNG frames; a run killed and started again keeps the pictures it drew."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from peregrine.client import Detection
from peregrine.client.annotate import VideoReader, draw_detections
from peregrine.server.app import PeregrineServer
from peregrine.server.batch import main
from support import jobs

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return jobs.repository(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """photos/<nn>/<name>.jpg: 20 copies of 6 photographs, and a file that is no image."""
    root = tmp_path_factory.mktemp("photos")
    for i in range(20):
        for name in jobs.PHOTOS:
            (root / f"{i:02d}").mkdir(exist_ok=True)
            (root / f"{i:02d}" / f"{name}.jpg").write_bytes(jobs.photo(name))
    (root / "00" / "broken.png").write_bytes(b"\x89PNG broken")
    return root


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _detections(line: dict) -> list[Detection]:
    return [Detection(**box) for box in line["boxes"]]


def expected_picture(src: Path, line: dict) -> bytes:
    """What the picture of an image file must hold: its pixels with its line's boxes drawn, encoded as a file
    of its format is."""
    ok, encoded = cv2.imencode(src.suffix, draw_detections(cv2.imread(str(src)), _detections(line)))
    assert ok
    return encoded.tobytes()


def test_the_pictures_of_a_directory_are_its_images_with_their_boxes(repo: Path, photos: Path,
                                                                       tmp_path: Path) -> None:
    out, drawn = tmp_path / "d.jsonl", tmp_path / "drawn"
    assert main(["--model", "cam", "--repository", str(repo), "--input", str(photos / "00"), str(photos / "01"),
                 "--output",
                 str(out), "--annotate", str(drawn)]) == 0
    lines = _lines(out)
    assert len(lines) == 2 * len(jobs.PHOTOS) + 1 and sum(len(x.get("boxes", [])) for x in lines) > 100
    for line in lines:
        src = Path(line["source"])
        picture = drawn / src.relative_to(photos)  # the name under the directory holding the inputs
        if "error" in line:  # broken.png: nothing drawn
            assert not picture.exists()
            continue
        assert picture.read_bytes() == expected_picture(src, line), picture
    assert sorted(p.relative_to(drawn).as_posix() for p in drawn.rglob("*")) == sorted(
        [f"0{i}" for i in range(2)] + [f"0{i}/{name}.jpg" for i in range(2) for name in jobs.PHOTOS])

    # A tensor input has no pictures; an input file of a kind without them is refused before anything runs.
    np.save(tmp_path / "x.npy", np.zeros((4, 4), np.float32))
    assert main(["--model", "id", "--repository", str(repo), "--input", str(tmp_path / "x.npy"), "--output",
                 str(tmp_path / "y.npz"), "--annotate", str(tmp_path / "none")]) == 2
    assert not (tmp_path / "y.npz").exists() and not (tmp_path / "none").exists()


def test_a_resumed_run_keeps_the_pictures_it_drew(repo: Path, photos: Path, tmp_path: Path) -> None:
    out, drawn = tmp_path / "d.jsonl", tmp_path / "drawn"
    progress = out.with_name(out.name + ".progress.json")
    command = [sys.executable, "-m", "peregrine.server.commands", "batch", "--model", "cam", "--repository",
               str(repo), "--input", str(photos), "--output", str(out), "--in-flight", "2", "--annotate", str(drawn)]
    proc = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (progress.exists() and json.loads(progress.read_text())["items_done"] > 0):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = json.loads(progress.read_text())["items_done"]
    assert 0 < done < 121
    files = sorted(p for p in photos.rglob("*") if p.is_file() and p.suffix in (".jpg", ".png"))
    committed = {p: drawn / p.relative_to(photos) for p in files[:done] if p.name != "broken.png"}
    before = {src: (pic.stat().st_ino, pic.stat().st_mtime_ns) for src, pic in committed.items()}  # all there

    # Resumed with another --annotate (or none), the earlier pictures would be partial: refused.
    assert main(["--model", "cam", "--repository", str(repo), "--input", str(photos), "--output", str(out)]) == 2
    finished = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert finished.returncode == 0, finished.stderr
    assert f"resuming after item {done}" in finished.stderr
    # What was drawn before the kill is the same file (not drawn again); everything is drawn, right.
    assert {src: (pic.stat().st_ino, pic.stat().st_mtime_ns) for src, pic in committed.items()} == before
    lines = _lines(out)
    assert len(lines) == 121
    for line in lines:
        if "boxes" in line:
            src = Path(line["source"])
            assert (drawn / src.relative_to(photos)).read_bytes() == expected_picture(src, line)
    assert not list(drawn.rglob(".*"))  # no partial file left behind


def _video(path: Path, frames: int = 10) -> list[np.ndarray]:
    """A lossless (FFV1) video of photographs, 320 x 240 at 5 fps; its frames."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"FFV1"), 5.0, (320, 240))
    shown = []
    for i in range(frames):
        frame = cv2.imdecode(np.frombuffer(jobs.photo(jobs.PHOTOS[i % 3]), np.uint8), cv2.IMREAD_COLOR)
        shown.append(cv2.resize(frame, (320, 240), interpolation=cv2.INTER_AREA))
        writer.write(shown[-1])
    writer.release()
    return shown


def _check_video(picture: Path, frames: list[np.ndarray], lines: list[dict]) -> None:
    by_frame = {int(x["source"].split()[1]): _detections(x) for x in lines}
    assert sorted(by_frame) == list(range(0, len(frames), 2)) and sum(map(len, by_frame.values())) > 0
    with VideoReader(picture) as reader:
        written = list(reader)
        assert (reader.fps, reader.size) == (5.0, (320, 240))
    assert len(written) == len(frames)
    for n, (got, src) in enumerate(zip(written, frames, strict=True)):
        np.testing.assert_array_equal(got, draw_detections(src, by_frame[n]) if n in by_frame else src,
                                      err_msg=f"frame {n}")


def test_a_video_gives_one_annotated_video(repo: Path, tmp_path: Path) -> None:
    frames = _video(tmp_path / "drive.mkv")
    out, drawn = tmp_path / "d.jsonl", tmp_path / "drawn"
    assert main(["--model", "cam", "--repository", str(repo), "--input", str(tmp_path / "drive.mkv"), "--stride",
                 "2", "--output", str(out), "--annotate", str(drawn)]) == 0
    assert [p.name for p in drawn.iterdir()] == ["drive.mkv"]
    # Every frame, at the same rate and size; the frames asked for (stride 2) drawn, the others as they were.
    _check_video(drawn / "drive.mkv", frames, _lines(out))


def test_a_recordings_frames_are_named_by_topic_and_stamp(repo: Path, tmp_path: Path) -> None:
    pytest.importorskip("mcap_ros2", reason="the [ros] extra (rosbags, mcap, mcap-ros2-support) is not installed")
    from mcap_ros2.writer import Writer
    from rosbags.typesys import Stores, get_typestore

    photo = {name: cv2.resize(cv2.imdecode(np.frombuffer(jobs.photo(name), np.uint8), cv2.IMREAD_COLOR),
                              (320, 240), interpolation=cv2.INTER_AREA) for name in jobs.PHOTOS[:3]}
    shots = [("/cam_front/image_raw", 1_700_000_000_100_000_000, photo["astronaut"]),
             ("/cam_rear/image_raw", 1_700_000_000_120_000_000, photo["chelsea"]),
             ("/cam_front/image_raw", 1_700_000_000_200_000_000, photo["coffee"])]
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    with open(tmp_path / "drive.mcap", "wb") as f:
        writer = Writer(f)
        schema = writer.register_msgdef("sensor_msgs/msg/Image",
                                        typestore.generate_msgdef("sensor_msgs/msg/Image", ros_version=2)[0])
        for topic, stamp, bgr in shots:
            writer.write_message(topic, schema, {
                "header": {"stamp": {"sec": stamp // 10**9, "nanosec": stamp % 10**9}, "frame_id": "cam"},
                "height": 240, "width": 320, "encoding": "rgb8", "is_bigendian": 0, "step": 960,
                "data": np.ascontiguousarray(bgr[:, :, ::-1]).tobytes()}, log_time=stamp, publish_time=stamp)
        writer.finish()
    out, drawn = tmp_path / "d.jsonl", tmp_path / "drawn"
    assert main(["--model", "cam", "--repository", str(repo), "--input", str(tmp_path / "drive.mcap"), "--output",
                 str(out), "--annotate", str(drawn)]) == 0
    lines = _lines(out)
    assert [(x["source"], x["stamp_ns"]) for x in lines] == [(t, s) for t, s, _ in shots]
    for line, (topic, stamp, bgr) in zip(lines, shots, strict=True):
        picture = cv2.imread(str(drawn / topic.lstrip("/") / f"{stamp}.png"))
        np.testing.assert_array_equal(picture, draw_detections(bgr, _detections(line)))
    assert len(list(drawn.rglob("*.png"))) == 3


def test_as_a_job_the_pictures_are_drawn_from_the_local_files(repo: Path, photos: Path, tmp_path: Path,
                                                              start_server: Callable[..., PeregrineServer]) -> None:
    server = start_server(repo, job_spool=tmp_path / "spool")
    address = f"127.0.0.1:{server.port}"
    remote, drawn = tmp_path / "remote.jsonl", tmp_path / "drawn"
    glob = str(photos / "0[2-3]" / "*")
    assert main(["--model", "cam", "--input", glob, "--output", str(remote), "--server", address,
                 "--annotate", str(drawn)]) == 0
    files = sorted(p for p in photos.glob("0[2-3]/*"))
    lines = _lines(remote)
    assert len(lines) == len(files) == 2 * len(jobs.PHOTOS)
    for line, src in zip(lines, files, strict=True):  # the job names them as the tar it was sent in did
        assert line["source"].endswith(src.name)
        assert (drawn / src.relative_to(photos)).read_bytes() == expected_picture(src, line)

    # A video sent as a job: one annotated video from the local file, as in this process.
    frames = _video(tmp_path / "drive.mkv")
    out = tmp_path / "video.jsonl"
    assert main(["--model", "cam", "--input", str(tmp_path / "drive.mkv"), "--stride", "2", "--output", str(out),
                 "--server", address, "--annotate", str(tmp_path / "videos")]) == 0
    _check_video(tmp_path / "videos" / "drive.mkv", frames, _lines(out))
    # A tensor job has no pictures: refused before it is submitted.
    np.save(tmp_path / "x.npy", np.zeros((4, 4), np.float32))
    assert main(["--model", "id", "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npz"),
                 "--server", address, "--annotate", str(drawn)]) == 2
