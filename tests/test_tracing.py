"""Triton's trace extension: TraceSetting over tritonclient, sampled request timelines in Triton's JSON
trace format, per-model overrides, and bad settings refused with the key named."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from peregrine.server.app import PeregrineServer
from peregrine.server.observability.tracing import Tracer
from support import onnx_models
from tritonclient.utils import InferenceServerException

ORDER = ["REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START",
         "COMPUTE_END", "REQUEST_END"]


def _repo(root: Path) -> Path:
    onnx_models.write(root, "identity_fp32", onnx_models.identity("FP32", ["N", None]))
    onnx_models.write(root, "simple", onnx_models.add_sub(["N", 16]), "max_batch_size = 8\n")
    return root


def _infer(client: tc.InferenceServerClient, n: int, model: str = "identity_fp32") -> None:
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    for i in range(n):
        inp = tc.InferInput("INPUT0", [1, 4], "FP32")
        inp.set_data_from_numpy(x)
        client.infer(model, [inp], request_id=f"r{i}")


def _settings(response: object) -> dict[str, list[str]]:
    return {k: list(v.value) for k, v in response.settings.items()}  # type: ignore[attr-defined]


def test_traces_are_sampled_and_written_in_triton_format(tmp_path: Path,
                                                         start_server: Callable[..., PeregrineServer]) -> None:
    trace_file = tmp_path / "trace.json"
    server = start_server(_repo(tmp_path / "models"), trace_file=trace_file, trace_level="TIMESTAMPS",
                          trace_rate=2)
    client = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert "trace" in client.get_server_metadata().extensions
    _infer(client, 6)
    server.stop(grace=1.0)  # log_frequency 0: the file is written at shutdown
    traces = json.loads(trace_file.read_text())
    assert len(traces) == 3  # every second request
    assert [t["request_id"] for t in traces] == ["r1", "r3", "r5"]
    for t in traces:
        assert t["model_name"] == "identity_fp32" and t["model_version"] == 1
        names = [s["name"] for s in t["timestamps"]]
        assert names == ORDER
        ns = [s["ns"] for s in t["timestamps"]]
        assert ns == sorted(ns) and ns[-1] - ns[0] < 10**10  # in order, on one clock, within 10 s
    assert len({t["id"] for t in traces}) == 3


def test_trace_setting_api_global_and_per_model(tmp_path: Path, start_server: Callable[..., PeregrineServer]) -> None:
    trace_file = tmp_path / "trace.json"
    server = start_server(_repo(tmp_path / "models"), trace_file=trace_file)
    client = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
    got = _settings(client.get_trace_settings())
    assert got == {"trace_file": [str(trace_file)], "trace_level": ["OFF"], "trace_rate": ["1000"],
                   "trace_count": ["-1"], "log_frequency": ["0"]}
    # A model turns tracing on for itself only, every request, at most 2 traces, one file per trace.
    got = _settings(client.update_trace_settings("simple", {"trace_level": ["TIMESTAMPS"], "trace_rate": "1",
                                                            "trace_count": "2", "log_frequency": "1"}))
    assert got["trace_level"] == ["TIMESTAMPS"] and got["trace_count"] == ["2"]
    assert _settings(client.get_trace_settings())["trace_level"] == ["OFF"]  # global unchanged
    _infer(client, 3)  # identity_fp32: not traced
    a = np.ones((1, 16), np.int32)
    for _ in range(4):
        inputs = [tc.InferInput("INPUT0", [1, 16], "INT32"), tc.InferInput("INPUT1", [1, 16], "INT32")]
        for i in inputs:
            i.set_data_from_numpy(a)
        client.infer("simple", inputs)
    files = sorted(tmp_path.glob("trace.json.*"))
    assert [f.name for f in files] == ["trace.json.0", "trace.json.1"]  # trace_count 2 of 4 requests
    for f in files:
        [trace] = json.loads(f.read_text())
        assert trace["model_name"] == "simple" and [s["name"] for s in trace["timestamps"]] == ORDER
    # An empty value clears the model's override: it follows the global setting again.
    got = _settings(client.update_trace_settings("simple", {"trace_level": []}))
    assert got["trace_level"] == ["OFF"] and got["trace_count"] == ["2"]


@pytest.mark.parametrize(("settings", "words"), [
    ({"trace_level": ["TENSORS"]}, ["trace_level", "TENSORS is not supported"]),
    ({"trace_level": ["OFF", "TIMESTAMPS"]}, ["trace_level"]),
    ({"trace_rate": "0"}, ["trace_rate", ">= 1"]),
    ({"trace_rate": "often"}, ["trace_rate", "integer", "often"]),
    ({"trace_count": "-2"}, ["trace_count", ">= -1"]),
    ({"log_frequency": "-1"}, ["log_frequency"]),
    ({"trace_file": "/somewhere/else.json"}, ["trace_file", "--trace-file"]),
    ({"trace_colour": "red"}, ["trace_colour", "unknown trace setting"]),
])
def test_bad_trace_settings_are_invalid_argument(tmp_path: Path, start_server: Callable[..., PeregrineServer],
                                                 settings: dict[str, object], words: list[str]) -> None:
    server = start_server(_repo(tmp_path / "models"), trace_file=tmp_path / "t.json")
    client = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
    with pytest.raises(InferenceServerException) as e:
        client.update_trace_settings(settings=settings)
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    for word in words:
        assert word in e.value.message()
    assert _settings(client.get_trace_settings())["trace_level"] == ["OFF"]  # nothing applied
    with pytest.raises(InferenceServerException) as e:
        client.get_trace_settings(model_name="no_such_model")
    assert e.value.status() == str(grpc.StatusCode.NOT_FOUND)


def test_start_up_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="trace_rate"):
        Tracer(Path("t.json"), "TIMESTAMPS", rate=0)
    tracer = Tracer(None, "TIMESTAMPS", rate=1)
    assert tracer.start("m") is None  # no file: nothing is traced


def test_detection_calls_are_traced(tmp_path: Path, start_server: Callable[..., PeregrineServer]) -> None:
    """Detect and DetectStream frames of a detection pipeline get the same timelines."""
    from peregrine.modelgen import yolov5_detector
    from peregrine.proto import detection_pb2 as det
    from peregrine.proto import detection_pb2_grpc as det_grpc

    root = tmp_path / "models"
    onnx_models.write(root, "v5", yolov5_detector(0, imgsz=160), "max_batch_size = 4\n")
    (root / "det").mkdir()
    (root / "det" / "config.toml").write_text('platform = "peregrine_detection"\nmax_batch_size = 4\n\n'
                                               '[detection]\ndetector = "v5"\n')
    trace_file = tmp_path / "trace.json"
    server = start_server(root, trace_file=trace_file, trace_level="TIMESTAMPS", trace_rate=1)
    frame = np.full((90, 120, 3), 100, np.uint8)
    image = det.Image(raw=det.RawImage(height=90, width=120, channels=3, data=frame.tobytes()))
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = det_grpc.DetectionServiceStub(channel)
        stub.Detect(det.DetectRequest(model_name="det", images=[image], id="unary"), timeout=30)
        frames = [det.StreamFrame(model_name="det", sequence=i, image=image) for i in (1, 2)]
        assert len(list(stub.DetectStream(iter(frames), timeout=30))) == 2
    server.stop(grace=1.0)
    traces = json.loads(trace_file.read_text())
    assert len(traces) == 3 and {t["model_name"] for t in traces} == {"det"}
    assert traces[0]["request_id"] == "unary"
    for t in traces:
        assert [s["name"] for s in t["timestamps"]] == ORDER


def test_tracing_cannot_be_turned_on_without_a_trace_file(tmp_path: Path,
                                                          start_server: Callable[..., PeregrineServer]) -> None:
    server = start_server(_repo(tmp_path / "models"))
    client = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
    with pytest.raises(InferenceServerException) as e:
        client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]})
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and "--trace-file" in e.value.message()
    assert _settings(client.update_trace_settings(settings={"trace_rate": "10"}))["trace_rate"] == ["10"]
