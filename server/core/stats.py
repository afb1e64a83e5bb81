"""Per-model statistics, as ModelStatistics reports them (durations in nanoseconds)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from .errors import ModelExecutionError, PeregrineError

# Why a request failed, in Triton's words (the ``reason`` label of ``nv_inference_request_failure``).
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
# Errors that turned a request away unrun: a full queue, no capacity, a deadline or queue timeout passed while
# it waited (Triton answers its queue timeouts UNAVAILABLE and counts them REJECTED).
_REJECTED = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"})


def failure_reason(error: BaseException | None) -> str:
    """Triton's failure reason for the exception that failed a request: REJECTED (turned away unrun),
    CANCELED (its caller went away), BACKEND (the model failed running it), else OTHER."""
    if isinstance(error, (asyncio.CancelledError, concurrent.futures.CancelledError)):
        return "CANCELED"
    code = error.code if isinstance(error, PeregrineError) else ""
    if code in _REJECTED:
        return "REJECTED"
    if code == "CANCELLED":
        return "CANCELED"
    if isinstance(error, ModelExecutionError):
        return "BACKEND"
    return "OTHER"


class DurationObserver(Protocol):
    """Sees each duration as the statistics add it, for latency summaries (observability/triton_metrics.py).
    ``name`` is the ModelStats duration it is added to ("success", "fail", "queue", "compute_input",
    "compute_infer", "compute_output", "cache_hit", "cache_miss"); ``ns`` one request's duration;
    ``count`` how many requests took it (the requests of one batch share its compute times). Called with
    the statistics' lock held: it must be quick and must not call back into them."""

    def observe(self, name: str, ns: int, count: int = 1) -> None: ...


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelStats:
    """Counters of one model version; every method is thread-safe."""

    inference_count: int = 0  # requests executed (counting each batch element; never padding)
    execution_count: int = 0  # batches executed
    padding_count: int = 0  # padding rows executed to fill batch buckets
    inverted_boxes: int = 0  # detections answered with x2 < x1 or y2 < y1 (as the head gave them)
    last_inference_ms: int = 0  # wall-clock milliseconds since the epoch, as the protocol reports it
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    cache_hit: Duration = field(default_factory=Duration)  # answers from the response cache: look-up time
    cache_miss: Duration = field(default_factory=Duration)  # look-ups that missed: look-up + insertion time
    # Failed requests by Triton's reason (FAILURE_REASONS); they add up to ``fail.count``.
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_REASONS, 0))
    batches: dict[int, BatchStats] = field(default_factory=dict)
    # Latency summaries and histogram, when the metrics keep them (--metrics-config); None: off.
    observer: DurationObserver | None = field(default=None, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_batch(self, batch_size: int, requests: int, input_ns: int, infer_ns: int, output_ns: int,
                     executed: int | None = None) -> None:
        """One executed batch of ``batch_size`` elements coming from ``requests`` requests, run at
        ``executed`` rows (its batch bucket; default ``batch_size``: no padding).

        ``inference_count`` counts the real elements; the per-size batch statistics are keyed by the
        executed size, since that is the shape whose compute time they measure; the difference is
        ``padding_count``. Triton never pads, so there the two sizes are the same number."""
        executed = batch_size if executed is None else executed
        if executed < batch_size:
            raise ValueError(f"executed size {executed} is below the batch's {batch_size} elements")
        with self._lock:
            self.execution_count += 1
            self.inference_count += batch_size
            self.padding_count += executed - batch_size
            self.last_inference_ms = time.time_ns() // 1_000_000
            b = self.batches.setdefault(executed, BatchStats())
            b.compute_input.add(input_ns)
            b.compute_infer.add(infer_ns)
            b.compute_output.add(output_ns)
            # Per-request compute durations: every request of the batch spent the batch's time.
            self.compute_input.add(input_ns * requests, requests)
            self.compute_infer.add(infer_ns * requests, requests)
            self.compute_output.add(output_ns * requests, requests)
            if self.observer is not None:
                self.observer.observe("compute_input", input_ns, requests)
                self.observer.observe("compute_infer", infer_ns, requests)
                self.observer.observe("compute_output", output_ns, requests)

    def record_inverted(self, boxes: int) -> None:
        """Detections a head gave with x2 < x1 or y2 < y1: answered as they are, counted here."""
        if boxes:
            with self._lock:
                self.inverted_boxes += boxes

    def record_request(self, ok: bool, total_ns: int, queue_ns: int | None, reason: str = "OTHER") -> None:
        """One finished request: its time from arrival to answer, and its time in the queue if it got
        that far. A failed one (``ok`` false) is counted under ``reason``, one of FAILURE_REASONS (what
        :func:`failure_reason` says of the exception that failed it)."""
        with self._lock:
            if ok:
                self._add("success", total_ns)
                if queue_ns is not None:
                    self._add("queue", queue_ns)
            else:
                self._add("fail", total_ns)
                self.failures[reason if reason in self.failures else "OTHER"] += 1

    def record_cache_hit(self, total_ns: int, lookup_ns: int) -> None:
        """A request answered from the response cache. As in Triton, it counts as a success and in the
        queue statistics (with no wait), never in the inference or execution counts: nothing ran."""
        with self._lock:
            self._add("cache_hit", lookup_ns)
            self._add("success", total_ns)
            self._add("queue", 0)

    def record_cache_miss(self, ns: int) -> None:
        """A response-cache look-up that missed and the insertion of the answer that followed."""
        with self._lock:
            self._add("cache_miss", ns)

    def _add(self, name: str, ns: int) -> None:
        """One request's ``ns`` added to the duration ``name`` (and shown to the observer); lock held."""
        getattr(self, name).add(ns)
        if self.observer is not None:
            self.observer.observe(name, ns)
