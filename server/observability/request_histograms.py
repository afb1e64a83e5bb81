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
can be and leaves nothing behind: its numbers are appended, as raw 64-bit integers, to one flat array of
pending rows (one lock, one append), and its labels become the index of their key among the pending rows'.
The rows are counted into the buckets in bulk, with NumPy, when ``FOLD_AT`` of them are pending and at every
scrape, so a scrape always sees every request answered before it. Measured under load, counting each
request as it came (prometheus_client's ``Histogram`` for the first, plain counts for the second) cost a
small tensor model several percent of its throughput: a few microseconds of code run cold, between two
requests, costs several times what it costs in a loop. A pending row holds no Python object (they were
tuples of integers before): nothing a request leaves for the next fold sits in the allocator's pools that
the request path reuses, and the pending rows' memory is one bounded buffer.
"""

from __future__ import annotations

import threading
from array import array
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
FOLD_AT = 512  # pending rows counted in one go (and the most ever held: 36 KB)
NOT_THROUGH = -1  # a stage's value for a request that did not go through it
_WIDTH = 1 + len(STAGES)  # a pending row: its key's index, then the ns of each stage in STAGES' order

# A request's key: (model as the client named it, status, (model, version) that ran it or None).
Key = tuple[str, str, tuple[str, int] | None]


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
        self._rows = array("q")  # pending rows, _WIDTH integers each
        self._keys: dict[Key, int] = {}  # the pending rows' keys, by index (cleared at each fold)
        self._latency: dict[tuple[str, str], _Buckets] = {}
        self._stages: dict[tuple[str, int], list[_Buckets]] = {}
        self._latency_bounds, self._stage_bounds = _ns(LATENCY_BUCKETS), _ns(STAGE_BUCKETS)

    def observe(self, key: Key, stages: Sequence[int]) -> None:
        """One answered request: its :data:`Key` and its ns in each of ``STAGES`` (the total last;
        ``NOT_THROUGH`` for a stage it did not go through)."""
        with self._lock:
            keys = self._keys
            index = keys.get(key)
            if index is None:
                index = keys[key] = len(keys)
            rows = self._rows
            rows.append(index)
            rows.extend(stages)
            if len(rows) >= FOLD_AT * _WIDTH:
                self._fold()

    def _fold(self) -> None:
        """Count the pending rows (the lock held)."""
        if not self._rows:
            return
        table = np.frombuffer(self._rows, np.int64).reshape(-1, _WIDTH).astype(np.float64)
        keys = list(self._keys)  # in the order of their indices
        self._rows, self._keys = array("q"), {}
        index = table[:, 0]

        def rows_of(members: list[int]) -> np.ndarray | slice:  # all of them, as usual, under one key
            return slice(None) if len(keys) == 1 else np.isin(index, members)

        latency: dict[tuple[str, str], list[int]] = {}
        ran: dict[tuple[str, int], list[int]] = {}
        for i, (model, status, by) in enumerate(keys):
            latency.setdefault((self._label(model), status), []).append(i)
            if by is not None:  # answered: its stages too (a failed request is in the request histogram only)
                ran.setdefault(by, []).append(i)
        for series_key, members in latency.items():
            series = self._latency.get(series_key)
            if series is None:
                series = self._latency[series_key] = _Buckets(self._latency_bounds)
            series.add(table[rows_of(members), -1])
        for by, members in ran.items():
            series_list = self._stages.get(by)
            if series_list is None:
                series_list = self._stages[by] = [_Buckets(self._stage_bounds) for _ in STAGES]
            of_model = table[rows_of(members)]
            for column, series in enumerate(series_list, start=1):
                taken = of_model[:, column]
                taken = taken[taken != NOT_THROUGH]
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
