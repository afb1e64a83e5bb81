"""Shared fixtures: a real Peregrine server, in-process on a free port, over a real model repository."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from peregrine.server.app import PeregrineServer
from peregrine.server.config import ServerConfig
from support import onnx_models
from support.onnx_models import ALL_TYPES


@pytest.fixture
def start_server() -> Iterator[Callable[..., PeregrineServer]]:
    """Start servers on port 0 over a given repository; all are stopped at the end of the test."""
    started: list[PeregrineServer] = []

    def start(repo: Path, **options: object) -> PeregrineServer:
        settings: dict[str, object] = {"grpc_port": 0, "http_port": None, **options}
        server = PeregrineServer(ServerConfig(model_repository=repo, **settings))  # type: ignore[arg-type]
        server.start()
        started.append(server)
        return server

    yield start
    for s in started:
        s.stop(grace=1.0)


def _standard_repository(root: Path) -> Path:
    for dt in ALL_TYPES:
        onnx_models.write(root, f"identity_{dt.lower()}", onnx_models.identity(dt, ["N", None]))
    onnx_models.write(root, "simple", onnx_models.add_sub(["N", 16]), 'max_batch_size = 8\n')
    onnx_models.write(root, "simple_nobatch", onnx_models.add_sub([16]))
    # On the CPU an out-of-range index fails the run (CUDA kernels do not check), so the poison works there.
    onnx_models.write(root, "gather", onnx_models.gather(), "max_batch_size = 4\n[instance_group]\ndevice = 'cpu'\n")
    onnx_models.write(root, "finite", onnx_models.identity("FP32", ["N", 4]),
                      '[[input]]\nname = "INPUT0"\nreject_non_finite = true\n')
    onnx_models.write(root, "broken", b"this is not an onnx model")
    return root


@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _standard_repository(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def server(repo: Path) -> Iterator[PeregrineServer]:
    """One server for the read-only tests of a session (they must not load or unload models)."""
    s = PeregrineServer(ServerConfig(model_repository=repo, grpc_port=0, http_port=0))
    s.start()
    yield s
    s.stop(grace=1.0)


@pytest.fixture(scope="session")
def url(server: PeregrineServer) -> str:
    return f"127.0.0.1:{server.port}"
