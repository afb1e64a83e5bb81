"""``peregrine batch --output detections.mcap`` over a recording (issue 21): one vision_msgs/Detection2DArray
per frame, read back message by message with mcap + mcap-ros2-support and compared with the JSON Lines of the
same run (topic, log time, header stamp, frame id, every box); a run killed with SIGKILL and run again gives
the same messages as a run left alone; inputs that are not recordings are refused before any model loads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

pytest.importorskip("rosbags", reason="the [ros] extra (rosbags, mcap, mcap-ros2-support) is not installed")
pytest.importorskip("mcap_ros2", reason="the [ros] extra (rosbags, mcap, mcap-ros2-support) is not installed")

from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from mcap_ros2.writer import Writer as McapRos2Writer
from peregrine.server.app import PeregrineServer
from peregrine.server.batch import main
from peregrine.server.codecs.recordings import ANNOTATIONS_TYPE, DETECTIONS_TYPE
from rosbags.rosbag2 import StoragePlugin
from rosbags.rosbag2 import Writer as Bag2Writer
from rosbags.typesys import Stores, get_typestore
from support import jobs

pytestmark = pytest.mark.timeout(300)

FRONT, REAR = "/cam_front/image_raw", "/cam_rear/image_raw"
T0 = 1_700_000_000_000_000_000


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return jobs.repository(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def pictures() -> list[np.ndarray]:
    """The job tests' photographs at 320 x 240, BGR: the detector finds boxes in them."""
    return [cv2.resize(cv2.imdecode(np.frombuffer(jobs.photo(name), np.uint8), cv2.IMREAD_COLOR), (320, 240),
                       interpolation=cv2.INTER_AREA) for name in jobs.PHOTOS]


def shots(pictures: list[np.ndarray], count: int) -> list[dict[str, Any]]:
    """``count`` frames alternating between two cameras: the front one rgb8, the rear one a Bayer sensor's
    mosaic; stamps 50 ms apart, each logged 7 ms after its capture."""
    out = []
    for n in range(count):
        bgr = pictures[n % len(pictures)]
        stamp = T0 + n * 50_000_000 + 123
        front = n % 2 == 0
        if front:
            encoding, data = "rgb8", np.ascontiguousarray(bgr[:, :, ::-1]).tobytes()
        else:  # rggb: R at (0, 0), B at (1, 1)
            mosaic = np.empty(bgr.shape[:2], np.uint8)
            mosaic[0::2, 0::2], mosaic[0::2, 1::2] = bgr[0::2, 0::2, 2], bgr[0::2, 1::2, 1]
            mosaic[1::2, 0::2], mosaic[1::2, 1::2] = bgr[1::2, 0::2, 1], bgr[1::2, 1::2, 0]
            encoding, data = "bayer_rggb8", mosaic.tobytes()
        out.append({"topic": FRONT if front else REAR, "stamp": stamp, "log": stamp + 7_000_000,
                    "frame_id": "cam_front" if front else "cam_rear", "encoding": encoding, "data": data,
                    "step": 960 if front else 320})
    return out


