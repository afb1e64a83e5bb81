"""Triton Inference Server's Prometheus families (``nv_*``), served on ``/metrics`` beside Peregrine's own.

Names, types, help texts, units and labels are Triton's (docs/METRICS.md lists each family and where it
differs), so dashboards and alerts written for Triton work unchanged. Per-model values are read from each
loaded version's ModelStats when ``/metrics`` is scraped: they are the numbers the statistics extension
(ModelStatistics) reports, in microseconds where Triton's are. Triton's counters carry no ``_total`` suffix
(its prometheus-cpp writes none), while prometheus_client always adds one, so these families are written as
text here.

Latency summaries (``--metrics-config summary_latencies=true``) and the first-response histogram
(``histogram_latencies=true``) need each request's durations: a :class:`LatencySummaries` attached to a
version's ModelStats sees every duration as the statistics add it (``core.stats.DurationObserver``), so a
summary's ``_sum`` and ``_count`` are its counter's.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..core.stats import FAILURE_REASONS

if TYPE_CHECKING:
    from .metrics import ModelSample

# Triton's defaults: the quantiles of its summaries, and the bounds (milliseconds) of its first-response histogram.
DEFAULT_QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)
FIRST_RESPONSE_BUCKETS_MS = (100.0, 500.0, 2000.0, 5000.0)
# A summary's quantiles cover the last SUMMARY_MAX_AGE seconds, kept in SUMMARY_AGE_BUCKETS parts (prometheus-cpp's
# defaults, which Triton uses).
SUMMARY_MAX_AGE = 60.0
SUMMARY_AGE_BUCKETS = 5
# Quantiles are within this relative error of the true value (see SlidingQuantiles).
QUANTILE_RELATIVE_ERROR = 0.01

# ModelStats duration -> (Triton's counter, its help), (Triton's summary, its help); help texts are Triton's.
_LATENCIES = {
    "success": (("nv_inference_request_duration_us",
                 "Cumulative inference request duration in microseconds (includes cached requests)"),
                ("nv_inference_request_summary_us",
                 "Summary of inference request duration in microseconds (includes cached requests)")),
    "queue": (("nv_inference_queue_duration_us",
               "Cumulative inference queuing duration in microseconds (includes cached requests)"),
              ("nv_inference_queue_summary_us",
               "Summary of inference queuing duration in microseconds (includes cached requests)")),
    "compute_input": (("nv_inference_compute_input_duration_us",
                       "Cumulative compute input duration in microseconds (does not include cached requests)"),
                      ("nv_inference_compute_input_summary_us",
                       "Cumulative compute input duration in microseconds (does not include cached requests)")),
    "compute_infer": (("nv_inference_compute_infer_duration_us",
                       "Cumulative compute inference duration in microseconds (does not include cached requests)"),
                      ("nv_inference_compute_infer_summary_us",
                       "Cumulative compute inference duration in microseconds (does not include cached requests)")),
    "compute_output": (("nv_inference_compute_output_duration_us",
                        "Cumulative inference compute output duration in microseconds (does not include cached "
                        "requests)"),
                       ("nv_inference_compute_output_summary_us",
                        "Cumulative inference compute output duration in microseconds (does not include cached "
                        "requests)")),
}
_CACHE_SUMMARIES = {
    "cache_hit": ("nv_cache_hit_summary_per_model",
                  "Summary of cache hit counts/durations per model, in microseconds."),
    "cache_miss": ("nv_cache_miss_summary_per_model",
                   "Summary of cache miss counts/durations per model, in microseconds."),
}
_FIRST_RESPONSE = ("nv_inference_first_response_histogram_ms",
                   "Duration from request to first response in milliseconds")
_BOOLEAN = {"true": True, "false": False}


@dataclass(frozen=True)
class MetricsSettings:
    """What Triton's ``--metrics-config key=value`` options chose (:meth:`parse`)."""

    counter_latencies: bool = True  # the nv_*_duration_us counters (and the per-model cache counters)
    summary_latencies: bool = False  # the nv_*_summary_us summaries
    histogram_latencies: bool = False  # nv_inference_first_response_histogram_ms
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES

    @property
    def observes_requests(self) -> bool:
        """Whether each request's durations must be observed (a summary or histogram is on)."""
        return self.summary_latencies or self.histogram_latencies

    @classmethod
    def parse(cls, options: Mapping[str, str]) -> MetricsSettings:
        """Settings from Triton's keys: ``counter_latencies``, ``summary_latencies``, ``histogram_latencies``
        (``true`` or ``false``) and ``summary_quantiles`` (``"0.5:0.05,0.9:0.01"``: quantile:error pairs; the
        error is accepted and not used, see SlidingQuantiles). Raises ValueError naming a key or value it
        does not know."""
        flags: dict[str, bool] = {}
        quantiles: tuple[float, ...] = DEFAULT_QUANTILES
        for key, value in options.items():
            if key in ("counter_latencies", "summary_latencies", "histogram_latencies"):
                if value.lower() not in _BOOLEAN:
                    raise ValueError(f"--metrics-config {key}: expected true or false, got '{value}'")
                flags[key] = _BOOLEAN[value.lower()]
            elif key == "summary_quantiles":
                quantiles = _quantiles(value)
            else:
                raise ValueError(f"--metrics-config: unknown key '{key}'; expected counter_latencies, "
                                 "summary_latencies, histogram_latencies or summary_quantiles")
        return cls(quantiles=quantiles, **flags)


