"""Runs one batch of requests on one ONNX Runtime session.

Batch assembly writes each request's rows straight into a buffer preallocated per instance (no
concatenate-then-copy); a batch of one request feeds the request's own arrays (no copy at all).
Outputs are split back into per-request views.

With batch buckets, a batch of n elements is padded up to the smallest bucket >= n before it runs,
so that the session only ever sees the bucket shapes. The padding rows repeat the batch's last real
row rather than holding zeros: a real row is an input the model is known to accept (it passed
validation and runs anyway), so padding can never make a batch fail or take a numeric path (NaN,
division by zero, an invalid index) that its real rows do not; it works for every datatype, BYTES
included; and a data-dependent model (NMS on the detections) spends on it about what it spends on a
real row, so a bucket costs the same whatever fills it. Padding outputs are dropped; only the real
rows are split back. On GPU providers each bucket has a session of its own (see
:mod:`peregrine.server.runtime.instances`), so that no session ever changes shape.

The detection pipeline's executor (:mod:`peregrine.server.pipeline.executor`) is the other
implementation of the scheduler's ``BatchExecutor`` interface.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np

from ..core.errors import InvalidArgument, ModelExecutionError, PeregrineError
from ..core.stats import ModelStats
from ..core.types import ComputeTimes, InferRequest, TensorSpec
from ..scheduling.buckets import bucket_for
from .instances import Instances
from .onnx import OnnxSession

log = logging.getLogger(__name__)

try:  # ORT's own exception for inputs it rejects (shapes it cannot take), distinct from failures
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument as _OrtInvalidArgument
except ImportError:  # pragma: no cover - layout of older builds
    _OrtInvalidArgument = ()  # type: ignore[assignment,misc]


class TensorExecutor:
    """The scheduler's ``BatchExecutor`` for a model of tensors in, tensors out: batch assembly, one
    session run, outputs split back per request. ``max_batch_size`` 0: the model does not batch (each
    request runs alone, as it came)."""

    def __init__(self, model_name: str, instances: Instances, inputs: list[TensorSpec], outputs: list[TensorSpec],
                 max_batch_size: int, stats: ModelStats) -> None:
        self.model_name = model_name
        self.instances = instances
        self.inputs = inputs
        self.output_names = [o.name for o in outputs]
        self.batching = max_batch_size > 0
        self.max_batch_size = max(max_batch_size, 1)
        self.stats = stats
        # Sizes a batch is padded up to (ascending); empty: batches run at their own size.
        self.batch_buckets = instances.buckets if self.batching else ()
        if self.batch_buckets and self.batch_buckets[-1] > self.max_batch_size:
            raise ValueError(f"batch bucket {self.batch_buckets[-1]} exceeds max_batch_size {self.max_batch_size}")
        self._buffers: list[dict[str, np.ndarray]] = [{} for _ in range(len(instances))]

    def instance_added(self) -> None:
        self._buffers.append({})

    def instance_removed(self) -> None:
        self._buffers.pop()

    def session_for(self, instance: int, executed: int) -> OnnxSession:
        """The session that runs a batch of ``executed`` rows on ``instance``: its bucket's session,
        or the instance's own session (no buckets, or an unpadded device batch of another size)."""
        return self.instances.session_for(instance, executed)

    def sizes(self, requests: Sequence[InferRequest]) -> tuple[int, int]:
        """(real elements, executed rows) of a batch. Inputs already in device memory (CUDA shared
        memory) are fed to the session as they are, so they are never padded: they run at their own
        size (on their bucket's session when that size is a bucket)."""
        elements = sum(_rows(r) for r in requests) if self.batching else len(requests)
        on_device = any(hasattr(a, "__cuda_array_interface__") for r in requests for a in r.inputs.values())
        return elements, elements if on_device else self.executed_size(elements)

    def executed_size(self, elements: int) -> int:
        """The batch size a batch of ``elements`` runs at: its bucket, or ``elements`` itself."""
        return bucket_for(elements, self.batch_buckets)

    def _buffer(self, instance: int, name: str, like: np.ndarray) -> np.ndarray:
        buf = self._buffers[instance].get(name)
        if buf is None or buf.shape[1:] != like.shape[1:] or buf.dtype != like.dtype:
            buf = np.empty((self.max_batch_size, *like.shape[1:]), dtype=like.dtype)
            self._buffers[instance][name] = buf
        return buf

    def _assemble(self, instance: int, requests: Sequence[InferRequest], executed: int) -> dict[str, np.ndarray]:
        """The session's feed: the requests' rows one after the other, then padding rows up to
        ``executed`` (copies of the last real row)."""
        if len(requests) == 1 and (not self.batching or executed == _rows(requests[0])):
            return requests[0].inputs
        feed = {}
        for spec in self.inputs:
            parts = [r.inputs[spec.name] for r in requests]
            if parts[0].dtype == object:
                rows = np.concatenate(parts)
                pad = executed - len(rows)
                feed[spec.name] = np.concatenate([rows, np.repeat(rows[-1:], pad, axis=0)]) if pad else rows
                continue
            buf = self._buffer(instance, spec.name, parts[0])
            offset = 0
            for p in parts:
                buf[offset : offset + len(p)] = p
                offset += len(p)
            if executed > offset:
                buf[offset:executed] = buf[offset - 1]
            feed[spec.name] = buf[:executed]
        return feed

    def execute(self, instance: int, requests: Sequence[InferRequest]) -> list[dict[str, np.ndarray]]:
        t0 = time.perf_counter_ns()
        elements, executed = self.sizes(requests)
        feed = self._assemble(instance, requests, executed)
        t1 = time.perf_counter_ns()
        try:
            outs = self.session_for(instance, executed).run(feed, self.output_names)
        except PeregrineError:
            raise
        except _OrtInvalidArgument as e:
            raise InvalidArgument(f"model '{self.model_name}' rejected the input: {e}") from None
        except Exception as e:
            log.error("model '%s' failed on a batch of %d requests: %s", self.model_name, len(requests), e)
            raise ModelExecutionError(self.model_name, str(e)) from None
        t2 = time.perf_counter_ns()
        results = self._split(requests, outs, executed)
        t3 = time.perf_counter_ns()
        self.stats.record_batch(elements, len(requests), t1 - t0, t2 - t1, t3 - t2, executed=executed)
        compute = ComputeTimes(t0, t1 - t0, t2 - t1, t3 - t2)
        for r in requests:
            r.compute = compute
        return results

    def _split(self, requests: Sequence[InferRequest], outs: list[np.ndarray],
               executed: int) -> list[dict[str, np.ndarray]]:
        named = dict(zip(self.output_names, outs, strict=True))
        if len(requests) == 1 and not self.batch_buckets:
            return [self._select(requests[0], named)]
        sizes = [_rows(r) for r in requests]
        for name, arr in named.items():
            if arr.ndim == 0 or arr.shape[0] != executed:
                raise ModelExecutionError(
                    self.model_name, f"output '{name}' has shape {arr.shape}, expected batch dimension {executed}"
                )
        # Views of the real rows; the padding rows at the end are dropped.
        results, offset = [], 0
        for r, n in zip(requests, sizes, strict=True):
            results.append(self._select(r, {k: v[offset : offset + n] for k, v in named.items()}))
            offset += n
        return results

    @staticmethod
    def _select(request: InferRequest, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not request.requested_outputs:
            return outputs
        return {name: outputs[name] for name in request.requested_outputs}


def _rows(request: InferRequest) -> int:
    """Batch elements a request carries (the first dimension of its inputs)."""
    return len(next(iter(request.inputs.values())))
