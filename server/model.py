"""One loaded version of a model: its tensors, its instances, its scheduler and its statistics.

This is the data plane the transport calls: ``validate`` checks a decoded request against the model's
inputs, ``infer`` queues it with the dynamic batcher and returns the outputs.
"""

from __future__ import annotations

import ast
import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import datatypes
from .config import ModelConfig, TensorConfig, check_batch_buckets
from .errors import InvalidArgument, ModelLoadError
from .inference import InferRequest, InferResponse, TensorSpec
from .runtime.executor import OnnxBatchExecutor
from .runtime.onnx import OnnxSession
from .scheduling.batcher import BatchExecutor, DynamicBatcher, QueueConfig, QueuePolicy
from .scheduling.policy import BatchPolicy, PolicyConfig
from .stats import ModelStats

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_SIZE = 8


def _apply_overrides(graph: list[TensorSpec], overrides: list[TensorConfig], batching: bool, kind: str,
                     source: str) -> list[TensorSpec]:
    by_name = {t.name: t for t in graph}
    for o in overrides:
        if o.name not in by_name:
            raise ModelLoadError(
                f"{source}: {kind} '{o.name}' is not in the model (the graph has {', '.join(by_name) or 'none'})"
            )
        spec = by_name[o.name]
        if o.data_type and o.data_type != spec.datatype:
            raise ModelLoadError(
                f"{source}: {kind} '{o.name}' has data_type {o.data_type} in the config but {spec.datatype} "
                "in the model"
            )
        shape = spec.shape
        if o.dims is not None:
            graph_dims = shape[1:] if batching else shape
            dims = tuple(o.dims)
            if len(dims) != len(graph_dims) or any(g not in (-1, d) for g, d in zip(graph_dims, dims, strict=True)):
                raise ModelLoadError(
                    f"{source}: {kind} '{o.name}' has dims {list(dims)} in the config, which do not fit "
                    f"{list(graph_dims)} in the model"
                )
            shape = (-1, *dims) if batching else dims
        by_name[o.name] = TensorSpec(spec.name, spec.datatype, shape, o.reject_non_finite)
    return [by_name[t.name] for t in graph]


def resolve_batching(config: ModelConfig, inputs: list[TensorSpec], outputs: list[TensorSpec],
                     source: str) -> int:
    """The model's max_batch_size: as configured (checked against the graph), or inferred."""
    first_dims_dynamic = all(t.shape and t.shape[0] == -1 for t in inputs + outputs)
    if config.max_batch_size is None:
        return DEFAULT_MAX_BATCH_SIZE if first_dims_dynamic else 0
    if config.max_batch_size > 0 and not first_dims_dynamic:
        fixed = [t.name for t in inputs + outputs if not t.shape or t.shape[0] != -1]
        raise ModelLoadError(
            f"{source}: max_batch_size is {config.max_batch_size} but tensor(s) {', '.join(fixed)} have no "
            "dynamic first (batch) dimension in the model; set max_batch_size = 0"
        )
    return config.max_batch_size


def resolve_batch_buckets(config: ModelConfig, max_batch_size: int, device: str, source: str) -> tuple[int, ...]:
    """The batch sizes this model version executes at, ascending; empty when batches run at their own
    size. ``device`` is where the sessions run ("cpu" or "cuda"). Raises ModelLoadError for explicit
    buckets that do not fit ``max_batch_size``."""
    db = config.dynamic_batching
    if db is None:
        return ()
    spec = db.batch_buckets
    if spec == "auto":
        if device != "cuda" or max_batch_size == 0:
            # On the CPU EP a new shape costs nothing to plan (measured: the first run of a size is as
            # fast as the next), so padding would only waste compute.
            return ()
        sizes = {1 << k for k in range(max_batch_size.bit_length()) if 1 << k <= max_batch_size}
        sizes |= {p for p in db.preferred_batch_sizes if p <= max_batch_size}
    else:
        if not spec:
            return ()
        try:
            check_batch_buckets(spec, max_batch_size)
        except ValueError as e:
            raise ModelLoadError(f"{source}: {e}") from None
        sizes = set(spec)
    # A request may carry max_batch_size elements, so that size must have a bucket.
    return tuple(sorted(sizes | {max_batch_size}))


