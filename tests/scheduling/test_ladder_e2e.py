"""The SLO ladder through a real server: a request whose deadline its model cannot meet is answered by the
rung below that can, and the answer says which (OIP parameter ``variant``, Detect's ``variant`` field)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from peregrine.proto import detection_pb2 as det
from peregrine.proto import detection_pb2_grpc as det_grpc
from peregrine.proto import grpc_service_pb2 as pb
from peregrine.proto import grpc_service_pb2_grpc as pb_grpc
from peregrine.server.app import PeregrineServer
from peregrine.server.config.model import ModelConfig
from pydantic import ValidationError
from support import jobs, onnx_models

pytestmark = pytest.mark.slow
WIDTH = 1024
ONE_THREAD = "[onnxruntime]\nintra_op_num_threads = 1\n"


@pytest.fixture(scope="module")
def ladder_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``heavy`` (a 1024-deep MatMul chain) with ``light`` (1 deep, same inputs) as its rung; ``cam`` (a detector
    at 1280 x 1280) with ``cam_small`` (the same detector at 128 x 128) as its rung: the rungs cost a
    hundredth of their tops, so a deadline between the two holds on a loaded machine. Each chain step halves
    its input, so an answer tells which model made it."""
    from peregrine.modelgen import yolov8_detector

    root = tmp_path_factory.mktemp("ladder")
    batching = "max_batch_size = 8\n"
    onnx_models.write(root, "heavy", onnx_models.matmul_chain(WIDTH, 1024),
                      batching + '[ladder]\nrungs = ["light", "absent"]\n' + ONE_THREAD)
    onnx_models.write(root, "light", onnx_models.matmul_chain(WIDTH, 1), batching + ONE_THREAD)
    onnx_models.write(root, "big", yolov8_detector(0, imgsz=1280), batching + "warmup = false\n" + ONE_THREAD)
    onnx_models.write(root, "small", yolov8_detector(0, imgsz=128), batching + ONE_THREAD)
    for name, detector, ladder in (("cam", "big", '[ladder]\nrungs = ["cam_small"]\n'), ("cam_small", "small", "")):
        (root / name).mkdir()
        (root / name / "config.toml").write_text(f'platform = "peregrine_detection"\nmax_batch_size = 8\n'
                                                 f'warmup = false\n{ladder}[detection]\ndetector = "{detector}"\n')
    return root


@pytest.fixture(scope="module")
def server(ladder_repo: Path) -> PeregrineServer:
    from peregrine.server.config.server import ServerConfig

    s = PeregrineServer(ServerConfig(model_repository=ladder_repo, grpc_port=0, http_port=None))
    s.start()
    yield s
    s.stop(grace=1.0)


def _seconds(call: Callable[[], object], n: int = 3) -> float:
    times = []
    for _ in range(n):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def _infer(stub: pb_grpc.GRPCInferenceServiceStub, model: str, timeout: float | None = None
           ) -> pb.ModelInferResponse:
    x = np.ones((1, WIDTH), np.float32)
    request = pb.ModelInferRequest(model_name=model, raw_input_contents=[x.tobytes()])
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, WIDTH])
    return stub.ModelInfer(request, timeout=timeout)


def test_a_deadline_the_model_cannot_meet_is_answered_by_the_rung_that_can(server: PeregrineServer) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
    top = _seconds(lambda: _infer(stub, "heavy"))
    rung = _seconds(lambda: _infer(stub, "light"))  # its cost is learned by its own batcher
    assert top > 10 * rung, (top, rung)  # the models make the gap; the deadline below falls in it
    deadline = top / 3

    plain = _infer(stub, "heavy")
    assert plain.parameters["variant"].string_param == "heavy"
    assert np.frombuffer(plain.raw_output_contents[0], np.float32)[0] < 1e-30  # 0.5 ** 1024: the heavy chain ran

    for _ in range(3):
        hurried = _infer(stub, "heavy", timeout=deadline)
        assert hurried.model_name == "heavy"  # the model the client named answers, by its rung
        assert hurried.parameters["variant"].string_param == "light"
        assert np.frombuffer(hurried.raw_output_contents[0], np.float32)[0] == 0.5

    relaxed = _infer(stub, "heavy", timeout=30.0)
    assert relaxed.parameters["variant"].string_param == "heavy"
    # A model without a ladder says nothing of variants.
    assert "variant" not in _infer(stub, "light").parameters


