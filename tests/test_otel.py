"""OpenTelemetry tracing over a real server: spans per request and stage, continuing the client's trace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from support import onnx_models
from tritonclient.utils import InferenceServerException

otel = pytest.importorskip("opentelemetry.sdk.trace", reason="the otel extra (opentelemetry-sdk) is not installed")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from peregrine.server.observability.otel import OtelTracing, parse_traceparent  # noqa: E402

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def traced(tmp_path: Path, start_server: Any) -> tuple[Any, InMemorySpanExporter]:
    onnx_models.write(tmp_path, "ident", onnx_models.identity("FP32", ["N", None]), "max_batch_size = 8\n")
    server = start_server(tmp_path, http_port=0)
    assert server.dataplane.otel is None  # off unless configured
    exporter = InMemorySpanExporter()
    server.dataplane.otel = OtelTracing(processor=SimpleSpanProcessor(exporter))
    return server, exporter


def _tensor(module: Any) -> Any:
    t = module.InferInput("INPUT0", [1, 4], "FP32")
    t.set_data_from_numpy(np.ones((1, 4), np.float32))
    return t


def test_a_grpc_request_continues_the_clients_trace_with_a_span_per_stage(traced: Any) -> None:
    server, exporter = traced
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    client.infer("ident", [_tensor(grpcclient)], request_id="r-1", headers={"traceparent": TRACEPARENT})
    spans = exporter.get_finished_spans()
    (root,) = [s for s in spans if s.name == "ModelInfer"]
    assert format(root.context.trace_id, "032x") == TRACE_ID
    assert format(root.parent.span_id, "016x") == PARENT_ID  # the client's span is the parent
    assert root.attributes["peregrine.model"] == "ident" and root.attributes["peregrine.request_id"] == "r-1"
    assert root.attributes["rpc.grpc.status_code"] == "OK"
    children = {s.name: s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id}
    assert set(children) == {"queue", "compute_input", "compute_infer", "compute_output"}
    for child in children.values():
        assert root.start_time <= child.start_time <= child.end_time <= root.end_time + 1_000_000


def test_a_grpc_call_reads_the_metadata_its_handler_was_found_with(traced: Any, monkeypatch: Any) -> None:
    """grpc builds a call's metadata to find its handler; the call keeps that tuple (building it again at
    each invocation_metadata() cost a small model 2% of its throughput), for unary calls and streams."""
    server, exporter = traced
    plane = server.dataplane
    seen: list[Any] = []
    scope, stream = plane.scope, plane.stream
    monkeypatch.setattr(plane, "scope", lambda call, *a, **k: (seen.append(call._metadata), scope(call, *a, **k))[1])
    monkeypatch.setattr(plane, "stream", lambda call, *a, **k: (seen.append(call._metadata), stream(call, *a, **k))[1])
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    client.infer("ident", [_tensor(grpcclient)], headers={"traceparent": TRACEPARENT})
    results: list[Any] = []
    client.start_stream(callback=lambda result, error: results.append(error or result),
                        headers={"traceparent": TRACEPARENT})
    client.async_stream_infer("ident", [_tensor(grpcclient)])
    client.stop_stream()
    assert len(seen) == 2 and len(results) == 1 and not isinstance(results[0], Exception)
    for metadata in seen:  # taken before anything asked the context for it
        assert metadata is not None and ("traceparent", TRACEPARENT) in [tuple(m) for m in metadata]
    continued = [s for s in exporter.get_finished_spans() if s.name == "ModelInfer" and s.parent is not None]
    assert continued and all(format(s.context.trace_id, "032x") == TRACE_ID for s in continued)


def test_an_http_request_continues_the_trace_and_errors_are_marked(traced: Any) -> None:
    server, exporter = traced
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    client.infer("ident", [_tensor(httpclient)], headers={"traceparent": TRACEPARENT})
    bad = grpcclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    wrong = grpcclient.InferInput("INPUT0", [1, 4], "INT32")
    wrong.set_data_from_numpy(np.ones((1, 4), np.int32))
    with pytest.raises(InferenceServerException):
        bad.infer("ident", [wrong])
    roots = [s for s in exporter.get_finished_spans() if s.name == "ModelInfer"]
    assert len(roots) == 2
    assert format(roots[0].context.trace_id, "032x") == TRACE_ID
    assert roots[1].parent is None and format(roots[1].context.trace_id, "032x") != TRACE_ID  # a trace of its own
    assert roots[1].attributes["rpc.grpc.status_code"] == "INVALID_ARGUMENT"
    assert not roots[1].status.is_ok


def _server_with_ratio(traced: Any, ratio: float) -> tuple[Any, InMemorySpanExporter]:
    server, _ = traced
    exporter = InMemorySpanExporter()
    server.dataplane.otel = OtelTracing(sample_ratio=ratio, processor=SimpleSpanProcessor(exporter))
    return server, exporter


def test_sampling_follows_the_callers_flag_and_else_the_ratio(traced: Any) -> None:
    server, exporter = _server_with_ratio(traced, 0.0)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    client.infer("ident", [_tensor(grpcclient)])  # no trace context, ratio 0: not traced
    assert exporter.get_finished_spans() == ()
    # The caller sampled its trace: traced whatever the ratio, its tracestate carried on.
    client.infer("ident", [_tensor(grpcclient)], headers={"traceparent": TRACEPARENT, "tracestate": "robot=7"})
    (root,) = [s for s in exporter.get_finished_spans() if s.name == "ModelInfer"]
    assert format(root.context.trace_id, "032x") == TRACE_ID and root.context.trace_state.get("robot") == "7"
    assert root.parent.is_remote and root.context.trace_flags.sampled
    server, exporter = _server_with_ratio(traced, 1.0)
    # The caller did not sample it: not traced, even at ratio 1.
    client.infer("ident", [_tensor(grpcclient)], headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"})
    assert exporter.get_finished_spans() == ()
    # An invalid traceparent starts a trace of its own (sampled at the ratio).
    client.infer("ident", [_tensor(grpcclient)], headers={"traceparent": f"00-{'0' * 32}-{PARENT_ID}-01"})
    (root,) = [s for s in exporter.get_finished_spans() if s.name == "ModelInfer"]
    assert root.parent is None and root.context.trace_id != 0


def test_the_ratio_samples_about_that_share() -> None:
    tracing = OtelTracing(sample_ratio=0.25, processor=SimpleSpanProcessor(InMemorySpanExporter()))
    share = sum(tracing.sampled(None) for _ in range(20_000)) / 20_000
    assert 0.22 < share < 0.28


@pytest.mark.parametrize("value", [
    None, "", f"00-{TRACE_ID}-{PARENT_ID}", f"00-{TRACE_ID}-{PARENT_ID}-01-extra", f"ff-{TRACE_ID}-{PARENT_ID}-01",
    f"00-{TRACE_ID.upper()}-{PARENT_ID}-01", f"00-{TRACE_ID}-{'0' * 16}-01", f"00-{TRACE_ID}x{PARENT_ID}-01",
])
def test_invalid_trace_context_is_ignored(value: str | None) -> None:
    assert parse_traceparent(value) is None


def test_valid_trace_context_is_read() -> None:
    assert parse_traceparent(TRACEPARENT) == (int(TRACE_ID, 16), int(PARENT_ID, 16), 1)
    # A later version may append fields; its first four are read as version 00's.
    assert parse_traceparent(f"01-{TRACE_ID}-{PARENT_ID}-00-what-comes") == (int(TRACE_ID, 16), int(PARENT_ID, 16), 0)


def test_the_spans_encode_as_otlp(traced: Any) -> None:
    """What the OTLP exporters send: the spans as built go through their encoder."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    server, exporter = traced
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    client.infer("ident", [_tensor(grpcclient)], request_id="r-9", headers={"traceparent": TRACEPARENT})
    message = encode_spans(exporter.get_finished_spans())
    (resource,) = message.resource_spans
    assert any(a.key == "service.name" and a.value.string_value == "peregrine" for a in resource.resource.attributes)
    spans = [s for scope in resource.scope_spans for s in scope.spans]
    assert sorted(s.name for s in spans) == ["ModelInfer", "compute_infer", "compute_input", "compute_output", "queue"]
    assert {s.trace_id.hex() for s in spans} == {TRACE_ID}
    assert all(s.end_time_unix_nano >= s.start_time_unix_nano > 1.6e18 for s in spans)
