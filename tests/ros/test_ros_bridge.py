"""The live ROS bridge against a real ROS 1 master: roscore, a bag recorded here replayed with `rosbag play`,
the bridge node streaming to a real Peregrine server, and a ROS listener checking what it publishes.

Needs ROS 1 from Debian (`ros-core`, `python3-rospy`, `python3-sensor-msgs`, `python3-rosbag`), which
`make test` installs where it can (`clients/ros/install_ros1.sh`); elsewhere the test skips and says why.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import skimage.data

pytest.importorskip("rosbags", reason="the [ros] extra (rosbags) writes the bag")

from peregrine.modelgen import yolov5_detector
from peregrine.server.app import PeregrineServer
from rosbags.rosbag1 import Writer
from rosbags.typesys import Stores, get_typestore
from support import onnx_models

ROOT = Path(__file__).resolve().parents[2]
BRIDGE = ROOT / "clients" / "ros" / "detection_bridge.py"
DEBIAN_ROS_PYTHON = Path("/usr/lib/python3/dist-packages")

if shutil.which("roscore") is None or shutil.which("rosbag") is None or not (DEBIAN_ROS_PYTHON / "rospy").is_dir():
    pytest.skip("ROS 1 is not installed (Debian: apt install ros-core python3-rospy python3-sensor-msgs "
                "python3-rosbag; `make test` runs clients/ros/install_ros1.sh)", allow_module_level=True)

FRAMES = 6
STAMP0 = 1_700_000_000
LISTENER = """
import json, sys, time
sys.path.append(sys.argv[1]); sys.path.insert(0, sys.argv[2])
import rospy
from std_msgs.msg import String
from detection_bridge import ros1_vision_msgs
out = open(sys.argv[3], "w")
rospy.init_node("listener", anonymous=True, disable_signals=True)
def on_array(m):
    out.write(json.dumps({"kind": "detections", "stamp": m.header.stamp.to_nsec(), "frame_id": m.header.frame_id,
        "boxes": [[d.bbox.center.x, d.bbox.center.y, d.bbox.size_x, d.bbox.size_y, d.results[0].id,
                   d.results[0].score, d.header.frame_id] for d in m.detections]}) + "\\n"); out.flush()
def on_safety(m):
    out.write(json.dumps({"kind": "safety", "line": m.data}) + "\\n"); out.flush()
rospy.Subscriber("/camera/image_raw/detections", ros1_vision_msgs()["vision_msgs/Detection2DArray"], on_array)
rospy.Subscriber("/peregrine/safety", String, on_safety)
print("listening", flush=True)
end = time.monotonic() + float(sys.argv[4])
while time.monotonic() < end and not rospy.is_shutdown():
    time.sleep(0.05)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ros_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A roscore of our own on a free port; the environment that points ROS tools at it."""
    port = free_port()
    home = tmp_path_factory.mktemp("ros_home")
    env = {**os.environ, "ROS_MASTER_URI": f"http://127.0.0.1:{port}", "ROS_HOSTNAME": "127.0.0.1",
           "ROS_HOME": str(home), "ROS_LOG_DIR": str(home / "log"), "PYTHONUNBUFFERED": "1"}
    core = subprocess.Popen(["roscore", "-p", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["rosparam", "get", "/run_id"], env=env, capture_output=True).returncode != 0:
            assert core.poll() is None, "roscore exited"
            assert time.monotonic() < deadline, "roscore did not come up in 30 s"
            time.sleep(0.3)
        yield env
    finally:
        os.killpg(core.pid, signal.SIGINT)
        try:
            core.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(core.pid, signal.SIGKILL)
            core.wait()


@pytest.fixture(scope="module")
def bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A camera recording: rgb8 frames at 5 Hz on /camera/image_raw, frame id cam_front, written with rosbags."""
    path = tmp_path_factory.mktemp("bags") / "camera.bag"
    ts = get_typestore(Stores.ROS1_NOETIC)
    t = ts.types
    photo = np.ascontiguousarray(skimage.data.astronaut()[::2, ::2])  # 256 x 256 RGB
    with Writer(path) as w:
        conn = w.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=ts)
        for i in range(FRAMES):
            stamp = t["builtin_interfaces/msg/Time"](sec=STAMP0 + i // 5, nanosec=(i % 5) * 200_000_000)
            msg = t["sensor_msgs/msg/Image"](
                header=t["std_msgs/msg/Header"](seq=i, stamp=stamp, frame_id="cam_front"), height=256, width=256,
                encoding="rgb8", is_bigendian=0, step=768, data=np.roll(photo, 8 * i, axis=1).reshape(-1))
            w.write(conn, (STAMP0 + 10) * 10**9 + i * 200_000_000, ts.serialize_ros1(msg, "sensor_msgs/msg/Image"))
    return path


@pytest.fixture(scope="module")
def peregrine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeregrineServer]:
    from peregrine.server.config import ServerConfig

    repo = tmp_path_factory.mktemp("ros_models")
    onnx_models.write(repo, "yolov5n", yolov5_detector(0, imgsz=320), "max_batch_size = 8\n")
    (repo / "det").mkdir()
    (repo / "det" / "config.toml").write_text('platform = "peregrine_detection"\nmax_batch_size = 8\n\n'
                                              '[detection]\ndetector = "yolov5n"\n')
    server = PeregrineServer(ServerConfig(model_repository=repo, grpc_port=0, http_port=None))
    server.start()
    yield server
    server.stop(grace=0.5)


