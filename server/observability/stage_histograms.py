"""Per-stage latency histograms of answered requests: ``peregrine_pipeline_stage_seconds{model, version, stage}``
(docs/METRICS.md, docs/OBSERVABILITY.md "Stages").

One request is observed once, when it is answered, with every stage it went through: the transport's
decoding of the wire message (``transport_decode``), a detection pipeline's image decoding (``decode``), the
queue, its batch's pre-processing, model run and post-processing (``pre``, ``infer``, ``post``; a tensor
model's batch assembly, ONNX Runtime run and output split), the transport's encoding of the answer
(``transport_encode``) and the whole request (``total``). A stage the request did not go through (image
decoding for a tensor model; the queue and the batch for an answer from the response cache) is not
observed for it, so each stage's count is the number of requests that went through it.

This runs on every request, so it is not prometheus_client's ``Histogram`` (a lock, a label look-up and a
linear walk over the buckets per value: about 1 µs a value, 8 µs a request): each model version's counts
are plain lists, a value finds its bucket by bisection in nanoseconds, and one lock is taken per request.
The cumulative buckets Prometheus expects are added up at scrape time.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

FAMILY = "peregrine_pipeline_stage_seconds"
STAGES = ("transport_decode", "decode", "queue", "pre", "infer", "post", "transport_encode", "total")
# Upper bounds in seconds. Between 0.5 ms and 100 ms (where the objective's p99 lives) each bound is at most
# 1.5 times the one before, so a p99 read from them (histogram_quantile) is within that bucket's width;
# below, the transport's tens of microseconds; above, up to the 10 s of a slow cold start.
BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025,
           0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04,
           0.05, 0.075, 0.1,
           0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BOUNDS_NS = tuple(round(b * 1e9) for b in BUCKETS)
_NB = len(BUCKETS) + 1  # the last counts the values over every bound (+Inf)
_LE = [floatToGoString(b) for b in BUCKETS] + ["+Inf"]


class _Series:
    """One model version's counts: ``counts[stage * _NB + bucket]`` (not cumulative) and ``sums[stage]``,
    nanoseconds."""

    __slots__ = ("counts", "sums")

    def __init__(self) -> None:
        self.counts = [0] * (len(STAGES) * _NB)
        self.sums = [0] * len(STAGES)


class StageHistograms(Collector):
    """The histograms, one series per loaded model version that answered (labels are only the names and
    versions of models that ran, never a client's string)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # requests are answered on the loop, job items in their workers
        self._series: dict[str, dict[int, _Series]] = {}

    def observe(self, model: str, version: int, transport_decode: int | None, decode: int | None,
                queue: int | None, pre: int | None, infer: int | None, post: int | None,
                transport_encode: int | None, total: int) -> None:
        """One answered request's stages, in nanoseconds; None for a stage it did not go through."""
        by_version = self._series.get(model)
        series = by_version.get(version) if by_version is not None else None
        if series is None:
            series = self._add(model, version)
        counts, sums, bounds = series.counts, series.sums, _BOUNDS_NS
        # Written out stage by stage: a loop would build a tuple of the values on every request.
        with self._lock:
            if transport_decode is not None:
                counts[bisect_left(bounds, transport_decode)] += 1
                sums[0] += transport_decode
            if decode is not None:
                counts[_NB + bisect_left(bounds, decode)] += 1
                sums[1] += decode
            if queue is not None:
                counts[2 * _NB + bisect_left(bounds, queue)] += 1
                sums[2] += queue
            if pre is not None:
                counts[3 * _NB + bisect_left(bounds, pre)] += 1
                sums[3] += pre
            if infer is not None:
                counts[4 * _NB + bisect_left(bounds, infer)] += 1
                sums[4] += infer
            if post is not None:
                counts[5 * _NB + bisect_left(bounds, post)] += 1
                sums[5] += post
            if transport_encode is not None:
                counts[6 * _NB + bisect_left(bounds, transport_encode)] += 1
                sums[6] += transport_encode
            counts[7 * _NB + bisect_left(bounds, total)] += 1
            sums[7] += total

    def _add(self, model: str, version: int) -> _Series:
        with self._lock:
            series = self._series.setdefault(model, {}).setdefault(version, _Series())
        return series

    def collect(self) -> Iterable[Any]:
        family = HistogramMetricFamily(FAMILY, "Time per answered request and stage, by model version: the "
                                       "transport's decoding and encoding, image decoding, queue, pre, infer, "
                                       "post (pre/infer/post are the batch's), total",
                                       labels=["model", "version", "stage"])
        with self._lock:
            copies = [(model, version, list(s.counts), list(s.sums))
                      for model, by_version in self._series.items() for version, s in by_version.items()]
        for model, version, counts, sums in sorted(copies, key=lambda c: (c[0], c[1])):
            for i, stage in enumerate(STAGES):
                row = counts[i * _NB:(i + 1) * _NB]
                if not any(row):
                    continue  # a stage this model's requests do not go through
                buckets, running = [], 0
                for le, n in zip(_LE, row, strict=True):
                    running += n
                    buckets.append((le, float(running)))
                family.add_metric([model, str(version), stage], buckets, sums[i] / 1e9)
        yield family
