"""OpenTelemetry tracing (opt-in): a span per request and one per stage, continuing the client's trace.

Off by default; then nothing of OpenTelemetry is imported and the request path pays one ``is None`` check.
On (``--otel-exporter``), each request, once answered, becomes a SERVER span (``ModelInfer``, ``Detect``, ...)
with a child span per stage it went through, built from the times the data plane measured anyway: for a
tensor model queue, compute_input, compute_infer, compute_output (as Triton's trace extension stamps
them); for a detection pipeline decode, queue, pre, infer, post. The span's parent is the client's trace
when its call carries W3C trace context (``traceparent``/``tracestate`` in gRPC metadata or HTTP headers),
so a robot's trace continues into the server. Spans are built after the answer, off the request's own
latency, and exported in the background (a batch span processor).

Triton's trace extension (observability/tracing.py) works beside it, unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

EXPORTERS = ("off", "otlp-http", "otlp-grpc", "console")


class OtelTracing:
    def __init__(self, exporter: str = "otlp-http", endpoint: str | None = None, service_name: str = "peregrine",
                 sample_ratio: float = 1.0, processor: Any = None) -> None:
        """``processor``: a span processor to use instead of the exporter's (tests pass one holding an
        in-memory exporter)."""
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError:
            raise RuntimeError("OpenTelemetry tracing needs the otel extra: pip install 'peregrine[otel]'") from None
        if not 0.0 <= sample_ratio <= 1.0:
            raise ValueError(f"--otel-sample-ratio: expected 0..1, got {sample_ratio}")
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}),
                                       sampler=ParentBased(TraceIdRatioBased(sample_ratio)))
        self.provider.add_span_processor(processor or BatchSpanProcessor(_exporter(exporter, endpoint)))
        self.tracer = self.provider.get_tracer("peregrine.server")
        self.propagator = TraceContextTextMapPropagator()

    def record(self, name: str, header: Callable[[str], str | None], started_ns: int, ended_ns: int,
               attributes: dict[str, Any], stages: list[tuple[str, int, int]], status: str) -> None:
        """One answered request: ``started_ns``/``ended_ns`` and each stage's (name, start, end) on the
        monotonic clock; ``status`` the gRPC status name it was answered with."""
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        carrier = {key: value for key in ("traceparent", "tracestate") if (value := header(key))}
        parent = self.propagator.extract(carrier) if carrier else None
        to_wall = time.time_ns() - time.monotonic_ns()
        span = self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER, start_time=started_ns + to_wall,
                                      attributes={**attributes, "rpc.grpc.status_code": status})
        if not span.is_recording():  # not sampled
            return
        inside = trace.set_span_in_context(span)
        for stage, start, end in stages:
            child = self.tracer.start_span(stage, context=inside, start_time=start + to_wall)
            child.end(end_time=max(end, start) + to_wall)
        if status != "OK":
            span.set_status(Status(StatusCode.ERROR, status))
        span.end(end_time=ended_ns + to_wall)

    def shutdown(self) -> None:
        self.provider.shutdown()  # flushes what the batch processor holds


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
