"""Instance autoscaling over a real server: a load step adds an instance, quiet takes it away."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from support import onnx_models

CONFIG = """max_batch_size = 0
[instance_group]
count = 1
device = "cpu"
[instance_group.autoscale]
min = 1
max = 2
queue_up = 1.0
queue_down = 0.1
up_after_s = 0.3
down_after_s = 1.0
cooldown_s = 0.3
interval_s = 0.2
[onnxruntime]
intra_op_num_threads = 1
"""


def load_step(model: Any, sessions: Any, call: Callable[[], None], timeout_s: float = 30) -> list[Exception]:
    """Six clients calling ``call`` until ``model`` (whose instances' sessions are ``sessions``) has a second
    instance serving, then quiet until it is back to one; the calls' failures."""
    scheduler = model.scheduler
    assert scheduler.instances == 1
    stop = threading.Event()
    failures: list[Exception] = []

    def client() -> None:
        while not stop.is_set():
            try:
                call()
            except Exception as e:
                failures.append(e)

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + timeout_s
        while scheduler.instances < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert scheduler.instances == 2, "the queue built up but no instance was added"
        assert len(sessions) == 2 and model.describe().instances == 2
        served_before = model.stats.execution_count
        time.sleep(1.0)
        assert model.stats.execution_count > served_before  # both serve
    finally:
        stop.set()
        for t in threads:
            t.join()
    deadline = time.monotonic() + timeout_s
    while scheduler.instances > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert scheduler.instances == 1 and len(sessions) == 1
    assert [(d[1], d[2]) for d in scheduler.scaler.decisions] == [(1, 2), (2, 1)], scheduler.scaler.decisions
    return failures


def test_a_load_step_adds_an_instance_and_quiet_removes_it(tmp_path: Path, start_server: Any) -> None:
    onnx_models.write(tmp_path, "slow", onnx_models.matmul_chain(), CONFIG)
    server = start_server(tmp_path)
    (model,) = server.repository.ready_models()
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    tensor = grpcclient.InferInput("INPUT0", [1, 384], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 384), np.float32))
    answered = 0

    def call() -> None:
        nonlocal answered
        assert np.allclose(c.infer("slow", [tensor]).as_numpy("OUTPUT0"), 0.5 ** 8)
        answered += 1

    failures = load_step(model, model.instances, call, timeout_s=20)
    assert not failures, failures[:3]
    assert answered > 0
    assert "queued per instance" in model.scheduler.scaler.decisions[0][3]


def test_autoscale_settings_are_checked_at_load(tmp_path: Path) -> None:
    import pytest
    from peregrine.server.config import load_model_config
    from peregrine.server.core.errors import ModelLoadError

    for bad, expected in (("count = 3\n[instance_group.autoscale]\nmin = 1\nmax = 2\n", "within autoscale"),
                          ("[instance_group.autoscale]\nmin = 3\nmax = 2\n", "must not exceed max"),
                          ("[instance_group.autoscale]\nmax = 2\nqueue_up = 1\nqueue_down = 2\n", "below queue_up")):
        (tmp_path / "config.toml").write_text("[instance_group]\n" + bad)
        with pytest.raises(ModelLoadError, match=expected):
            load_model_config(tmp_path)


def test_a_detection_pipeline_scales_its_instances_too(tmp_path: Path, start_server: Any) -> None:
    import grpc
    from peregrine.modelgen import yolov5_detector
    from peregrine.proto import detection_pb2 as det
    from peregrine.proto import detection_pb2_grpc as det_grpc
    from support import jobs

    onnx_models.write(tmp_path, "v5", yolov5_detector(0, imgsz=320), "max_batch_size = 8\n")
    (tmp_path / "cam").mkdir()
    pipeline = CONFIG.replace("max_batch_size = 0", 'platform = "peregrine_detection"\nmax_batch_size = 1')
    (tmp_path / "cam" / "config.toml").write_text(pipeline + '[detection]\ndetector = "v5"\n')
    server = start_server(tmp_path)
    model = server.repository.get("cam")
    stub = det_grpc.DetectionServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
    request = det.DetectRequest(model_name="cam", images=[det.Image(encoded=jobs.photo("coffee"))])
    boxes: set[int] = set()
    failures = load_step(model, model.detector.instances, lambda: boxes.add(
        len(stub.Detect(request, timeout=30).results[0].boxes)))
    assert not failures, failures[:3]
    assert len(boxes) == 1  # every answer the same, whichever instance ran it
