"""What the job tests share: a repository with a small detection pipeline and tensor models, payloads made
of photographs, and a server run as a real process that the tests may kill."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import cv2
import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from skimage import data

from support import onnx_models

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "hubble_deep_field")


def repository(root: Path) -> Path:
    """``cam``: a detection pipeline over a small YOLOv5-class detector (320 x 320); ``id``: identity FP32 [N,4];
    ``two``: a model with two inputs; ``wide``: identity FP32 [N, any]."""
    from peregrine.modelgen import yolov5_detector

    onnx_models.write(root, "v5", yolov5_detector(0, imgsz=320), "max_batch_size = 8\n")
    (root / "cam").mkdir(exist_ok=True)
    (root / "cam" / "config.toml").write_text('platform = "peregrine_detection"\nmax_batch_size = 8\n'
                                              '[detection]\ndetector = "v5"\n')
    onnx_models.write(root, "id", onnx_models.identity("FP32", ["N", 4]), "max_batch_size = 8\n")
    onnx_models.write(root, "two", onnx_models.add_sub(["N", 16]), "max_batch_size = 8\n")
    onnx_models.write(root, "wide", onnx_models.identity("FP32", ["N", None]), "max_batch_size = 8\n")
    return root


def photo(name: str) -> bytes:
    image = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(image[..., :3][..., ::-1]))
    assert ok
    return encoded.tobytes()


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            t.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def photo_archive(copies: int = 1) -> bytes:
    return tar_of({f"{i:04d}-{name}.jpg": photo(name) for i in range(copies) for name in PHOTOS})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``python -m peregrine.server`` with a job spool, as a child process the test may kill -9."""

    def __init__(self, repo: Path, spool: Path | None, log: Path, *extra: str) -> None:
        self.repo, self.spool, self.log_path, self.extra = repo, spool, log, extra
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        with self.log_path.open("a") as log:  # the child keeps its own descriptor of it
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "peregrine.server", "--model-repository", str(self.repo), "--grpc-port",
                 str(self.port), "--http-port", "-1", *(["--job-spool", str(self.spool)] if self.spool else []),
                 "--log-level", "INFO", *self.extra], stderr=log)
        deadline = time.monotonic() + 120
        with grpc.insecure_channel(self.address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            while True:
                assert self.proc.poll() is None, self.log_path.read_text()
                try:  # serving, every model it was asked for ready
                    answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return self
                    assert time.monotonic() < deadline, self.log_path.read_text()
                    time.sleep(0.2)
                except grpc.RpcError:
                    assert time.monotonic() < deadline, self.log_path.read_text()
                    time.sleep(0.2)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no clean-up of any kind
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class PostgresServer:
    """A private PostgreSQL server in a temporary directory of its own, on a free port, with trust
    authentication on loopback (as the user ``postgres`` when this runs as root: PostgreSQL refuses to run as
    root, and the directory is then that user's)."""

    def __init__(self) -> None:
        import glob
        import os
        import shutil
        import tempfile

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        initdb = found[-1] if found else shutil.which("initdb")
        if initdb is None:
            raise FileNotFoundError("no PostgreSQL here (initdb): `make test` installs it with "
                                    "tests/support/install_postgres.sh where it can")
        self.bin = Path(initdb).parent
        self.root = Path(tempfile.mkdtemp(prefix="peregrine-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_user: list[str] = []
        self.data.mkdir()
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
            for path in (self.root, self.data):
                shutil.chown(path, "postgres", "postgres")
        subprocess.run([*self.as_user, str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                        "--auth=trust", "-E", "UTF8"], check=True, capture_output=True)
        subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-l",
                        str(self.data / "server.log"), "-o",
                        f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                       check=True, capture_output=True)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        import shutil

        subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)
