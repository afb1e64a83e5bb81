"""Servers with their HTTP port open for the HTTP tests: over a small repository, and over the bundled
models' detection pipeline."""

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


MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(scope="module")
def detect_server() -> Iterator[PeregrineServer]:
    """A server of the bundled repository's yolov8n_detect pipeline (skipped before `make models`)."""
    if not (MODELS / "yolov8n" / "1" / "model.onnx").exists():
        pytest.skip("the bundled models are not built (peregrine-build-models)")
    server = PeregrineServer(ServerConfig(model_repository=MODELS, grpc_port=0, http_port=0,
                                          model_control_mode="explicit", load_models=["yolov8n_detect"]))
    server.start()
    yield server
    server.stop(grace=1.0)