def test_detect_and_detect_stream_say_which_variant_answered(server: PeregrineServer) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = det_grpc.DetectionServiceStub(channel)
    photo = det.Image(encoded=jobs.photo("chelsea"))

    def detect(model: str, timeout: float | None = None) -> det.DetectResponse:
        return stub.Detect(det.DetectRequest(model_name=model, images=[photo]), timeout=timeout)

    top = _seconds(lambda: detect("cam"))
    rung = _seconds(lambda: detect("cam_small"))
    assert top > 10 * rung, (top, rung)
    deadline = top / 3

    assert detect("cam").variant == "cam"
    assert detect("cam_small").variant == ""
    hurried = detect("cam", timeout=deadline)
    assert (hurried.model_name, hurried.variant) == ("cam", "cam_small")
    alone = detect("cam_small")
    assert [(b.x1, b.y1, b.x2, b.y2, b.class_id) for b in hurried.results[0].boxes] == \
        [(b.x1, b.y1, b.x2, b.y2, b.class_id) for b in alone.results[0].boxes]
    assert detect("cam", timeout=30.0).variant == "cam"

    # A stream's frames: each with its own deadline from arrival.
    frames = [det.StreamFrame(model_name="cam", sequence=1, image=photo),  # no deadline: the top
              det.StreamFrame(model_name="cam", sequence=2, image=photo, deadline_us=int(deadline * 1e6))]
    results = []
    for frame in frames:  # one at a time: the second frame's deadline must not include the first's run
        results.extend(stub.DetectStream(iter([frame]), timeout=30.0))
    assert [(r.sequence, r.status, r.variant) for r in results] == [(1, det.StreamResult.OK, "cam"),
                                                                    (2, det.StreamResult.OK, "cam_small")]


def test_requests_past_their_deadline_are_counted_against_the_rung_they_were_routed_to(
        server: PeregrineServer) -> None:
    """A deadline neither rung can meet: the client sees DEADLINE_EXCEEDED (gRPC cancels the call on the
    server), and the server counts each such request, as its metrics say, against the rung it went to."""
    from prometheus_client.parser import text_string_to_metric_families

    def misses() -> dict[str, float]:
        text = server.metrics.exposition()[0].decode()
        return {s.labels["variant"]: s.value for f in text_string_to_metric_families(text)
                for s in f.samples if s.name == "peregrine_ladder_deadline_misses_total" and s.labels["model"] == "cam"}

    stub = det_grpc.DetectionServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
    request = det.DetectRequest(model_name="cam", images=[det.Image(encoded=jobs.photo("astronaut"))])
    rung = _seconds(lambda: stub.Detect(det.DetectRequest(model_name="cam_small", images=request.images)))
    before = misses()
    failed = 0
    for _ in range(4):
        try:
            stub.Detect(request, timeout=rung / 4)  # decoding alone takes longer
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            failed += 1
    assert failed
    deadline = time.monotonic() + 3  # the server closes each call a moment after its client gave up
    while sum(misses().values()) - sum(before.values()) < failed and time.monotonic() < deadline:
        time.sleep(0.05)
    after = misses()
    # Each is counted once, against a rung; one whose deadline passed before it was routed (on a loaded
    # machine, still being read) has no rung to count it against.
    assert 1 <= sum(after.values()) - sum(before.values()) <= failed
    assert set(after) <= {"cam", "cam_small"}


def test_a_ladder_names_each_rung_once_and_at_most_eight() -> None:
    with pytest.raises(ValidationError, match="each rung once"):
        ModelConfig.model_validate({"ladder": {"rungs": ["a", "a"]}})
    with pytest.raises(ValidationError, match="at most 8"):
        ModelConfig.model_validate({"ladder": {"rungs": [f"m{i}" for i in range(9)]}})
    with pytest.raises(ValidationError, match="no '/'"):
        ModelConfig.model_validate({"ladder": {"rungs": ["../x"]}})
    assert ModelConfig.model_validate({"ladder": {"rungs": ["fp16", "int8"]}}).ladder.headroom == 0.2
