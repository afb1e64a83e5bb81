"""The two histograms every answered request moves (docs/METRICS.md, docs/OBSERVABILITY.md "Stages"):

- ``peregrine_request_duration_seconds{model, status}``: every request, any model (the label is the name the
  client asked for when the repository knows it, else ``(unknown)``) and any gRPC status;
- ``peregrine_pipeline_stage_seconds{model, version, stage}``: the requests answered, per stage they went
  through, by the model version that ran them: the transport's decoding of the wire message
  (``transport_decode``), a detection pipeline's image decoding (``decode``), the queue, its batch's
  pre-processing, model run and post-processing (``pre``, ``infer``, ``post``; a tensor model's batch
  assembly, ONNX Runtime run and output split), the transport's encoding of the answer
  (``transport_encode``) and the whole request (``total``). A stage the request did not go through (image
  decoding for a tensor model; the queue and the batch for an answer from the response cache) is not
  observed for it, so each stage's count is the number of requests that went through it.

This runs on every request, on the event loop that every request shares, so a request pays as little as
can be: its numbers are appended, as one row, to a list of pending observations (one lock, one append).
The rows are counted into the buckets in bulk, with NumPy, when ``FOLD_AT`` of them are pending and at every
scrape, so a scrape always sees every request answered before it. Measured under load, counting each
request as it came (prometheus_client's ``Histogram`` for the first, plain counts for the second) cost a
small tensor model several percent of its throughput: a few microseconds of code run cold, between two
requests, costs several times what it costs in a loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

LATENCY_FAMILY = "peregrine_request_duration_seconds"
STAGE_FAMILY = "peregrine_pipeline_stage_seconds"
STAGES = ("transport_decode", "decode", "queue", "pre", "infer", "post", "transport_encode", "total")
# Upper bounds in seconds of the stages. Between 0.5 ms and 100 ms (where the objective's p99 lives) each
# bound is at most 1.5 times the one before, so a p99 read from them (histogram_quantile) is within that
# bucket's width; below, the transport's tens of microseconds; above, up to the 10 s of a slow cold start.
STAGE_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025,
                 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03,
                 0.04, 0.05, 0.075, 0.1,
                 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
FOLD_AT = 512  # pending rows counted in one go (and the most ever held: a few tens of KB)

# A row: (model as asked, status, total ns, model that ran or None, its version, then the stages but the
# total in STAGES' order, ns or None).
Row = tuple[Any, ...]
_FIRST_STAGE = 5


class _Buckets:
    """One series' counts per bucket (not cumulative; the last one past every bound) and sum, in ns."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: np.ndarray) -> None:
        self.bounds = bounds
        self.counts = np.zeros(len(bounds) + 1, np.int64)
        self.sum = 0.0

    def add(self, values: np.ndarray) -> None:
        self.counts += np.bincount(np.searchsorted(self.bounds, values, side="left"), minlength=len(self.counts))
        self.sum += float(values.sum())

    def cumulative(self, le: Sequence[str]) -> list[tuple[str, float]]:
        return list(zip(le, np.cumsum(self.counts).astype(float).tolist(), strict=True))


def _ns(buckets: tuple[float, ...]) -> np.ndarray:
    return np.array([round(b * 1e9) for b in buckets], np.float64)


class RequestHistograms(Collector):
    """Both histograms. ``label(model)``: the model label of a request for ``model`` as the client named it
    (``(unknown)`` for a name the repository does not know: clients cannot grow the label set). The stage
    series are only of model versions that ran (never a client's string)."""

    def __init__(self, label: Callable[[str], str]) -> None:
        self._label = label
        self._lock = threading.Lock()  # requests are answered on the loop, job items in their workers
        self._rows: list[Row] = []
        self._latency: dict[tuple[str, str], _Buckets] = {}
        self._stages: dict[tuple[str, int], list[_Buckets]] = {}
        self._latency_bounds, self._stage_bounds = _ns(LATENCY_BUCKETS), _ns(STAGE_BUCKETS)

    def observe(self, row: Row) -> None:
        """One answered request (its :data:`Row`)."""
        with self._lock:
            rows = self._rows
            rows.append(row)
            if len(rows) >= FOLD_AT:
                self._fold()

    def _fold(self) -> None:
        """Count the pending rows (the lock held)."""
        rows, self._rows = self._rows, []
        if not rows:
            return
        columns = list(zip(*rows, strict=True))
        totals = np.array(columns[2], np.float64)
        for (model, status), at in _groups(list(zip(columns[0], columns[1], strict=True))).items():
            key = (self._label(model), status)
            series = self._latency.get(key)
            if series is None:
                series = self._latency[key] = _Buckets(self._latency_bounds)
            series.add(totals[at])
        ran = list(zip(columns[3], columns[4], strict=True))
        # None (a stage the request did not go through) becomes NaN, counted nowhere.
        stages = [np.array(c, np.float64) for c in columns[_FIRST_STAGE:]] + [totals]
        for (model, version), at in _groups(ran).items():
            if model is None:  # failed: in the request histogram only
                continue
            series_list = self._stages.get((model, version))
            if series_list is None:
                series_list = self._stages[(model, version)] = [_Buckets(self._stage_bounds) for _ in STAGES]
            for series, values in zip(series_list, stages, strict=True):
                taken = values[at]
                taken = taken[~np.isnan(taken)]
                if taken.size:
                    series.add(taken)

    def collect(self) -> Iterable[Any]:
        latency = HistogramMetricFamily(LATENCY_FAMILY, "Server-side request latency, from decode to reply",
                                        labels=["model", "status"])
        stages = HistogramMetricFamily(STAGE_FAMILY, "Time per answered request and stage, by model version: "
                                       "the transport's decoding and encoding, image decoding, queue, pre, "
                                       "infer, post (pre/infer/post are the batch's), total",
                                       labels=["model", "version", "stage"])
        le_latency = [floatToGoString(b) for b in LATENCY_BUCKETS] + ["+Inf"]
        le_stage = [floatToGoString(b) for b in STAGE_BUCKETS] + ["+Inf"]
        with self._lock:
            self._fold()
            latency_rows = [(key, s.cumulative(le_latency), s.sum) for key, s in sorted(self._latency.items())]
            stage_rows = [((model, str(version), stage), s.cumulative(le_stage), s.sum)
                          for (model, version), series in sorted(self._stages.items())
                          for stage, s in zip(STAGES, series, strict=True) if s.counts.any()]
        for labels, buckets, total in latency_rows:
            latency.add_metric(list(labels), buckets, total / 1e9)
        for labels, buckets, total in stage_rows:
            stages.add_metric(list(labels), buckets, total / 1e9)
        yield latency
        yield stages


def _groups(keys: list[Any]) -> dict[Any, np.ndarray]:
    """The row indices of each distinct key (one slice of everything when, as usual, all rows share one)."""
    first = keys[0]
    if keys.count(first) == len(keys):
        return {first: np.arange(len(keys))}
    at: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        at.setdefault(key, []).append(i)
    return {key: np.array(indices) for key, indices in at.items()}
