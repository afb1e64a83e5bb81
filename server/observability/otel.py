"""OpenTelemetry tracing (opt-in): a span per request and one per stage, continuing the client's trace.

Off by default; then nothing of OpenTelemetry is imported and the request path pays one ``is None`` check.
On (``--otel-exporter``), each request, once answered, becomes a SERVER span (``ModelInfer``, ``Detect``, ...)
with a child span per stage it went through, built from the times the data plane measured anyway: for a
tensor model queue, compute_input, compute_infer, compute_output (as Triton's trace extension stamps
them); for a detection pipeline decode, queue, pre, infer, post. The span's parent is the client's trace
when its call carries W3C trace context (``traceparent``/``tracestate`` in gRPC metadata or HTTP headers),
so a robot's trace continues into the server. Spans are built after the answer, off the request's own
latency, and exported in the background (a batch span processor).

Sampling is decided first, before anything is built (:meth:`OtelTracing.sampled`), as the SDK's
``ParentBased(TraceIdRatioBased(ratio))`` decides: a call whose ``traceparent`` is valid follows its sampled
flag, any other is sampled at ``--otel-sample-ratio``. An unsampled request costs a look-up of its
``traceparent`` and a random number. A sampled one is built directly as finished spans
(``ReadableSpan``) handed to the span processor: the spans were over when they are made, so nothing of the
SDK's live-span machinery (sampler, context, locks, attribute limits) is worth paying for.

Triton's trace extension (observability/tracing.py) works beside it, unchanged.
"""

from __future__ import annotations

import random
import time
from typing import Any

EXPORTERS = ("off", "otlp-http", "otlp-grpc", "console")
_HEX = frozenset("0123456789abcdef")


def parse_traceparent(value: str | None) -> tuple[int, int, int] | None:
    """(trace id, parent span id, flags) of a W3C ``traceparent`` (``00-<32 hex>-<16 hex>-<2 hex>``; a later
    version may append fields after a ``-``), or None when it is absent or invalid (then the request starts a
    trace of its own, as the W3C recommendation says)."""
    if not value or len(value) < 55 or value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    version, trace, parent, flags = value[:2], value[3:35], value[36:52], value[53:55]
    if version == "ff" or (version == "00" and len(value) != 55) or (len(value) > 55 and value[55] != "-"):
        return None
    if not _HEX.issuperset(version + trace + parent + flags):
        return None
    trace_id, span_id = int(trace, 16), int(parent, 16)
    if trace_id == 0 or span_id == 0:
        return None
    return trace_id, span_id, int(flags, 16)


