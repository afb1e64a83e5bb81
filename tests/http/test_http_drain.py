"""Shutdown drains the HTTP port as it does gRPC: the listening socket closes, a request already running
is answered, and then the server stops."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from peregrine.server.app import PeregrineServer
from peregrine.server.config import ServerConfig
from support import onnx_models

pytestmark = pytest.mark.timeout(60)


def test_stop_finishes_running_requests_and_refuses_new_ones(tmp_path: Path) -> None:
    # A batching window of 1.5 s keeps a lone request in the queue while the server stops.
    onnx_models.write(tmp_path, "slow", onnx_models.identity("FP32", ["N", 4]),
                      "max_batch_size = 8\n[dynamic_batching]\nmax_queue_delay_us = 1500000\n"
                      "preferred_batch_sizes = [8]\n")
    server = PeregrineServer(ServerConfig(model_repository=tmp_path, grpc_port=0, http_port=0))
    server.start()
    port = server.http_port
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=30)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    inp = httpclient.InferInput("INPUT0", [1, 4], "FP32")
    inp.set_data_from_numpy(x)
    results: list[object] = []
    thread = threading.Thread(target=lambda: results.append(client.infer("slow", [inp])))
    started = time.monotonic()
    thread.start()
    time.sleep(0.5)  # the request is queued
    stopper = threading.Thread(target=server.stop, kwargs={"grace": 10.0})
    stopper.start()
    time.sleep(0.3)
    with pytest.raises(OSError):  # the port no longer takes connections
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    thread.join(20)
    stopper.join(20)
    assert not stopper.is_alive()
    assert len(results) == 1, "the running request was not answered"
    np.testing.assert_array_equal(results[0].as_numpy("OUTPUT0"), x)  # type: ignore[attr-defined]
    assert time.monotonic() - started >= 1.0
    client.close()
