"""Prometheus metrics on the HTTP port (``/metrics``).

Request latency is a histogram observed by the data plane; per-model counters and durations are read
from each model's statistics at scrape time, so the two views never disagree. ``peregrine_queue_depth``
is the signal an autoscaler (KEDA, Knative) scales replicas on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..core.stats import ModelStats


class ModelSample(NamedTuple):
    """What a scrape reads of one loaded model version."""

    name: str
    version: int
    stats: ModelStats
    queue_depth: int

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class _ModelCollector(Collector):
    def __init__(self, models: Callable[[], Iterable[ModelSample]]) -> None:
        self._models = models

    def collect(self) -> Iterable[Any]:
        labels = ["model", "version"]
        fams = {
            "success": CounterMetricFamily("peregrine_inference_request_success", "Successful requests", labels=labels),
            "fail": CounterMetricFamily("peregrine_inference_request_failure", "Failed requests", labels=labels),
            "count": CounterMetricFamily("peregrine_inference_count", "Batch elements executed", labels=labels),
            "exec": CounterMetricFamily("peregrine_inference_exec_count", "Batches executed", labels=labels),
            "padding": CounterMetricFamily("peregrine_inference_padding_count",
                                           "Padding rows executed to fill batch buckets (not inferences)",
                                           labels=labels),
            "inverted": CounterMetricFamily("peregrine_detection_inverted_boxes",
                                            "Detections answered with x2 < x1 or y2 < y1, as the head gave them",
                                            labels=labels),
            "queue": CounterMetricFamily("peregrine_inference_queue_duration_us", "Time in queue", labels=labels),
            "compute_input": CounterMetricFamily("peregrine_inference_compute_input_duration_us",
                                                 "Batch assembly time", labels=labels),
            "compute_infer": CounterMetricFamily("peregrine_inference_compute_infer_duration_us",
                                                 "Model run time", labels=labels),
            "compute_output": CounterMetricFamily("peregrine_inference_compute_output_duration_us",
                                                  "Output split time", labels=labels),
        }
        depth = GaugeMetricFamily("peregrine_queue_depth", "Requests waiting in the model's queue", labels=labels)
        for m in self._models():
            lv = [m.name, str(m.version)]
            s = m.stats
            fams["success"].add_metric(lv, s.success.count)
            fams["fail"].add_metric(lv, s.fail.count)
            fams["count"].add_metric(lv, s.inference_count)
            fams["exec"].add_metric(lv, s.execution_count)
            fams["padding"].add_metric(lv, s.padding_count)
            fams["inverted"].add_metric(lv, s.inverted_boxes)
            for k in ("queue", "compute_input", "compute_infer", "compute_output"):
                fams[k].add_metric(lv, getattr(s, k).ns / 1000)
            depth.add_metric(lv, m.queue_depth)
        yield from fams.values()
        yield depth


class Metrics:
    def __init__(self, models: Callable[[], Iterable[ModelSample]]) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "peregrine_request_duration_seconds", "Server-side request latency, from decode to reply",
            ["model", "status"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.stages = Histogram(
            "peregrine_pipeline_stage_seconds", "Detection pipeline time per frame request and stage "
            "(decode, queue, pre, infer, post; pre/infer/post are the batch's)",
            ["model", "stage"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.registry.register(_ModelCollector(models))
        self._http: Any = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    def observe_request(self, model: str, status: str, seconds: float) -> None:
        self.latency.labels(model, status).observe(seconds)

    def observe_stages(self, model: str, stages: dict[str, int]) -> None:
        """Per-stage durations of one detection request, in nanoseconds."""
        for stage, ns in stages.items():
            self.stages.labels(model, stage).observe(ns / 1e9)

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint; returns the bound port (``port`` 0 picks one)."""
        self._http, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.port = self._http.server_port
        return self.port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