def _image(shot: dict[str, Any]) -> dict[str, Any]:
    return {"header": {"stamp": {"sec": shot["stamp"] // 10**9, "nanosec": shot["stamp"] % 10**9},
                       "frame_id": shot["frame_id"]},
            "height": 240, "width": 320, "encoding": shot["encoding"], "is_bigendian": 0, "step": shot["step"],
            "data": shot["data"]}


def write_mcap(path: Path, frames: list[dict[str, Any]]) -> Path:
    """A bare MCAP file as a ROS 2 node logging with mcap-ros2-support writes it, with a non-image topic."""
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    with open(path, "wb") as f:
        writer = McapRos2Writer(f)
        image = writer.register_msgdef("sensor_msgs/msg/Image",
                                       typestore.generate_msgdef("sensor_msgs/msg/Image", ros_version=2)[0])
        chatter = writer.register_msgdef("std_msgs/msg/String",
                                         typestore.generate_msgdef("std_msgs/msg/String", ros_version=2)[0])
        writer.write_message("/chatter", chatter, {"data": "hi"}, log_time=frames[0]["log"] - 1)
        for shot in frames:
            writer.write_message(shot["topic"], image, _image(shot), log_time=shot["log"], publish_time=shot["log"])
        writer.finish()
    return path


def write_rosbag2(path: Path, frames: list[dict[str, Any]]) -> Path:
    """A rosbag2 directory (MCAP storage) as ``ros2 bag record`` leaves it, written with rosbags."""
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    t = typestore.types
    with Bag2Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        connections = {topic: w.add_connection(topic, "sensor_msgs/msg/Image", typestore=typestore)
                       for topic in (FRONT, REAR)}
        for shot in frames:
            msg = t["sensor_msgs/msg/Image"](
                header=t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](
                    sec=shot["stamp"] // 10**9, nanosec=shot["stamp"] % 10**9), frame_id=shot["frame_id"]),
                height=240, width=320, encoding=shot["encoding"], is_bigendian=0, step=shot["step"],
                data=np.frombuffer(shot["data"], np.uint8))
            w.write(connections[shot["topic"]], shot["log"], typestore.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    return path


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _messages(path: Path) -> list[tuple[str, str, int, int, Any]]:
    """(schema, topic, log time, publish time, decoded message) of every message, in the file's order."""
    with open(path, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        assert reader.get_header().profile == "ros2"
        return [(schema.name, channel.topic, message.log_time, message.publish_time, msg)
                for schema, channel, message, msg in reader.iter_decoded_messages(log_time_order=False)]


def check_against_lines(mcap: Path, lines: list[dict[str, Any]], frames: list[dict[str, Any]]) -> None:
    """Every line with boxes has its Detection2DArray, in order, with its frame's topic, log time, stamp and
    frame id, and the line's boxes as centre and size."""
    messages = [m for m in _messages(mcap) if m[0] == DETECTIONS_TYPE]
    assert len(messages) == len(lines) == len(frames)
    for (_, topic, log_time, publish_time, msg), line, shot in zip(messages, lines, frames, strict=True):
        assert topic == shot["topic"] + "/detections" and line["source"] == shot["topic"]
        assert log_time == publish_time == shot["log"]
        assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == shot["stamp"] == line["stamp_ns"]
        assert msg.header.frame_id == shot["frame_id"] == line["frame_id"]
        assert len(msg.detections) == len(line["boxes"])
        for i, (d, b) in enumerate(zip(msg.detections, line["boxes"], strict=True)):
            assert d.header.frame_id == shot["frame_id"] and d.id == str(i)
            assert d.header.stamp.sec * 10**9 + d.header.stamp.nanosec == shot["stamp"]
            assert d.bbox.center.position.x == pytest.approx((b["x1"] + b["x2"]) / 2, abs=1e-9)
            assert d.bbox.center.position.y == pytest.approx((b["y1"] + b["y2"]) / 2, abs=1e-9)
            assert (d.bbox.size_x, d.bbox.size_y) == pytest.approx((b["x2"] - b["x1"], b["y2"] - b["y1"]), abs=1e-9)
            (hyp,) = d.results
            assert hyp.hypothesis.class_id == b["label"] and hyp.hypothesis.score == b["score"]


def test_a_recording_gives_one_detection_array_per_frame(repo: Path, pictures: list[np.ndarray],
                                                         tmp_path: Path) -> None:
    frames = shots(pictures, 12)
    recording = write_mcap(tmp_path / "drive.mcap", frames)
    out = tmp_path / "detections.mcap"
    assert main(["--model", "cam", "--repository", str(repo), "--input", str(recording), "--output", str(out)]) == 0
    lines = _lines(tmp_path / "detections.mcap.jsonl")  # the record the MCAP file was rendered from, kept
    assert sum(len(line["boxes"]) for line in lines) > 0  # the photographs have boxes to compare
    check_against_lines(out, lines, frames)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("detections.mcap.") and p.suffix != ".jsonl"]
    # The boxes are those a JSON Lines output of the same recording gets.
    plain = tmp_path / "plain.jsonl"
    assert main(["--model", "cam", "--repository", str(repo), "--input", str(recording), "--output", str(plain)]) == 0
    assert _lines(plain) == lines


def test_a_rosbag2_directory_one_topic_a_stride_and_annotations(repo: Path, pictures: list[np.ndarray],
                                                                tmp_path: Path) -> None:
    frames = shots(pictures, 12)
    bag = write_rosbag2(tmp_path / "drive_bag", frames)
    out = tmp_path / "front.mcap"
    assert main(["--model", "cam", "--repository", str(repo), "--input", str(bag), "--topic", REAR, "--stride", "2",
                 "--output", str(out), "--image-annotations"]) == 0
    rear = [f for f in frames if f["topic"] == REAR][::2]  # the Bayer camera's frames 0, 2, 4
    check_against_lines(out, _lines(tmp_path / "front.mcap.jsonl"), rear)
    # Beside each array, Foxglove's ImageAnnotations for the same image: an outline and a label per box.
    messages = _messages(out)
    assert [(m[0], m[1]) for m in messages] == [(DETECTIONS_TYPE, REAR + "/detections"),
                                                (ANNOTATIONS_TYPE, REAR + "/annotations")] * len(rear)
    for (_, _, log_time, _, array), (_, _, ann_log_time, _, ann) in zip(messages[0::2], messages[1::2], strict=True):
        assert ann_log_time == log_time
        assert len(ann.points) == len(ann.texts) == len(array.detections)
        for p in ann.points:
            assert p.timestamp.sec == array.header.stamp.sec and p.timestamp.nanosec == array.header.stamp.nanosec


def test_a_pose_models_keypoints_in_the_annotations(pictures: list[np.ndarray], tmp_path: Path) -> None:
    """A pose pipeline over a recording: its JSON Lines carry each box's keypoints, and the Foxglove annotations
    draw them: per box its outline, COCO's skeleton (a line list over the shown keypoints' limbs) when there
    are limbs to draw, and the keypoints whose score is at least 0.5 as points."""
    from peregrine.client.keypoints import Keypoint, limbs, shown
    from peregrine.modelgen import yolov8_pose
    from support import onnx_models

    onnx_models.write(tmp_path, "pose", yolov8_pose(0, imgsz=320), "max_batch_size = 4\n")
    (tmp_path / "people").mkdir()
    (tmp_path / "people" / "config.toml").write_text('platform = "peregrine_detection"\nmax_batch_size = 4\n'
                                                     '[detection]\ndetector = "pose"\n')
    frames = shots(pictures, 4)
    recording = write_mcap(tmp_path / "drive.mcap", frames)
    out = tmp_path / "people.mcap"
    assert main(["--model", "people", "--repository", str(tmp_path), "--input", str(recording), "--output", str(out),
                 "--image-annotations"]) == 0
    lines = _lines(tmp_path / "people.mcap.jsonl")
    annotations = [m[4] for m in _messages(out) if m[0] == ANNOTATIONS_TYPE]
    assert len(annotations) == len(lines) == 4
    drawn = skeletons = 0
    for line, ann in zip(lines, annotations, strict=True):
        boxes = line["boxes"]
        assert boxes and all(len(b["keypoints"]) == 17 and all(len(p) == 3 for p in b["keypoints"]) for b in boxes)
        outlines = [p for p in ann.points if p.type == 2]
        dots = [p for p in ann.points if p.type == 1]
        lists = [p for p in ann.points if p.type == 4]
        assert len(outlines) == len(dots) == len(boxes)
        want_lists = 0
        for box, points in zip(boxes, dots, strict=True):
            keypoints = [Keypoint(*p) for p in box["keypoints"]]
            visible = [(p.x, p.y) for p, seen in zip(keypoints, shown(keypoints), strict=True) if seen]
            assert [(q.x, q.y) for q in points.points] == visible
            want_lists += bool(limbs(keypoints))
            drawn += len(visible)
        assert len(lists) == want_lists
        skeletons += want_lists
    assert drawn > 0 and skeletons > 0


def test_killed_and_run_again_it_gives_the_same_messages(repo: Path, pictures: list[np.ndarray],
                                                         tmp_path: Path) -> None:
    frames = shots(pictures, 100)
    recording = write_mcap(tmp_path / "drive.mcap", frames)
    reference = tmp_path / "reference.mcap"
    assert main(["--model", "cam", "--repository", str(repo), "--input", str(recording), "--output",
                 str(reference)]) == 0
    out = tmp_path / "detections.mcap"
    progress = out.with_name(out.name + ".progress.json")
    command = [sys.executable, "-m", "peregrine.server.commands", "batch", "--model", "cam", "--repository",
               str(repo), "--input", str(recording), "--output", str(out), "--in-flight", "2"]
    proc = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (progress.exists() and json.loads(progress.read_text())["items_done"] > 0):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = json.loads(progress.read_text())["items_done"]
    assert 0 < done < len(frames)
    assert not out.exists()  # nothing half-written where the MCAP file goes
    finished = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert finished.returncode == 0, finished.stderr
    assert f"resuming after item {done}" in finished.stderr
    got, want = _messages(out), _messages(reference)
    assert len(got) == len(want) == len(frames)
    for n, (a, b) in enumerate(zip(got, want, strict=True)):  # decoded messages compare by their fields' values
        assert a[:4] == b[:4] and repr(a[4]) == repr(b[4]), f"message {n}"
    check_against_lines(out, _lines(tmp_path / "detections.mcap.jsonl"), frames)


def test_an_mcap_output_is_for_recordings_only(repo: Path, pictures: list[np.ndarray], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.jpg"), pictures[0])
    np.save(tmp_path / "x.npy", np.zeros((2, 4), np.float32))
    recording = write_mcap(tmp_path / "drive.mcap", shots(pictures, 2))
    for model, given in (("cam", str(photos)), ("id", str(tmp_path / "x.npy"))):
        assert main(["--model", model, "--repository", str(repo), "--input", given,
                     "--output", str(tmp_path / "d.mcap")]) == 2
        assert "--output" in capsys.readouterr().err
    assert main(["--model", "cam", "--repository", str(repo), "--input", str(recording), "--output",
                 str(tmp_path / "d.jsonl"), "--image-annotations"]) == 2
    assert "--image-annotations" in capsys.readouterr().err
    assert not list(tmp_path.glob("d.*"))


def test_as_a_job_the_mcap_file_is_rendered_here(repo: Path, pictures: list[np.ndarray], tmp_path: Path,
                                                 start_server: Callable[..., PeregrineServer],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    server = start_server(repo, job_spool=tmp_path / "spool")
    frames = shots(pictures, 6)
    recording = write_mcap(tmp_path / "drive.mcap", frames)
    remote = tmp_path / "remote.mcap"
    assert main(["--model", "cam", "--input", str(recording), "--output", str(remote), "--server",
                 f"127.0.0.1:{server.port}"]) == 0
    check_against_lines(remote, _lines(tmp_path / "remote.mcap.jsonl"), frames)
    # A job takes one file: a rosbag2 directory is refused, naming its storage file to send instead.
    bag = write_rosbag2(tmp_path / "drive_bag", frames)
    capsys.readouterr()
    assert main(["--model", "cam", "--input", str(bag), "--output", str(tmp_path / "x.mcap"), "--server",
                 f"127.0.0.1:{server.port}"]) == 2
    assert "rosbag2 directory" in capsys.readouterr().err
