"""A model of tensors in, tensors out (``platform = "onnxruntime_onnx"``): an ONNX model served as it is.

Composed of its instances (ONNX Runtime sessions, :mod:`peregrine.server.runtime`), a
:class:`~peregrine.server.runtime.executor.TensorExecutor` that runs batches on them, and a scheduler
(the dynamic batcher). ``validate`` checks a decoded request against the model's inputs in the caller's
thread; ``infer`` queues it and returns the outputs.
"""

from __future__ import annotations

import ast
import functools
import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..config.model import ModelConfig
from ..core import datatypes
from ..core.errors import InvalidArgument, clipped
from ..core.stats import ModelStats, failure_reason
from ..core.types import InferRequest, InferResponse, ModelDescription, TensorSpec
from ..runtime.executor import TensorExecutor
from ..runtime.instances import Instances, open_sessions
from ..scheduling.ladder import RungOutlook
from .base import describe
from .loading import (
    Scheduler,
    apply_overrides,
    attach_autoscaler,
    model_file,
    resolve_batch_buckets,
    resolve_batching,
    warm_up_tensors,
)

log = logging.getLogger(__name__)


@dataclass
class TensorModel:
    """One loaded version of a tensor model (see the module docstring)."""

    validate_decodes: ClassVar[bool] = False  # validate() only checks: cheap enough for the event loop

    name: str
    version: int
    config: ModelConfig
    instances: Instances
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int
    stats: ModelStats = field(default_factory=ModelStats)
    metadata: dict[str, str] = field(default_factory=dict)
    path: Path | None = None  # the model file: where autoscaling opens more instances from
    scheduler: Scheduler = field(init=False)
    # Triton's `reshape`: per tensor, the shape the session takes or gives (without the batch dimension
    # when batching) where clients use another (the tensor's `dims`).
    reshape_inputs: dict[str, tuple[int, ...]] = field(init=False, default_factory=dict)
    reshape_outputs: dict[str, tuple[int, ...]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.reshape_inputs = {t.name: tuple(t.reshape) for t in self.config.input if t.reshape is not None}
        self.reshape_outputs = {t.name: tuple(t.dims) for t in self.config.output
                                if t.reshape is not None and t.dims is not None}
        executor = TensorExecutor(self.name, self.instances, self.inputs, self.outputs, self.max_batch_size,
                                  self.stats)
        self.scheduler = Scheduler(self.name, self.config, self.max_batch_size, self.instances.buckets, executor,
                                   len(self.instances), self._shape_key, self._size, self.instances.device)
        attach_autoscaler(self.scheduler, self.name, self.config, self.instances, self.path, executor, self.stats)

    # -- lifecycle ------------------------------------------------------------------------------
    @classmethod
    def load(cls, name: str, version: int, version_dir: Path, config: ModelConfig) -> TensorModel:
        """Open the sessions and resolve the tensors (blocking; run it off the event loop)."""
        source = f"{name}/{version}"
        path = model_file(name, version, version_dir, config)
        sessions = open_sessions(path, config)
        graph_in, graph_out = sessions[0].tensor_specs()
        max_batch = resolve_batching(config, graph_in, graph_out, source)
        inputs = apply_overrides(graph_in, config.input, max_batch > 0, "input", source)
        outputs = apply_overrides(graph_out, config.output, max_batch > 0, "output", source)
        buckets = resolve_batch_buckets(config, max_batch, sessions[0].device, source)
        instances = Instances.with_buckets(sessions, buckets, path, config)
        model = cls(name, version, config, instances, inputs, outputs, max_batch, metadata=sessions[0].metadata(),
                    path=path)
        if config.warmup:
            model.warm_up()
        return model

    def warm_up(self) -> None:
        """Run each instance at every batch size it will execute (see loading.warm_up_tensors)."""
        batch = (-1,) if self.max_batch_size else ()
        inputs = [TensorSpec(t.name, t.datatype, (*batch, *self.reshape_inputs[t.name]))
                  if t.name in self.reshape_inputs else t for t in self.inputs]
        warm_up_tensors(f"{self.name}/{self.version}", self.instances, inputs, self.outputs,
                        self.max_batch_size, self.metadata)

    async def start(self) -> None:
        await self.scheduler.start()

    async def stop(self) -> None:
        await self.scheduler.stop()

    def describe(self) -> ModelDescription:
        return describe(self.name, self.version, self.config.platform, self.inputs, self.outputs,
                        self.max_batch_size, self.config, self.instances, self._details)

    @functools.cached_property
    def _details(self) -> tuple[tuple[str, str], ...]:
        """An ultralytics export's ``metadata`` parameter (:func:`ultralytics_metadata`), made once."""
        text = ultralytics_metadata(self.metadata)
        return (("metadata", text),) if text else ()

    @property
    def queue_depth(self) -> int:
        return self.scheduler.queue_depth

    def outlook(self, now: float) -> RungOutlook:
        return self.scheduler.outlook(now)

    # -- serving --------------------------------------------------------------------------------
    def _size(self, request: InferRequest) -> int:
        if not self.max_batch_size:
            return 1
        return len(next(iter(request.inputs.values())))

    def _shape_key(self, request: InferRequest) -> Hashable:
        key = tuple((n, a.dtype.str, a.shape[1:] if self.max_batch_size else a.shape)
                    for n, a in sorted(request.inputs.items()))
        if any(hasattr(a, "__cuda_array_interface__") for a in request.inputs.values()):
            # Device inputs (CUDA shared memory) run alone, fed to IO binding as they are: batch assembly
            # gathers rows into host buffers.
            return (key, id(request))
        return key

    def validate(self, request: InferRequest) -> InferRequest:
        """Check names, datatypes, shapes and batch size; returns the request to submit to :meth:`infer`.
        Raises InvalidArgument naming the tensor. Runs in the transport's thread, not on the event loop."""
        expected = {t.name: t for t in self.inputs}
        missing = [n for n in expected if n not in request.inputs]
        extra = [n for n in request.inputs if n not in expected]
        if missing or extra:
            named = ", ".join(clipped(n) for n in extra[:8]) + (f" and {len(extra) - 8} more" if len(extra) > 8 else "")
            if missing:  # what came instead, when something did (a misspelt name)
                sent = f" (got {named})" if extra else ""
                raise InvalidArgument(f"model '{self.name}': missing input(s) {', '.join(missing)}{sent}; "
                                      f"expected {', '.join(expected)}")
            raise InvalidArgument(f"model '{self.name}': unexpected input(s) {named}; expected {', '.join(expected)}")
        batch = None
        for name, array in request.inputs.items():
            spec = expected[name]
            got_dt = datatypes.from_numpy(array.dtype).name
            got = f"{got_dt} {list(array.shape)}"
            if got_dt != spec.datatype or array.ndim != len(spec.shape) or any(
                d != -1 and d != s for d, s in zip(spec.shape, array.shape, strict=True)
            ):
                raise InvalidArgument(f"input '{name}': expected {spec.describe()}, got {got}")
            if self.max_batch_size:
                n = array.shape[0]
                if n < 1 or n > self.max_batch_size:
                    raise InvalidArgument(
                        f"input '{name}': batch size {n} is outside 1..{self.max_batch_size} (max_batch_size)"
                    )
                if batch is not None and n != batch:
                    raise InvalidArgument(
                        f"input '{name}': batch size {n} differs from the other inputs' {batch}"
                    )
                batch = n
            if spec.reject_non_finite and array.dtype.kind == "f" and not np.isfinite(array).all():
                raise InvalidArgument(f"input '{name}': holds NaN or infinite values, which this model rejects")
        known = {o.name for o in self.outputs}
        for name in request.requested_outputs:
            if name not in known:
                raise InvalidArgument(
                    f"model '{self.name}': unknown output '{clipped(name)}'; the model has {', '.join(known)}"
                )
        if self.reshape_inputs:
            request.inputs = {n: self._reshaped(a, self.reshape_inputs.get(n)) for n, a in request.inputs.items()}
        return request

    def _reshaped(self, array: np.ndarray, shape: tuple[int, ...] | None) -> np.ndarray:
        """``array`` as ``shape`` (after its batch dimension when batching): a view, no copy."""
        if shape is None:
            return array
        return array.reshape((array.shape[0], *shape) if self.max_batch_size else shape)

    async def infer(self, request: InferRequest) -> InferResponse:
        """Queue, run, answer a request that :meth:`validate` accepted (the caller validates, off the
        event loop). Statistics count every request that got this far, failed or not."""
        start = time.perf_counter_ns()
        ok = False
        reason = "OTHER"  # why it failed, in Triton's words (failure_reason)
        try:
            outputs = await self.scheduler.submit(request)
            if self.reshape_outputs:
                outputs = {n: self._reshaped(a, self.reshape_outputs.get(n)) for n, a in outputs.items()}
            ok = True
            return InferResponse(self.name, str(self.version), request.id, outputs)
        except BaseException as e:
            reason = failure_reason(e)
            raise
        finally:
            self.stats.record_request(ok, time.perf_counter_ns() - start, request.queue_ns, reason)


def ultralytics_metadata(metadata: dict[str, str]) -> str | None:
    """An ultralytics export's metadata (its ONNX metadata: ``names``, ``stride``, ``imgsz``, ``task``, ...)
    as the ``metadata`` parameter of the model's configuration, the way ultralytics' Triton guide has users
    write it into config.pbtxt by hand: a Python dict literal, which ``YOLO("grpc://host:8001/<model>")``
    (its TritonRemoteModel) reads with ``ast.literal_eval`` for the class names, stride, input size and task.
    Each value is the literal its string holds (``"32"`` -> 32, ``"{0: 'person'}"`` -> a dict, ``"False"``
    -> False), else the string. None for a model that is not an ultralytics export."""
    if not {"names", "stride"} <= metadata.keys():
        return None
    out: dict[str, object] = {}
    for key, text in metadata.items():
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            out[key] = text
    return repr(out)