def _quantiles(text: str) -> tuple[float, ...]:
    quantiles = []
    for pair in text.replace(" ", ",").split(","):
        if not pair:
            continue
        quantile, sep, error = pair.partition(":")
        try:
            q = float(quantile)
            if sep:
                float(error)
        except ValueError:
            q = math.nan
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"--metrics-config summary_quantiles: expected quantile:error pairs with quantiles "
                             f"in 0..1, like 0.5:0.05,0.99:0.001; got '{pair}'")
        quantiles.append(q)
    if not quantiles:
        raise ValueError("--metrics-config summary_quantiles: expected at least one quantile:error pair")
    return tuple(quantiles)


# -- per-request observations --------------------------------------------------------------------------
_GAMMA = (1 + QUANTILE_RELATIVE_ERROR) / (1 - QUANTILE_RELATIVE_ERROR)
_LOG_GAMMA = math.log(_GAMMA)
_ZERO = -(1 << 31)  # the bucket of values <= 0 (a cache hit's time in the queue): below every other


class SlidingQuantiles:
    """Quantiles of the values observed in the last ``max_age`` seconds, as a Prometheus summary reports
    them, in memory bounded whatever the request rate.

    Values are counted in logarithmic buckets: bucket ``i`` holds the values in (GAMMA^(i-1), GAMMA^i] and
    answers with the one value within QUANTILE_RELATIVE_ERROR of all of them, so a quantile is within 1% of
    the true value (the DDSketch construction; microseconds from 1 to 10^8 need fewer than 1,000 buckets).
    Triton's prometheus-cpp keeps a rank error per quantile instead (CKMS); the quantile:error pairs of
    ``summary_quantiles`` choose the quantiles here, not the error. The window is ``age_buckets`` parts of
    ``max_age / age_buckets`` seconds: a part older than ``max_age`` is dropped whole.
    """

    def __init__(self, max_age: float = SUMMARY_MAX_AGE, age_buckets: int = SUMMARY_AGE_BUCKETS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._max_age = max_age
        self._part = max_age / age_buckets
        self._clock = clock
        self._parts: deque[tuple[float, Counter[int]]] = deque(maxlen=age_buckets)  # (start, counts by bucket)

    def observe(self, value: float, count: int = 1) -> None:
        now = self._clock()
        if not self._parts or now - self._parts[-1][0] >= self._part:
            self._parts.append((now, Counter()))  # the oldest part falls out
        bucket = _ZERO if value <= 0 else math.ceil(math.log(value) / _LOG_GAMMA)
        self._parts[-1][1][bucket] += count

    def quantiles(self, qs: Iterable[float]) -> list[float]:
        """The value at each quantile of ``qs``; NaN when nothing was observed in the window (as
        prometheus-cpp answers)."""
        now = self._clock()
        window: Counter[int] = Counter()
        for start, counts in self._parts:
            if now - start < self._max_age:
                window.update(counts)
        total = sum(window.values())
        if not total:
            return [math.nan for _ in qs]
        buckets = sorted(window.items())
        values = []
        for q in qs:
            bucket = _bucket_at(buckets, q * (total - 1))
            values.append(0.0 if bucket == _ZERO else 2 * _GAMMA ** bucket / (_GAMMA + 1))
        return values


def _bucket_at(buckets: list[tuple[int, int]], rank: float) -> int:
    """The bucket holding the value of 0-based ``rank`` among the ordered (bucket, count) pairs."""
    seen = 0
    for bucket, n in buckets:
        seen += n
        if seen > rank:
            return bucket
    return buckets[-1][0]


@dataclass
class _Summary:
    quantiles: SlidingQuantiles
    count: int = 0
    ns: int = 0


@dataclass
class _Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bound (not cumulative); above the last: count - sum
    count: int = 0
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = self.counts or [0] * len(self.bounds)

    def observe(self, value: float, count: int) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += count
                break
        self.count += count
        self.total += value * count


class LatencySummaries:
    """The latency summaries and first-response histogram of one model version: the ``observer`` of its
    ModelStats (``core.stats.DurationObserver``), read by :func:`model_families` at scrape time."""

    def __init__(self, settings: MetricsSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._lock = threading.Lock()  # observed from the loop and instance threads, read by scrapes
        names = [*_LATENCIES, *_CACHE_SUMMARIES] if settings.summary_latencies else []
        self._summaries = {name: _Summary(SlidingQuantiles(clock=clock)) for name in names}
        self._first_response = _Histogram(FIRST_RESPONSE_BUCKETS_MS) if settings.histogram_latencies else None

    def observe(self, name: str, ns: int, count: int = 1) -> None:
        with self._lock:
            summary = self._summaries.get(name)
            if summary is not None:
                summary.quantiles.observe(ns / 1000, count)
                summary.count += count
                summary.ns += ns * count
            # A request's one answer is its first response, whether it succeeded or failed (as Triton counts).
            if self._first_response is not None and name in ("success", "fail"):
                self._first_response.observe(ns / 1e6, count)

    def summary(self, name: str) -> tuple[int, int, list[float]] | None:
        """(count, sum in microseconds, value at each quantile) of the summary of ModelStats duration ``name``."""
        with self._lock:
            s = self._summaries.get(name)
            if s is None:
                return None
            # Within 1% anyway: three decimals (nanoseconds) are all the precision there is.
            return s.count, s.ns // 1000, [round(v, 3) for v in s.quantiles.quantiles(self.settings.quantiles)]

    def first_response(self) -> _Histogram | None:
        with self._lock:
            h = self._first_response
            return None if h is None else _Histogram(h.bounds, list(h.counts), h.count, h.total)


# -- the families --------------------------------------------------------------------------------------
@dataclass
class Family:
    """One Prometheus family as Triton writes it: samples are (name, labels, value)."""

    name: str
    help: str
    type: str  # counter, gauge, summary or histogram
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def add(self, labels: dict[str, str], value: float, suffix: str = "") -> None:
        self.samples.append((self.name + suffix, labels, value))


def model_families(models: Iterable[ModelSample], settings: MetricsSettings,
                   summaries: Callable[[ModelSample], LatencySummaries | None]) -> list[Family]:
    """Triton's per-model families for the loaded versions ``models``. ``summaries`` gives a version's
    LatencySummaries (None when it keeps none)."""
    success = Family("nv_inference_request_success", "Number of successful inference requests, all batch sizes",
                     "counter")
    failure = Family("nv_inference_request_failure", "Number of failed inference requests, all batch sizes",
                     "counter")
    count = Family("nv_inference_count", "Number of inferences performed (does not include cached requests)",
                   "counter")
    executions = Family("nv_inference_exec_count",
                        "Number of model executions performed (does not include cached requests)", "counter")
    pending = Family("nv_inference_pending_request_count",
                     "Instantaneous number of pending requests awaiting execution per-model.", "gauge")
    durations = {name: Family(*counter, "counter") for name, (counter, _) in _LATENCIES.items()}
    cache = {
        "hits": Family("nv_cache_num_hits_per_model", "Number of cache hits per model", "counter"),
        "hit_us": Family("nv_cache_hit_duration_per_model", "Total cache hit duration per model, in microseconds",
                         "counter"),
        "misses": Family("nv_cache_num_misses_per_model", "Number of cache misses per model", "counter"),
        "miss_us": Family("nv_cache_miss_duration_per_model",
                          "Total cache miss (insert+lookup) duration per model, in microseconds", "counter"),
    }
    summary_families = {name: Family(*summary, "summary") for name, (_, summary) in _LATENCIES.items()}
    summary_families.update({name: Family(*about, "summary") for name, about in _CACHE_SUMMARIES.items()})
    first_response = Family(*_FIRST_RESPONSE, "histogram")

    for m in models:
        labels = {"model": m.name, "version": str(m.version)}
        s = m.stats
        success.add(labels, s.success.count)
        for reason in FAILURE_REASONS:
            failure.add({**labels, "reason": reason}, s.failures.get(reason, 0))
        count.add(labels, s.inference_count)
        executions.add(labels, s.execution_count)
        pending.add(labels, m.queue_depth)
        if settings.counter_latencies:
            for name, family in durations.items():
                family.add(labels, getattr(s, name).ns // 1000)
            if m.response_cache:
                cache["hits"].add(labels, s.cache_hit.count)
                cache["hit_us"].add(labels, s.cache_hit.ns // 1000)
                cache["misses"].add(labels, s.cache_miss.count)
                cache["miss_us"].add(labels, s.cache_miss.ns // 1000)
        observed = summaries(m)
        if observed is None:
            continue
        for name, family in summary_families.items():
            if name in _CACHE_SUMMARIES and not m.response_cache:
                continue
            summary = observed.summary(name)
            if summary is None:
                continue
            n, total_us, values = summary
            family.add(labels, n, "_count")
            family.add(labels, total_us, "_sum")
            for q, value in zip(settings.quantiles, values, strict=True):
                family.add({**labels, "quantile": _number(q)}, value)
        histogram = observed.first_response()
        if histogram is not None:
            first_response.add(labels, histogram.count, "_count")
            first_response.add(labels, histogram.total, "_sum")
            cumulative = 0
            for bound, n in zip(histogram.bounds, histogram.counts, strict=True):
                cumulative += n
                first_response.add({**labels, "le": _number(bound)}, cumulative, "_bucket")
            first_response.add({**labels, "le": "+Inf"}, histogram.count, "_bucket")

    return [success, failure, count, executions, pending, *durations.values(), *cache.values(),
            *summary_families.values(), first_response]


def render(families: Iterable[Family]) -> str:
    """The Prometheus text (version 0.0.4) of ``families``, as Triton writes it: no ``_total`` on counters,
    labels sorted by name with ``quantile`` and ``le`` last; a family without samples is left out."""
    lines = []
    for family in families:
        if not family.samples:
            continue
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for name, labels, value in family.samples:
            ordered = sorted(labels.items(), key=lambda kv: (kv[0] in ("quantile", "le"), kv[0]))
            text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in ordered)
            lines.append(f"{name}{{{text}}} {_number(value)}" if text else f"{name} {_number(value)}")
    return "\n".join(lines) + "\n" if lines else ""


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