def run_bridge(env: dict[str, str], bag: Path, url: str, deadline_ms: float, out: Path) -> tuple[list[dict], str]:
    listener = subprocess.Popen([sys.executable, "-c", LISTENER, str(DEBIAN_ROS_PYTHON), str(BRIDGE.parent),
                                 str(out), "60"], env=env, stdout=subprocess.PIPE, text=True)
    bridge = subprocess.Popen([sys.executable, str(BRIDGE), "--image-topic", "/camera/image_raw", "-u", url,
                               "--model", "det", "--deadline-ms", str(deadline_ms)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for proc, word in ((listener, "listening"), (bridge, "detection_bridge: ready")):
            line = proc.stdout.readline() if proc.stdout else ""
            assert word in line, f"expected '{word}', got {line!r}: {bridge.stderr.read() if proc is bridge else ''}"
        # Play once both ends are connected (--wait-for-subscribers: the bridge subscribes to the images).
        subprocess.run(["rosbag", "play", "-q", "--wait-for-subscribers", str(bag)], env=env, check=True,
                       timeout=60, capture_output=True)
        deadline = time.monotonic() + 30
        expected = FRAMES if deadline_ms > 100 else 1
        while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < expected):
            time.sleep(0.1)
        time.sleep(1.0)  # anything more (there should be nothing) would arrive by now
    finally:
        bridge.send_signal(signal.SIGINT)
        summary, err = bridge.communicate(timeout=30)
        listener.kill()
        listener.communicate()
    records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return records, summary + err


def test_bag_replay_through_the_bridge(ros_env: dict[str, str], bag: Path, peregrine: PeregrineServer,
                                       tmp_path: Path) -> None:
    records, summary = run_bridge(ros_env, bag, f"127.0.0.1:{peregrine.port}", 5000, tmp_path / "heard.jsonl")
    arrays = [r for r in records if r["kind"] == "detections"]
    # One Detection2DArray per recorded frame, in order, with the image's header stamp and frame id.
    assert [a["stamp"] for a in arrays] == [(STAMP0 + i // 5) * 10**9 + (i % 5) * 200_000_000
                                            for i in range(FRAMES)], summary
    assert all(a["frame_id"] == "cam_front" for a in arrays)
    assert not [r for r in records if r["kind"] == "safety"], summary
    boxes = [b for a in arrays for b in a["boxes"]]
    assert boxes, "the seeded detector finds boxes in the photograph"
    for cx, cy, w, h, class_id, score, frame_id in boxes:
        assert 0 <= cx - w / 2 <= cx + w / 2 <= 256.5 and 0 <= cy - h / 2 <= cy + h / 2 <= 256.5
        assert 0 <= class_id < 80 and 0.25 <= score <= 1 and frame_id == "cam_front"
    assert f"{FRAMES} published on time" in summary and "brakes 0" in summary


def test_watchdog_brakes_when_deadlines_cannot_be_met(ros_env: dict[str, str], bag: Path,
                                                      peregrine: PeregrineServer, tmp_path: Path) -> None:
    # 1 ms from arrival: no frame can be answered in time, so every frame brakes and nothing is published late.
    records, summary = run_bridge(ros_env, bag, f"127.0.0.1:{peregrine.port}", 1, tmp_path / "heard.jsonl")
    brakes = [r["line"] for r in records if r["kind"] == "safety"]
    assert brakes and all(line.startswith("BRAKE ") and " cam_front: " in line for line in brakes), records
    assert not [r for r in records if r["kind"] == "detections"], records
    assert "brakes 0" not in summary and "0 published on time" in summary
