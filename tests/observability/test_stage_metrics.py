"""Per-stage latency histograms (``peregrine_pipeline_stage_seconds{model, version, stage}``, issue 19): a real
server on loopback answers N requests over gRPC and over REST, unary and streamed, for a tensor model
(identity) and the bundled detection pipeline (``Detect``, ``/v1/detect`` and ``ModelInfer`` on it); each
stage's count moves by exactly N for the model version that answered, the stages of a request fit in its
total, and the buckets resolve 0.5 to 100 ms."""

from __future__ import annotations

import base64
import itertools
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from peregrine.proto import detection_pb2 as det
from peregrine.proto import detection_pb2_grpc as det_grpc
from peregrine.proto import grpc_service_pb2 as pb
from peregrine.proto import grpc_service_pb2_grpc as pb_grpc
from peregrine.server.app import PeregrineServer
from peregrine.server.config import ServerConfig
from peregrine.server.observability.request_histograms import STAGE_BUCKETS as BUCKETS
from prometheus_client.parser import text_string_to_metric_families
from skimage import data
from support import onnx_models

pytestmark = pytest.mark.timeout(300)

MODELS = Path(__file__).resolve().parents[2] / "models"
FAMILY = "peregrine_pipeline_stage_seconds"
N = 5
TENSOR_STAGES = ("transport_decode", "queue", "pre", "infer", "post", "transport_encode", "total")
FRAME_STAGES = ("transport_decode", "decode", "queue", "pre", "infer", "post", "transport_encode", "total")
PIPELINE = "yolov8n_detect"


# -- a served repository: the bundled identity model and detection pipeline --------------------------------
@pytest.fixture(scope="module")
def server() -> Iterator[PeregrineServer]:
    if not (MODELS / "yolov8n" / "1" / "model.onnx").exists():
        pytest.skip("the bundled models are not built (peregrine-build-models)")
    s = PeregrineServer(ServerConfig(model_repository=MODELS, grpc_port=0, http_port=0, model_control_mode="explicit",
                                     load_models=["identity_fp32", PIPELINE]))
    s.start()
    yield s
    s.stop(grace=1.0)


@pytest.fixture(scope="module")
def channel(server: PeregrineServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    assert ok
    return encoded.tobytes()


class Stages:
    """One scrape of the family: ``count(model, stage)`` and ``sum(model, stage)`` of version 1, and the
    bucket bounds served."""

    def __init__(self, server: PeregrineServer) -> None:
        url = f"http://127.0.0.1:{server.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            families = {f.name: f for f in text_string_to_metric_families(answer.read().decode())}
        family = families[FAMILY]
        assert family.type == "histogram"
        self.samples = family.samples

    def _value(self, suffix: str, model: str, stage: str, version: str = "1") -> float:
        want = {"model": model, "version": version, "stage": stage}
        found = [s.value for s in self.samples if s.name == FAMILY + suffix and s.labels == want]
        assert len(found) <= 1
        return found[0] if found else 0.0

    def count(self, model: str, stage: str) -> float:
        return self._value("_count", model, stage)

    def sum(self, model: str, stage: str) -> float:
        return self._value("_sum", model, stage)

    def bounds(self, model: str, stage: str) -> list[float]:
        return [float(s.labels["le"]) for s in self.samples if s.name == FAMILY + "_bucket"
                and s.labels["model"] == model and s.labels["stage"] == stage]


def moved(before: Stages, after: Stages, model: str, stages: tuple[str, ...]) -> dict[str, float]:
    """How much each of ``stages``' counts moved between two scrapes."""
    return {stage: after.count(model, stage) - before.count(model, stage) for stage in stages}


def assert_fits_in_total(before: Stages, after: Stages, model: str, stages: tuple[str, ...]) -> None:
    """Requests made one after the other: their stages follow each other inside the request, so their
    time adds up to no more than the total."""
    spent = {stage: after.sum(model, stage) - before.sum(model, stage) for stage in stages}
    parts = sum(v for k, v in spent.items() if k != "total")
    # A lone request that runs at once spends 0 in the queue; the transport's work and the model's are never 0.
    assert all(spent[k] > 0 for k in ("transport_decode", "infer", "transport_encode", "total")), spent
    assert parts <= spent["total"], spent


# -- requests ------------------------------------------------------------------------------------------
def identity_request(i: int) -> pb.ModelInferRequest:
    x = np.full((1, 16), i, np.float32)
    return pb.ModelInferRequest(model_name="identity_fp32", id=str(i), raw_input_contents=[x.tobytes()],
                                inputs=[pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="FP32",
                                                                              shape=[1, 16])])


