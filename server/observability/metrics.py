"""Prometheus metrics (served at ``/metrics`` on the HTTP port by the HTTP transport; docs/METRICS.md).

Request latency is a histogram observed by the data plane, and so are the stages of each answered
request (:mod:`.request_histograms`); per-model counters and durations are read from each model's statistics
at scrape time, so the two views never disagree. ``peregrine_queue_depth``
is the signal an autoscaler (KEDA, Knative) scales replicas on. Triton's ``nv_*`` families, read from the
same statistics, follow Peregrine's own (:mod:`.triton_metrics`, :mod:`.gpu_metrics`).

Labels are bounded: a request for a model the server does not know is counted under the model label
``(unknown)``, never under the name the client sent, so clients cannot grow the label set.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from ..core.stats import ModelStats
from ..core.types import FrameRequest, InferRequest
from .gpu_metrics import NvmlGpus
from .request_histograms import NOT_THROUGH, RequestHistograms
from .triton_metrics import LatencySummaries, MetricsSettings, model_families, render

UNKNOWN_MODEL = "(unknown)"  # the model label of requests for models the server does not know
_NO_STAGES = (NOT_THROUGH,) * 7  # a failed request's stages, all but its total


class ModelSample(NamedTuple):
    """What a scrape reads of one loaded model version."""

    name: str
    version: int
    stats: ModelStats
    queue_depth: int
    response_cache: bool = False  # its answers go through the response cache (Triton's cache families)


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
        batch_sizes = HistogramMetricFamily("peregrine_batch_size", "Batches executed, by the size they ran at "
                                            "(their batch bucket when padded)", labels=labels)
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
            batch_sizes.add_metric(lv, *_batch_histogram(s))
        yield from fams.values()
        yield depth
        yield batch_sizes


BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _batch_histogram(stats: ModelStats) -> tuple[list[tuple[str, float]], float]:
    """Cumulative bucket counts of the executed batch sizes, and their sum (from the per-size statistics
    the statistics call reports: nothing is observed on the request path)."""
    sizes = {size: b.compute_infer.count for size, b in list(stats.batches.items())}
    buckets = [(str(edge), float(sum(c for size, c in sizes.items() if size <= edge))) for edge in BATCH_BUCKETS]
    buckets.append(("+Inf", float(sum(sizes.values()))))
    return buckets, float(sum(size * c for size, c in sizes.items()))


class _AdmissionCollector(Collector):
    """What requests and streams hold right now, and what admission refused (docs/SECURITY.md, Limits)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Any]:
        admission = self._metrics.admission
        if admission is None:
            return
        yield GaugeMetricFamily("peregrine_inflight_bytes", "Bytes of requests read and not yet answered",
                                value=admission.inflight_bytes)
        yield GaugeMetricFamily("peregrine_streams_open", "Bidirectional streams open", value=admission.streams)
        refused = CounterMetricFamily("peregrine_admission_refused", "Requests and streams refused "
                                      "(RESOURCE_EXHAUSTED) by admission control, by bound", labels=["bound"])
        for bound, count in sorted(admission.rejected.items()):
            refused.add_metric([bound], count)
        yield refused


class Metrics:
    """The server's metrics. ``known(name)`` says whether a model name may be a label (the repository
    knows it); ``settings``: Triton's ``--metrics-config``; ``gpus``: the GPUs whose Triton families are
    shown (None: none); ``enabled`` false (``--allow-metrics=false``): ``/metrics`` is not served.
    ``recording`` false: requests are not counted into Peregrine's request families (switched at run time,
    dataplane/switches.py)."""

    def __init__(self, models: Callable[[], Iterable[ModelSample]],
                 known: Callable[[str], bool] = lambda _: True, settings: MetricsSettings | None = None,
                 gpus: NvmlGpus | None = None, enabled: bool = True) -> None:
        self.registry = CollectorRegistry()
        self._models = models
        self._known = known
        self.settings = settings if settings is not None else MetricsSettings()
        self.gpus = gpus
        self.enabled = enabled
        self.recording = enabled
        self._tracking = threading.Lock()  # a model's load and a scrape may both attach its summaries
        self.requests = RequestHistograms(self._label)  # request latency and stages
        self.registry.register(self.requests)
        self.stream_frames = Counter(
            "peregrine_stream_frames", "Messages of streams (ModelStreamInfer, DetectStream) by how they were "
            "answered: ok, dropped (a newer frame superseded it), deadline (late), error",
            ["model", "outcome"], registry=self.registry,
        )
        self.registry.register(_ModelCollector(models))
        self.admission: Any = None  # the data plane's Admission, once it exists
        self.registry.register(_AdmissionCollector(self))

    def _label(self, model: str) -> str:
        return model if model and self._known(model) else UNKNOWN_MODEL

    def observe(self, model: str, status: str, total_ns: int, ran: tuple[str, int] | None,
                request: InferRequest | None, transport_decode_ns: int | None,
                transport_encode_ns: int | None) -> None:
        """One request for ``model`` (as the client named it) answered with ``status`` after ``total_ns``;
        when it was answered (status OK), ``ran`` is the (name, version) of the loaded model that ran it (the
        label set stays bounded) and its stages are observed, in nanoseconds: the transport's decoding and
        encoding (None where no transport measured them: a job's item) and what ``request`` (as the model
        ran it) carries: its image decoding (a detection pipeline's), queue time and batch times.
        ``request`` None: an answer from the response cache, which has no queue or batch."""
        if not self.recording:  # nothing would read them (--allow-metrics=false), or switched off
            return
        none = NOT_THROUGH
        if ran is None:  # failed: no stages
            self.requests.observe((model, status, None), (*_NO_STAGES, total_ns))
            return
        decoded = none if transport_decode_ns is None else transport_decode_ns  # the transport's two stages
        encoded = none if transport_encode_ns is None else transport_encode_ns
        if request is None:  # from the response cache: the transport's stages only
            stages = (decoded, none, none, none, none, none, encoded, total_ns)
        else:
            c, queue_ns = request.compute, request.queue_ns
            image = request.decode_ns if isinstance(request, FrameRequest) else none
            if queue_ns is None:
                queue_ns = none
            if c is None:
                stages = (decoded, image, queue_ns, none, none, none, encoded, total_ns)
            else:
                stages = (decoded, image, queue_ns, c.input_ns, c.infer_ns, c.output_ns, encoded, total_ns)
        self.requests.observe((model, status, ran), stages)

    def observe_stream_answer(self, model: str, outcome: str) -> None:
        if self.recording:
            self.stream_frames.labels(self._label(model), outcome).inc()

    def track(self, stats: ModelStats) -> None:
        """Keep the latency summaries of a model version from now on, when ``--metrics-config`` asks for
        them (called when a model becomes ready, and again at each scrape: once is enough)."""
        if not self.settings.observes_requests:
            return
        with self._tracking:
            if stats.observer is None:
                stats.observer = LatencySummaries(self.settings)

    def _summaries(self, sample: ModelSample) -> LatencySummaries | None:
        self.track(sample.stats)
        observer = sample.stats.observer
        return observer if isinstance(observer, LatencySummaries) else None

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text of every metric now, and its content type (served at ``/metrics``):
        Peregrine's families, then Triton's."""
        families = model_families(self._models(), self.settings, self._summaries)
        if self.gpus is not None:
            families += self.gpus.families()
        return generate_latest(self.registry) + render(families).encode(), CONTENT_TYPE_LATEST

    def close(self) -> None:
        if self.gpus is not None:
            self.gpus.close()
