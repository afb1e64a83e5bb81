"""A server with its HTTP port open, over a small repository, for the HTTP tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from peregrine.server.app import PeregrineServer
from peregrine.server.config import ServerConfig
from support import onnx_models


@pytest.fixture(scope="package")
def http_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("http_models")
    for dt in ("FP32", "INT32", "BYTES"):
        onnx_models.write(root, f"identity_{dt.lower()}", onnx_models.identity(dt, ["N", None]))
    onnx_models.write(root, "simple", onnx_models.add_sub(["N", 16]), "max_batch_size = 8\n")
    return root


@pytest.fixture(scope="package")
def http_server(http_repo: Path) -> Iterator[PeregrineServer]:
    server = PeregrineServer(ServerConfig(model_repository=http_repo, grpc_port=0, http_port=0))
    server.start()
    yield server
    server.stop(grace=1.0)
