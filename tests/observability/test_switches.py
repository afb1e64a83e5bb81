"""Observability switched at run time over ``/v1/observability`` on a real server (issue 19): each part stops and
starts recording exactly when switched, a bad body changes nothing, and a part the server was started
without cannot be turned on."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from peregrine.proto import detection_pb2 as det
from peregrine.proto import detection_pb2_grpc as det_grpc
from peregrine.server.app import PeregrineServer
from prometheus_client.parser import text_string_to_metric_families
from support import jobs

pytest.importorskip("opentelemetry.sdk.trace", reason="the otel extra (opentelemetry-sdk) is not installed")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

pytestmark = pytest.mark.timeout(180)
SAMPLED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _call(server: PeregrineServer, body: dict[str, Any] | None = None,
          token: str | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}/v1/observability",
                                     data=None if body is None else json.dumps(body).encode())
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def _counts(server: PeregrineServer) -> dict[str, float]:
    """What each part has recorded for model ``cam`` so far."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10).read().decode()
    wanted = {"peregrine_request_duration_seconds_count": "requests", "peregrine_drift_frames_sampled_total": "drift",
              "nv_inference_request_success_total": "statistics"}
    counts = dict.fromkeys(wanted.values(), 0.0)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in wanted and s.labels.get("model") == "cam" and s.labels.get("status", "OK") == "OK":
                counts[wanted[s.name]] += s.value
    return counts


@pytest.fixture
def switched(tmp_path: Path, start_server: Callable[..., PeregrineServer]) -> tuple[PeregrineServer, Any]:
    repo = jobs.repository(tmp_path / "models")
    server = start_server(repo, http_port=0, drift_sample_rate=1.0, drift_window=50, otel_exporter="console",
                          otel_sample_ratio=1.0)
    tracing = server.dataplane.otel
    assert tracing is not None
    tracing.processor.shutdown()  # the console exporter's: spans go to memory instead
    exporter = InMemorySpanExporter()
    tracing.processor = SimpleSpanProcessor(exporter)
    return server, exporter


def _detect(server: PeregrineServer, n: int, traceparent: str | None = None) -> None:
    stub = det_grpc.DetectionServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
    metadata = (("traceparent", traceparent),) if traceparent else None
    for _ in range(n):
        stub.Detect(det.DetectRequest(model_name="cam", images=[det.Image(encoded=jobs.photo("coffee"))]),
                    metadata=metadata, timeout=30)
    assert server.drift is not None
    server.drift.flush()


def _moved(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in before}


def test_each_part_records_exactly_while_it_is_switched_on(switched: Any) -> None:
    server, exporter = switched
    assert _call(server) == (200, {"metrics": True, "drift_sample_rate": 1.0, "otel": True, "otel_sample_ratio": 1.0})

    before = _counts(server)
    _detect(server, 3)
    assert _moved(before, _counts(server)) == {"requests": 3, "drift": 3, "statistics": 3}
    assert len([s for s in exporter.get_finished_spans() if s.name == "Detect"]) == 3

    off = {"metrics": False, "drift_sample_rate": 0, "otel": False}
    assert _call(server, off) == (200, {**off, "drift_sample_rate": 0.0, "otel_sample_ratio": 1.0})
    before = _counts(server)
    _detect(server, 3, SAMPLED)  # even a client's sampled trace is not followed while tracing is off
    assert _moved(before, _counts(server)) == {"requests": 0, "drift": 0, "statistics": 3}
    assert len([s for s in exporter.get_finished_spans() if s.name == "Detect"]) == 3

    on = {"metrics": True, "drift_sample_rate": 0.5, "otel": True, "otel_sample_ratio": 0}
    assert _call(server, on) == (200, {**on, "otel_sample_ratio": 0.0})
    assert server.drift.settings.sample_rate == 0.5
    assert _call(server, {"drift_sample_rate": 1})[1]["drift_sample_rate"] == 1.0
    before = _counts(server)
    _detect(server, 2)  # ratio 0: not traced
    _detect(server, 1, SAMPLED)  # the client's sampled flag is followed
    assert _moved(before, _counts(server)) == {"requests": 3, "drift": 3, "statistics": 3}
    roots = [s for s in exporter.get_finished_spans() if s.name == "Detect"]
    assert len(roots) == 4 and format(roots[-1].context.trace_id, "032x") == SAMPLED[3:35]


@pytest.mark.parametrize(("body", "names"), [
    ({"metrics": "yes"}, ["metrics", "true or false", "'yes'"]),
    ({"otel": 1}, ["otel", "true or false"]),
    ({"drift_sample_rate": 1.5}, ["drift_sample_rate", "0 to 1", "1.5"]),
    ({"otel_sample_ratio": True}, ["otel_sample_ratio", "0 to 1"]),
    ({"otel_sample_ratio": "NaN"}, ["otel_sample_ratio", "0 to 1"]),
    ({"metrics": False, "sampling": 0.1}, ["sampling", "unknown observability setting", "metrics"]),
    ({"metrics": False, "otel": None}, ["otel", "true or false"]),
])
def test_a_bad_body_is_refused_naming_the_key_and_changes_nothing(switched: Any, body: dict[str, Any],
                                                                   names: list[str]) -> None:
    server, _ = switched
    status, answer = _call(server, body)
    assert status == 400
    for name in names:
        assert name in answer["error"]
    assert _call(server)[1]["metrics"] is True  # all or nothing: metrics stayed on


def test_a_part_the_server_started_without_cannot_be_turned_on(tmp_path: Path,
                                                               start_server: Callable[..., PeregrineServer]) -> None:
    server = start_server(jobs.repository(tmp_path / "models"), http_port=0, allow_metrics=False)
    assert _call(server) == (200, {"metrics": False, "drift_sample_rate": 0.0, "otel": False, "otel_sample_ratio": 0.0})
    for body, flag in (({"otel": True}, "--otel-exporter off"), ({"otel_sample_ratio": 0.5}, "--otel-exporter off"),
                       ({"drift_sample_rate": 0.1}, "--drift-sample-rate"), ({"metrics": True}, "--allow-metrics")):
        status, answer = _call(server, body)
        assert status == 400 and flag in answer["error"] and next(iter(body)) in answer["error"]
    # Switching off what is off is no change, and allowed.
    assert _call(server, {"otel": False, "drift_sample_rate": 0, "metrics": False})[0] == 200
    _detect_plain(server)


def _detect_plain(server: PeregrineServer) -> None:
    stub = det_grpc.DetectionServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
    answer = stub.Detect(det.DetectRequest(model_name="cam", images=[det.Image(encoded=jobs.photo("coffee"))]),
                         timeout=30)
    assert len(answer.results) == 1


def test_the_switches_are_guarded_by_their_own_token_category(tmp_path: Path,
                                                              start_server: Callable[..., PeregrineServer]) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("ops-token\ncamera-7 inference,metadata\nobserver observability\n")
    server = start_server(jobs.repository(tmp_path / "models"), http_port=0, auth_token_file=tokens)
    assert _call(server)[0] == 401
    status, answer = _call(server, {"metrics": False}, token="camera-7")
    assert status == 403 and "observability" in answer["error"]
    assert _call(server, {"metrics": False}, token="observer") == (
        200, {"metrics": False, "drift_sample_rate": 0.0, "otel": False, "otel_sample_ratio": 0.0})
    assert _call(server, token="ops-token")[1]["metrics"] is False
