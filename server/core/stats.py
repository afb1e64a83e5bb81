"""Per-model statistics, as ModelStatistics reports them (durations in nanoseconds)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


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
    batches: dict[int, BatchStats] = field(default_factory=dict)
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

    def record_inverted(self, boxes: int) -> None:
        """Detections a head gave with x2 < x1 or y2 < y1: answered as they are, counted here."""
        if boxes:
            with self._lock:
                self.inverted_boxes += boxes

    def record_request(self, ok: bool, total_ns: int, queue_ns: int | None) -> None:
        """One finished request: its time from arrival to answer, and its time in the queue if it got
        that far."""
        with self._lock:
            (self.success if ok else self.fail).add(total_ns)
            if queue_ns is not None and ok:
                self.queue.add(queue_ns)

    def record_cache_hit(self, total_ns: int, lookup_ns: int) -> None:
        """A request answered from the response cache. As in Triton, it counts as a success and in the
        queue statistics (with no wait), never in the inference or execution counts: nothing ran."""
        with self._lock:
            self.cache_hit.add(lookup_ns)
            self.success.add(total_ns)
            self.queue.add(0)

    def record_cache_miss(self, ns: int) -> None:
        """A response-cache look-up that missed and the insertion of the answer that followed."""
        with self._lock:
            self.cache_miss.add(ns)