def post(server: PeregrineServer, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{server.http_port}{path}", data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as answer:
        assert answer.status == 200
        return json.loads(answer.read())


# -- the tensor model ----------------------------------------------------------------------------------
def test_model_infer_over_grpc_moves_each_stage_by_one_per_request(server: PeregrineServer,
                                                                   channel: grpc.Channel) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    wrong = pb.ModelInferRequest(model_name="identity_fp32", raw_input_contents=[b"\0" * 64], inputs=[
        pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="INT32", shape=[1, 16])])
    before = Stages(server)
    for i in range(N):
        assert stub.ModelInfer(identity_request(i), timeout=30).model_name == "identity_fp32"
    with pytest.raises(grpc.RpcError) as failed:  # a failed request is no stage's
        stub.ModelInfer(wrong, timeout=30)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = Stages(server)
    assert moved(before, after, "identity_fp32", TENSOR_STAGES) == dict.fromkeys(TENSOR_STAGES, N)
    assert after.count("identity_fp32", "decode") == 0  # a tensor model decodes no image
    assert_fits_in_total(before, after, "identity_fp32", TENSOR_STAGES)


def test_model_infer_over_rest_moves_each_stage_by_one_per_request(server: PeregrineServer) -> None:
    before = Stages(server)
    for i in range(N):
        body = {"id": str(i), "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16],
                                          "data": [float(i)] * 16}]}
        assert post(server, "/v2/models/identity_fp32/infer", body)["model_name"] == "identity_fp32"
    after = Stages(server)
    assert moved(before, after, "identity_fp32", TENSOR_STAGES) == dict.fromkeys(TENSOR_STAGES, N)
    assert_fits_in_total(before, after, "identity_fp32", TENSOR_STAGES)


def test_model_stream_infer_moves_each_stage_by_one_per_message(server: PeregrineServer,
                                                                channel: grpc.Channel) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    before = Stages(server)
    answers = list(stub.ModelStreamInfer(iter([identity_request(i) for i in range(N)]), timeout=30))
    assert len(answers) == N and not any(a.error_message for a in answers)
    after = Stages(server)
    assert moved(before, after, "identity_fp32", TENSOR_STAGES) == dict.fromkeys(TENSOR_STAGES, N)


# -- the detection pipeline ----------------------------------------------------------------------------
def test_detect_over_grpc_moves_each_stage_by_one_per_request(server: PeregrineServer, channel: grpc.Channel,
                                                              jpeg: bytes) -> None:
    stub = det_grpc.DetectionServiceStub(channel)
    before = Stages(server)
    for _ in range(N):
        answer = stub.Detect(det.DetectRequest(model_name=PIPELINE, images=[det.Image(encoded=jpeg)]), timeout=60)
        assert answer.model_name == PIPELINE
    after = Stages(server)
    assert moved(before, after, PIPELINE, FRAME_STAGES) == dict.fromkeys(FRAME_STAGES, N)
    assert_fits_in_total(before, after, PIPELINE, FRAME_STAGES)


def test_detect_over_rest_moves_each_stage_by_one_per_request(server: PeregrineServer, jpeg: bytes) -> None:
    before = Stages(server)
    for _ in range(N):
        answer = post(server, "/v1/detect", {"model_name": PIPELINE, "images": [base64.b64encode(jpeg).decode()]})
        assert answer["model_name"] == PIPELINE
    after = Stages(server)
    assert moved(before, after, PIPELINE, FRAME_STAGES) == dict.fromkeys(FRAME_STAGES, N)
    assert_fits_in_total(before, after, PIPELINE, FRAME_STAGES)