def open_bucket_sessions(sessions: list[OnnxSession], buckets: tuple[int, ...],
                         open_session: Callable[[int], OnnxSession]) -> list[dict[int, OnnxSession]]:
    """Per instance, the session that runs each batch bucket; empty when every batch of an instance
    runs on its one session.

    On a GPU provider each bucket gets a session of its own. ORT's CUDA convolutions keep the plan of
    the last input shape they ran and rebuild it (cuDNN frontend graph and plans) whenever the shape
    differs from the previous run's, so one session alternating between buckets would pay for it on
    every change of bucket; a session that only ever sees one shape plans once, at warm-up. The
    instance's own session takes the largest bucket; ``open_session(instance)`` opens the others.
    Each session holds its own copy of the weights and its own memory arena. On the CPU, where a new
    shape costs nothing to plan, the instance's one session runs every bucket."""
    if not buckets or sessions[0].device != "cuda":
        return []
    return [
        {b: (session if b == buckets[-1] else open_session(i)) for b in buckets}
        for i, session in enumerate(sessions)
    ]


def export_size(metadata: dict[str, str]) -> tuple[int, int] | None:
    """The input size an ultralytics export records in its ``imgsz`` metadata ("[640, 640]" or "640")."""
    try:
        value = ast.literal_eval(metadata.get("imgsz", ""))
    except (ValueError, SyntaxError):
        return None
    if isinstance(value, int):
        value = [value, value]
    if (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value)
            and all(0 < v <= 8192 for v in value)):
        return int(value[0]), int(value[1])
    return None