class OtelTracing:
    def __init__(self, exporter: str = "otlp-http", endpoint: str | None = None, service_name: str = "peregrine",
                 sample_ratio: float = 1.0, processor: Any = None) -> None:
        """``processor``: a span processor to use instead of the exporter's (tests pass one holding an
        in-memory exporter)."""
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import ReadableSpan
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.util.instrumentation import InstrumentationScope
            from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
        except ImportError:
            raise RuntimeError("OpenTelemetry tracing needs the otel extra: pip install 'peregrine[otel]'") from None
        if not 0.0 <= sample_ratio <= 1.0:
            raise ValueError(f"--otel-sample-ratio: expected 0..1, got {sample_ratio}")
        self.sample_ratio = sample_ratio
        self.processor = processor or BatchSpanProcessor(_exporter(exporter, endpoint))
        self._resource = _hashed_once(Resource.create({"service.name": service_name}))
        self._scope = InstrumentationScope("peregrine.server")
        self._span, self._context, self._state = ReadableSpan, SpanContext, TraceState
        self._server, self._internal = SpanKind.SERVER, SpanKind.INTERNAL
        self._flags = TraceFlags
        self._sampled = TraceFlags(TraceFlags.SAMPLED)
        self._ok, self._error = Status(StatusCode.UNSET), StatusCode.ERROR
        self._status = Status

    def sampled(self, traceparent: str | None) -> bool:
        """Whether a request whose call carried ``traceparent`` (None: none) is traced: decided before
        anything of its spans is built."""
        if traceparent is None:  # most calls: no trace context (random() < 1.0 always holds)
            return random.random() < self.sample_ratio
        parent = parse_traceparent(traceparent)
        if parent is not None:
            return bool(parent[2] & 1)
        return random.random() < self.sample_ratio

    def record(self, name: str, traceparent: str | None, tracestate: str | None, started_ns: int, ended_ns: int,
               attributes: dict[str, Any], stages: list[tuple[str, int, int]], status: str) -> None:
        """One answered, sampled request: ``started_ns``/``ended_ns`` and each stage's (name, start, end) on
        the monotonic clock; ``status`` the gRPC status name it was answered with."""
        to_wall = time.time_ns() - time.monotonic_ns()
        parent = parse_traceparent(traceparent)
        state = self._state.from_header([tracestate]) if tracestate and parent is not None else None
        remote = None
        if parent is not None:
            trace_id = parent[0]
            remote = self._context(trace_id, parent[1], True, self._flags(parent[2]), state)
        else:
            trace_id = random.getrandbits(128) or 1
        context = self._context(trace_id, random.getrandbits(64) or 1, False, self._sampled, state)
        for stage, start, end in stages:
            child = self._context(trace_id, random.getrandbits(64) or 1, False, self._sampled, state)
            self.processor.on_end(self._span(
                stage, context=child, parent=context, resource=self._resource, kind=self._internal,
                instrumentation_scope=self._scope, start_time=start + to_wall, end_time=max(end, start) + to_wall))
        self.processor.on_end(self._span(
            name, context=context, parent=remote, resource=self._resource, kind=self._server,
            instrumentation_scope=self._scope, attributes={**attributes, "rpc.grpc.status_code": status},
            status=self._ok if status == "OK" else self._status(self._error, status),
            start_time=started_ns + to_wall, end_time=ended_ns + to_wall))

    def shutdown(self) -> None:
        self.processor.shutdown()  # flushes what the batch processor holds


def _hashed_once(resource: Any) -> Any:
    """``resource``, hashed once. The OTLP exporters group spans by resource and hash it for every span,
    which dumps its attributes to JSON each time (a fifth of their encoding's cost for a span); a resource's
    attributes are immutable, so its hash is too."""
    from opentelemetry.sdk.resources import Resource

    class HashedResource(Resource):
        def __init__(self, attributes: Any, schema_url: str | None) -> None:
            super().__init__(attributes, schema_url)
            self._hash = super().__hash__()

        def __hash__(self) -> int:
            return self._hash

    return HashedResource(resource.attributes, resource.schema_url)


def _exporter(kind: str, endpoint: str | None) -> Any:
    if kind == "otlp-http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
    if kind == "otlp-grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
        except ImportError:
            raise RuntimeError("--otel-exporter otlp-grpc needs opentelemetry-exporter-otlp-proto-grpc "
                               "installed (otlp-http needs nothing more)") from None
        return GrpcExporter(endpoint=endpoint) if endpoint else GrpcExporter()
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    raise ValueError(f"--otel-exporter: expected one of {', '.join(EXPORTERS)}, got '{kind}'")


def infer_stages(queue_ns: int | None, compute: Any) -> list[tuple[str, int, int]]:
    """The stages of a tensor model's request on the monotonic clock: its time in the queue, then the
    batch it ran in (``compute``: a ComputeTimes, timed on the perf_counter clock)."""
    if compute is None:
        return []
    t0 = compute.start_ns + time.monotonic_ns() - time.perf_counter_ns()
    t1 = t0 + compute.input_ns
    t2 = t1 + compute.infer_ns
    stages = [("compute_input", t0, t1), ("compute_infer", t1, t2), ("compute_output", t2, t2 + compute.output_ns)]
    if queue_ns is not None:
        stages.insert(0, ("queue", t0 - queue_ns, t0))
    return stages


def frame_stages(durations: dict[str, int], started_ns: int, ended_ns: int) -> list[tuple[str, int, int]]:
    """A detection's stages from their measured durations: decode from the request's start, the others
    laid end to end so that the last ends when the answer was made."""
    stages = []
    decode = durations.get("decode", 0)
    if decode:
        stages.append(("decode", started_ns, started_ns + decode))
    rest = [(k, v) for k, v in durations.items() if k != "decode" and v]
    t = ended_ns - sum(v for _, v in rest)
    for name, ns in rest:
        stages.append((name, t, t + ns))
        t += ns
    return stages
