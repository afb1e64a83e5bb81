"""Every ```python block of the README and docs/ runs, as it is written, against a live server.

The only change made to a block is the address: the examples say 127.0.0.1:8001 (gRPC) and 127.0.0.1:8002
(HTTP), the test server listens on free ports. Each block runs in its own interpreter, in a directory
holding `images/` as `make models` writes it, against the bundled models (built here when `make models` has
not run).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from peregrine.client import DetectionClient
from peregrine.modelgen.photos import write_photos
from peregrine.modelgen.repository import BUNDLED_MODELS, model_path, write_repository
from peregrine.server.app import PeregrineServer
from peregrine.server.config import ServerConfig
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```\s*$", re.S | re.M)


def python_blocks() -> list[pytest.param]:
    blocks = []
    for doc in DOCS:
        text = doc.read_text()
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            blocks.append(pytest.param(m.group(1), id=f"{doc.relative_to(ROOT)}:{line}"))
    return blocks


BLOCKS = python_blocks()


def test_the_docs_have_examples() -> None:
    # The extraction itself: a changed fence style must not make the examples below silently vanish.
    ids = {p.id.split(":")[0] for p in BLOCKS}
    assert {"README.md", "docs/CLIENTS.md", "docs/DETECTION.md", "docs/SHARED_MEMORY.md", "docs/ROBOTICS.md"} <= ids
    assert len(BLOCKS) >= 10


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled repository: the checkout's `models/` when `make models` has built it, else a copy built here."""
    source = ROOT / "models"
    if all(model_path(source, spec.name).exists() for spec in BUNDLED_MODELS):
        return source
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(source, root, dirs_exist_ok=True)
    list(write_repository(root))
    return root


@pytest.fixture(scope="module")
def live(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeregrineServer]:
    server = PeregrineServer(ServerConfig(model_repository=repository, grpc_port=0, http_port=0,
                                          job_spool=tmp_path_factory.mktemp("jobs")))
    server.start()
    yield server
    server.stop(grace=1.0)


def write_drive_bag(path: Path) -> None:
    """The user's recording that docs/ROBOTICS.md reads: a ROS 1 bag with a camera topic, written with rosbags."""
    from rosbags.rosbag1 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS1_NOETIC)
    t = ts.types
    with Writer(path) as w:
        conn = w.add_connection("/cam_front/image_raw", "sensor_msgs/msg/Image", typestore=ts)
        for i, photo in enumerate(sorted((path.parent / "images").glob("*.jpg"))[:3]):
            rgb = np.asarray(Image.open(photo).convert("RGB").resize((320, 240)))
            stamp = t["builtin_interfaces/msg/Time"](sec=1_700_000_000 + i, nanosec=0)
            msg = t["sensor_msgs/msg/Image"](
                header=t["std_msgs/msg/Header"](seq=i, stamp=stamp, frame_id="cam_front"), height=240, width=320,
                encoding="rgb8", is_bigendian=0, step=960, data=rgb.reshape(-1))
            w.write(conn, (1_700_000_000 + i) * 10**9, ts.serialize_ros1(msg, "sensor_msgs/msg/Image"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's directory: `images/` as `make models` writes it and, when rosbags is installed, a recording."""
    root = tmp_path_factory.mktemp("user")
    write_photos(root / "images")
    if importlib.util.find_spec("rosbags") is not None:
        write_drive_bag(root / "drive.bag")
    return root


@pytest.mark.parametrize("code", BLOCKS)
def test_example_runs(code: str, live: PeregrineServer, workdir: Path) -> None:
    if "drive.bag" in code and not (workdir / "drive.bag").exists():
        pytest.skip("the recording examples need the [ros] extra (rosbags) to write drive.bag")
    code = code.replace("127.0.0.1:8001", f"127.0.0.1:{live.port}").replace("127.0.0.1:8002",
                                                                           f"127.0.0.1:{live.http_port}")
    done = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"the example failed:\n{code}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"


def test_readme_serves_an_ultralytics_export(repository: Path, tmp_path: Path,
                                             start_server: Callable[..., PeregrineServer]) -> None:
    """The README's three lines, after `yolo export`, run in a shell: the bundled YOLOv8n (the same graph and
    output layout as an ultralytics export) stands in for the exported yolov8n.onnx."""
    text = (ROOT / "README.md").read_text()
    block = next(m.group(1) for m in re.finditer(r"^```sh\n(.*?)^```\s*$", text, re.S | re.M)
                 if "yolo export" in m.group(1))
    lines = block.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("yolo export")
    shutil.copy(model_path(repository, "yolov8n"), tmp_path / "yolov8n.onnx")
    subprocess.run(["bash", "-euc", "\n".join(lines[1:])], cwd=tmp_path, check=True, timeout=30)
    server = start_server(tmp_path / "models")
    write_photos(tmp_path / "images")
    with DetectionClient(f"127.0.0.1:{server.port}", deadline_s=30.0) as client:
        boxes = client.detect(tmp_path / "images" / "astronaut.jpg", model="my_detect")
    assert boxes and all(0 <= b.x1 <= b.x2 <= 512 and 0 <= b.y1 <= b.y2 <= 512 for b in boxes)
