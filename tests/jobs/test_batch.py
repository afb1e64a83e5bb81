"""``peregrine batch``: a model over files in this process, resumable after a kill, or as a job on a server
(issue 17, offline batch)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from peregrine.server.app import PeregrineServer
from peregrine.server.batch import main
from support import jobs

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return jobs.repository(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for i in range(20):
        for name in jobs.PHOTOS:
            (root / f"{i:02d}" / f"{name}.jpg").parent.mkdir(exist_ok=True)
            (root / f"{i:02d}" / f"{name}.jpg").write_bytes(jobs.photo(name))
    (root / "notes.txt").write_text("not an image")
    (root / "00" / "broken.png").write_bytes(b"\x89PNG broken")
    return root


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_directory_gives_one_line_per_image_in_order(repo: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "detections.jsonl"
    assert main(["--model", "cam", "--repository", str(repo), "--input", str(photos), "--output", str(out)]) == 0
    lines = _lines(out)
    assert len(lines) == 20 * len(jobs.PHOTOS) + 1
    assert [line["source"] for line in lines] == sorted(line["source"] for line in lines)
    broken = [line for line in lines if "error" in line]
    assert len(broken) == 1 and broken[0]["source"].endswith("broken.png")
    # Every copy of a photograph gets the same boxes; a glob of one copy gives the same lines.
    by_name: dict[str, list] = {}
    for line in lines:
        if "boxes" in line:
            by_name.setdefault(Path(line["source"]).name, []).append(line["boxes"])
    assert all(all(b == boxes[0] for b in boxes) for boxes in by_name.values())
    one = tmp_path / "one.jsonl"
    assert main(["--model", "cam", "--repository", str(repo), "--input", str(photos / "00" / "*.jpg"),
                 "--output", str(one)]) == 0
    assert {Path(x["source"]).name: x["boxes"] for x in _lines(one)} == {n: b[0] for n, b in by_name.items()}
    assert not out.with_name(out.name + ".progress.json").exists()


def test_tensors_in_npz_out(repo: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(1).standard_normal((50, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "y.npz"
    assert main(["--model", "id", "--repository", str(repo), "--input", str(tmp_path / "x.npy"),
                 "--output", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out)["OUTPUT0"], x)
    assert main(["--model", "id", "--repository", str(repo), "--input", str(tmp_path / "x.npy"),
                 "--output", str(tmp_path / "y.jsonl")]) == 2  # tensors give an .npz
    assert main(["--model", "id", "--repository", str(repo), "--input", str(tmp_path / "none*.npy"),
                 "--output", str(out)]) == 2


def test_killed_and_run_again_it_resumes(repo: Path, photos: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference.jsonl"
    assert main(["--model", "cam", "--repository", str(repo), "--input", str(photos), "--output",
                 str(reference)]) == 0
    out = tmp_path / "detections.jsonl"
    progress = out.with_name(out.name + ".progress.json")
    command = [sys.executable, "-m", "peregrine.server.commands", "batch", "--model", "cam", "--repository",
               str(repo), "--input", str(photos), "--output", str(out), "--in-flight", "2"]
    proc = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (progress.exists() and json.loads(progress.read_text())["items_done"] > 0):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = json.loads(progress.read_text())["items_done"]
    assert 0 < done < 121
    finished = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert finished.returncode == 0, finished.stderr
    assert f"resuming after item {done}" in finished.stderr
    assert out.read_bytes() == reference.read_bytes()


def test_as_a_job_on_a_server(repo: Path, photos: Path, tmp_path: Path,
                              start_server: Callable[..., PeregrineServer]) -> None:
    server = start_server(repo, job_spool=tmp_path / "spool")
    local, remote = tmp_path / "local.jsonl", tmp_path / "remote.jsonl"
    glob = str(photos / "0[0-2]" / "*")
    assert main(["--model", "cam", "--repository", str(repo), "--input", glob, "--output", str(local)]) == 0
    assert main(["--model", "cam", "--input", glob, "--output", str(remote), "--server",
                 f"127.0.0.1:{server.port}"]) == 0
    # The same images and boxes; a job names them as the tar it was sent in did.
    assert [x.get("boxes") for x in _lines(remote)] == [x.get("boxes") for x in _lines(local)]