def test_model_infer_on_the_pipeline_moves_each_stage_by_one_per_request(server: PeregrineServer,
                                                                         channel: grpc.Channel,
                                                                         jpeg: bytes) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    encoded = len(jpeg).to_bytes(4, "little") + jpeg  # OIP's BYTES: a 4-byte length, then the bytes
    request = pb.ModelInferRequest(model_name=PIPELINE, raw_input_contents=[encoded], inputs=[
        pb.ModelInferRequest.InferInputTensor(name="ENCODED", datatype="BYTES", shape=[1, 1])])
    before = Stages(server)
    for _ in range(N):
        assert [o.name for o in stub.ModelInfer(request, timeout=60).outputs] == ["DETECTIONS", "COUNTS"]
    after = Stages(server)
    assert moved(before, after, PIPELINE, FRAME_STAGES) == dict.fromkeys(FRAME_STAGES, N)
    assert_fits_in_total(before, after, PIPELINE, FRAME_STAGES)


def test_detect_stream_moves_each_stage_by_one_per_answered_frame(server: PeregrineServer, channel: grpc.Channel,
                                                                  jpeg: bytes) -> None:
    stub = det_grpc.DetectionServiceStub(channel)
    frames = [det.StreamFrame(model_name=PIPELINE if i == 0 else "", sequence=i, image=det.Image(encoded=jpeg))
              for i in range(N)]
    before = Stages(server)
    results = list(stub.DetectStream(iter(frames), timeout=60))
    answered = sum(r.status == det.StreamResult.OK for r in results)
    assert len(results) == N and answered >= 1  # latest frame wins: a frame that waited may be dropped
    after = Stages(server)
    assert moved(before, after, PIPELINE, FRAME_STAGES) == dict.fromkeys(FRAME_STAGES, answered)


# -- what is not a request's stage, and the buckets ----------------------------------------------------
def test_the_buckets_resolve_half_a_millisecond_to_100_ms(server: PeregrineServer, channel: grpc.Channel) -> None:
    pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(identity_request(0), timeout=30)
    served = Stages(server).bounds("identity_fp32", "total")
    assert served[:-1] == list(BUCKETS) and served[-1] == float("inf")
    inside = [b for b in BUCKETS if 0.0005 <= b <= 0.1]
    assert inside[0] == 0.0005 and inside[-1] == 0.1
    assert max(hi / lo for lo, hi in itertools.pairwise(inside)) <= 1.5  # a p99 read within a 1.5x bucket


def test_answers_from_the_response_cache_have_no_queue_or_batch(tmp_path: Path) -> None:
    onnx_models.write(tmp_path, "cached", onnx_models.identity("FP32", ["N", 4]),
                      "max_batch_size = 4\nresponse_cache = true\n")
    server = PeregrineServer(ServerConfig(model_repository=tmp_path, grpc_port=0, http_port=0))
    server.start()
    try:
        request = pb.ModelInferRequest(model_name="cached", raw_input_contents=[np.ones((1, 4), np.float32).tobytes()],
                                       inputs=[pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="FP32",
                                                                                     shape=[1, 4])])
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = pb_grpc.GRPCInferenceServiceStub(ch)
            for _ in range(N):  # the first runs the model, the others are answered from the cache
                stub.ModelInfer(request, timeout=30)
        after = Stages(server)
    finally:
        server.stop(grace=1.0)
    assert {stage: after.count("cached", stage) for stage in TENSOR_STAGES} == {
        "transport_decode": N, "queue": 1, "pre": 1, "infer": 1, "post": 1, "transport_encode": N, "total": N}


def test_with_metrics_off_nothing_is_recorded(tmp_path: Path) -> None:
    onnx_models.write(tmp_path, "id", onnx_models.identity("FP32", ["N", 16]), "max_batch_size = 4\n")
    server = PeregrineServer(ServerConfig(model_repository=tmp_path, grpc_port=0, http_port=0, allow_metrics=False))
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            request = identity_request(1)
            request.model_name = "id"
            pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(request, timeout=30)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10)
        assert refused.value.code == 404
        # Not served, and not paid for: the request left no sample behind (read in the server's process).
        assert [s for family in server.metrics.requests.collect() for s in family.samples] == []
    finally:
        server.stop(grace=1.0)