@dataclass
class ModelVersion:
    name: str
    version: int
    path: Path
    config: ModelConfig
    sessions: list[OnnxSession]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int
    stats: ModelStats = field(default_factory=ModelStats)
    metadata: dict[str, str] = field(default_factory=dict)
    batcher: DynamicBatcher | None = None
    # Sizes batches are executed at (padded up to), ascending; empty: each batch at its own size.
    batch_buckets: tuple[int, ...] = ()
    # Per instance, bucket -> the session that runs it (GPU providers); empty: `sessions` run everything.
    bucket_sessions: list[dict[int, OnnxSession]] = field(default_factory=list)
    _pools: list[ThreadPoolExecutor] = field(default_factory=list)

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, name: str, version: int, version_dir: Path, config: ModelConfig) -> ModelVersion:
        """Open the sessions and resolve the tensors (blocking; run it off the event loop)."""
        path = version_dir / config.default_model_filename
        source = f"{name}/{version}"
        if not path.is_file():
            raise ModelLoadError(f"{source}: no {config.default_model_filename} in {version_dir.name}/")
        sessions = [OnnxSession(path, config, device_id=_gpu(config, i)) for i in range(config.instance_group.count)]
        graph_in, graph_out = sessions[0].tensor_specs()
        max_batch = resolve_batching(config, graph_in, graph_out, source)
        inputs = _apply_overrides(graph_in, config.input, max_batch > 0, "input", source)
        outputs = _apply_overrides(graph_out, config.output, max_batch > 0, "output", source)
        buckets = resolve_batch_buckets(config, max_batch, sessions[0].device, source)
        per_bucket = open_bucket_sessions(sessions, buckets,
                                          lambda i: OnnxSession(path, config, device_id=_gpu(config, i)))
        model = cls(name, version, path, config, sessions, inputs, outputs, max_batch,
                    metadata=sessions[0].metadata(), batch_buckets=buckets, bucket_sessions=per_bucket)
        if config.warmup:
            model.warm_up()
        return model

    def warm_up(self) -> None:
        """Run each instance once at every batch size it will execute, so that the first requests do
        not pay for lazy initialisation (memory arenas, cuDNN plans).

        On a GPU provider that is every batch bucket (without buckets: 1 and max_batch_size). On the
        CPU only the smallest size runs: measured with yolov8n at max_batch_size 16 on the CPU EP, a
        fresh session's first run of a size is as fast as its next ones, while warming batch 16 added
        about a second to every load. Dynamic dimensions other than the batch are guessed as 1; a
        model that rejects the guess is still served (warm-up skipped, logged)."""
        guessed = any(d == -1 for t in self.inputs for d in (t.shape[1:] if self.max_batch_size else t.shape))
        # Dynamic height and width of an image input [N, C, H, W]: the size the model was exported at
        # ('imgsz' metadata), else 64 (a multiple of common strides); other dynamic dims: 1.
        spatial = export_size(self.metadata) or (64, 64)
        rng = np.random.default_rng(0)
        if not self.max_batch_size:
            batches = [0]
        elif self.sessions[0].device != "cuda":
            batches = [self.batch_buckets[0] if self.batch_buckets else 1]
        else:
            batches = list(self.batch_buckets) or sorted({1, self.max_batch_size})
        for batch in batches:
            feed = {}
            for t in self.inputs:
                dims = list(t.shape)
                if len(dims) == 4:
                    dims[2:] = [spatial[i] if d == -1 else d for i, d in enumerate(dims[2:])]
                dims = [1 if d == -1 else d for d in dims]
                if batch:
                    dims[0] = batch
                shape = tuple(dims)
                dt = datatypes.from_name(t.datatype)
                if dt.name == "BYTES":
                    feed[t.name] = np.full(shape, b"warmup", dtype=object)
                elif dt.name == "BOOL":
                    feed[t.name] = rng.random(shape) > 0.5
                else:
                    feed[t.name] = rng.random(shape).astype(dt.numpy)
            runners = [per[batch] for per in self.bucket_sessions] if self.bucket_sessions else self.sessions
            for s in runners:
                try:
                    s.run(feed, [o.name for o in self.outputs])
                except Exception as e:
                    if not guessed:
                        raise ModelLoadError(f"{self.name}/{self.version}: warm-up run failed: {e}") from None
                    log.info("%s/%s: warm-up skipped, the model needs real sizes for its dynamic dims (%s)",
                             self.name, self.version, e)
                    return

    async def start(self) -> None:
        """Start the scheduler on the running event loop."""
        cfg = self.config
        db = cfg.dynamic_batching
        batching = self.max_batch_size > 0
        policy_cfg = PolicyConfig(
            max_batch_size=self.max_batch_size if (batching and db is not None) else 1,
            preferred_batch_sizes=tuple(db.preferred_batch_sizes) if db else (),
            max_queue_delay=(db.max_queue_delay_us / 1e6) if db else 0.0,
            adaptive=bool(db and db.window == "adaptive"),
            batch_buckets=self.batch_buckets,
        )
        queue_cfg = _queue_config(db)
        executor = self.make_executor()
        self._pools = [ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-{i}") for i in range(len(self.sessions))]
        loop = asyncio.get_running_loop()

        def run_in_thread(instance: int, fn: Any) -> Any:
            return loop.run_in_executor(self._pools[instance], fn)

        self.batcher = DynamicBatcher(
            BatchPolicy(policy_cfg), executor, len(self.sessions), queue_cfg,
            shape_key=self._shape_key, size=self._size, run_in_thread=run_in_thread,
        )
        self.batcher.start()

    def make_executor(self) -> BatchExecutor:
        """What runs a batch on an instance (the detection pipeline brings its own)."""
        return OnnxBatchExecutor(self.name, self.sessions, self.inputs, self.outputs, self.max_batch_size > 0,
                                 max(self.max_batch_size, 1), self.stats, self.batch_buckets,
                                 self.bucket_sessions)

    async def stop(self) -> None:
        if self.batcher:
            await self.batcher.close()
        for p in self._pools:
            p.shutdown(wait=True)

    # -- serving ------------------------------------------------------------------------------
    @property
    def providers(self) -> list[str]:
        return self.sessions[0].providers

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
        if missing:
            raise InvalidArgument(
                f"model '{self.name}': missing input(s) {', '.join(missing)}; expected {', '.join(expected)}"
            )
        extra = [n for n in request.inputs if n not in expected]
        if extra:
            raise InvalidArgument(
                f"model '{self.name}': unexpected input(s) {', '.join(extra)}; expected {', '.join(expected)}"
            )
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
                    f"model '{self.name}': unknown output '{name}'; the model has {', '.join(known)}"
                )
        return request

    async def infer(self, request: InferRequest) -> InferResponse:
        """Queue, run, answer a request that :meth:`validate` accepted (the caller validates, off the
        event loop). Statistics count every request that got this far, failed or not."""
        start = time.perf_counter_ns()
        ok = False
        try:
            assert self.batcher is not None, "model not started"
            outputs = await self.batcher.submit(request)
            ok = True
            return InferResponse(self.name, str(self.version), request.id, outputs, request.typed_contents)
        finally:
            self.stats.record_request(ok, time.perf_counter_ns() - start, request.queue_ns)


def _gpu(config: ModelConfig, instance: int) -> int:
    gpus = config.instance_group.gpus or [0]
    return gpus[instance % len(gpus)]


def _queue_config(db: Any) -> QueueConfig:
    if db is None:
        return QueueConfig()

    def policy(p: Any) -> QueuePolicy:
        return QueuePolicy(
            timeout=p.default_timeout_us / 1e6,
            delay_on_timeout=p.timeout_action == "delay",
            allow_timeout_override=p.allow_timeout_override,
            max_queue_size=p.max_queue_size,
        )

    return QueueConfig(
        max_queue_size=db.max_queue_size,
        priority_levels=db.priority_levels,
        default_priority_level=db.default_priority_level,
        preserve_ordering=db.preserve_ordering,
        default_policy=policy(db.default_queue_policy),
        level_policies=tuple((k, policy(v)) for k, v in db.priority_queue_policy.items()),
    )

