"""What every kind of model version does when it loads and starts: find its file, resolve its batching and
batch buckets, warm its sessions up, and run its dynamic batcher.

Loading is blocking (ONNX Runtime opens sessions in the calling thread); errors are ModelLoadError
naming the model, version and key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..config.model import DynamicBatchingConfig, ModelConfig, TensorConfig, check_batch_buckets
from ..core import datatypes
from ..core.errors import ModelLoadError
from ..core.stats import ModelStats
from ..core.types import InferRequest, TensorSpec
from ..runtime.instances import Instances
from ..runtime.metadata import export_size
from ..scheduling.autoscale import AutoscaleSettings, AutoscaleState, Observation, decide
from ..scheduling.batcher import BatchExecutor, DynamicBatcher, QueueConfig, QueuePolicy
from ..scheduling.buckets import auto_buckets
from ..scheduling.ladder import RungOutlook
from ..scheduling.policy import BatchPolicy, PolicyConfig

log = logging.getLogger(__name__)

# max_batch_size when config.toml leaves it out and the model can batch (Triton's auto-complete does the same).
DEFAULT_MAX_BATCH_SIZE = 8
# A lone request on an idle instance whose batch computes in at most this long (as measured in the instance's
# thread) runs on the event loop at once: the hop to the thread and back (two wake-ups, ~50-150 us here)
# would cost more than the model. Longer batches always run in their instance's thread, so the loop is never
# held for longer than this. Measured in docs/BENCHMARKS.md (issue 15).
INLINE_RUN_S = 100e-6


def model_file(name: str, version: int, version_dir: Path, config: ModelConfig) -> Path:
    """The version's model file; ModelLoadError when it is missing. A version directory that is an MLflow
    model (an ``MLmodel`` file with the ``onnx`` flavor, as ``mlflow.onnx.save_model`` or a downloaded
    run artifact lays it out) names its file there."""
    mlmodel = version_dir / "MLmodel"
    if mlmodel.is_file() and config.default_model_filename == "model.onnx":  # a configured name wins
        return mlflow_onnx_file(name, version, version_dir, mlmodel)
    path = version_dir / config.default_model_filename
    if not path.is_file():
        raise ModelLoadError(f"{name}/{version}: no {config.default_model_filename} in {version_dir.name}/")
    return path


def mlflow_onnx_file(name: str, version: int, version_dir: Path, mlmodel: Path) -> Path:
    """The ONNX file of an MLflow model directory: its ``MLmodel`` file's ``flavors.onnx.data``."""
    import yaml

    source = f"{name}/{version}/MLmodel"
    try:
        spec = yaml.safe_load(mlmodel.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ModelLoadError(f"{source}: not a readable MLflow model file ({e})") from None
    flavor = (spec or {}).get("flavors", {}).get("onnx") if isinstance(spec, dict) else None
    if not isinstance(flavor, dict) or not isinstance(flavor.get("data"), str):
        flavors = sorted((spec or {}).get("flavors", {})) if isinstance(spec, dict) else []
        raise ModelLoadError(f"{source}: expected an MLflow model with the onnx flavor (flavors.onnx.data), got "
                             f"flavors {flavors or 'none'}")
    path = (version_dir / flavor["data"]).resolve()
    if not path.is_relative_to(version_dir.resolve()) or not path.is_file():
        raise ModelLoadError(f"{source}: flavors.onnx.data '{flavor['data']}' is not a file in {version_dir.name}/")
    return path


def apply_overrides(graph: list[TensorSpec], overrides: list[TensorConfig], batching: bool, kind: str,
                    source: str) -> list[TensorSpec]:
    """The graph's tensors with the config's ``[[input]]``/``[[output]]`` laid over them (checked), as
    clients see them: with a ``reshape``, the graph must fit the reshape and clients use ``dims``."""
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
            fit = tuple(o.reshape if o.reshape is not None else o.dims)
            if len(fit) != len(graph_dims) or any(g not in (-1, d) for g, d in zip(graph_dims, fit, strict=True)):
                raise ModelLoadError(
                    f"{source}: {kind} '{o.name}' has {'reshape' if o.reshape is not None else 'dims'} "
                    f"{list(fit)} in the config, which do not fit {list(graph_dims)} in the model"
                )
            dims = tuple(o.dims)
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
        return auto_buckets(max_batch_size, db.preferred_batch_sizes)
    if not spec:
        return ()
    try:
        check_batch_buckets(spec, max_batch_size)
    except ValueError as e:
        raise ModelLoadError(f"{source}: {e}") from None
    # A request may carry max_batch_size elements, so that size must have a bucket.
    return tuple(sorted(set(spec) | {max_batch_size}))


def warm_up_tensors(source: str, instances: Instances, inputs: list[TensorSpec], outputs: list[TensorSpec],
                    max_batch_size: int, metadata: dict[str, str]) -> None:
    """Run each instance once at every batch size it will execute, so that the first requests do not pay
    for lazy initialisation (memory arenas, cuDNN plans).

    On a GPU provider that is every batch bucket (without buckets: 1 and max_batch_size). On the CPU only
    the smallest size runs: measured with yolov8n at max_batch_size 16 on the CPU EP, a fresh session's
    first run of a size is as fast as its next ones, while warming batch 16 added about a second to every
    load. Dynamic dimensions other than the batch are guessed as 1 and BYTES elements are b"0" (text that
    is also a number). Warm-up runs on made-up data, so a model that rejects it is still served: the
    failure is logged (WARNING) and warm-up stops; it never makes a valid model unavailable."""
    guessed = any(d == -1 for t in inputs for d in (t.shape[1:] if max_batch_size else t.shape))
    # Dynamic height and width of an image input [N, C, H, W]: the size the model was exported at
    # ('imgsz' metadata), else 64 (a multiple of common strides); other dynamic dims: 1.
    spatial = export_size(metadata) or (64, 64)
    rng = np.random.default_rng(0)
    buckets = instances.buckets
    if not max_batch_size:
        batches = [0]
    elif instances.device != "cuda":
        batches = [buckets[0] if buckets else 1]
    else:
        batches = list(buckets) or sorted({1, max_batch_size})
    for batch in batches:
        feed = {}
        for t in inputs:
            dims = list(t.shape)
            if len(dims) == 4:
                dims[2:] = [spatial[i] if d == -1 else d for i, d in enumerate(dims[2:])]
            dims = [1 if d == -1 else d for d in dims]
            if batch:
                dims[0] = batch
            shape = tuple(dims)
            dt = datatypes.from_name(t.datatype)
            if dt.name == "BYTES":
                feed[t.name] = np.full(shape, b"0", dtype=object)
            elif dt.name == "BOOL":
                feed[t.name] = rng.random(shape) > 0.5
            else:
                feed[t.name] = rng.random(shape).astype(dt.numpy)
        for s in instances.runners(batch):
            try:
                s.run(feed, [o.name for o in outputs])
            except Exception as e:
                if guessed:
                    log.info("%s: warm-up skipped, the model needs real sizes for its dynamic dims (%s)", source, e)
                else:
                    log.warning("%s: warm-up on synthetic inputs failed, serving the model without it (set "
                                "warmup = false in config.toml to skip it): %s", source, e)
                return


def queue_config(db: DynamicBatchingConfig | None) -> QueueConfig:
    """Triton's queue settings of ``[dynamic_batching]`` for the batcher."""
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


def policy_config(db: DynamicBatchingConfig | None, max_batch_size: int, buckets: tuple[int, ...]) -> PolicyConfig:
    """The batching policy of ``[dynamic_batching]`` (none: every request runs alone)."""
    return PolicyConfig(
        max_batch_size=max_batch_size if (max_batch_size > 0 and db is not None) else 1,
        preferred_batch_sizes=tuple(db.preferred_batch_sizes) if db else (),
        max_queue_delay=(db.max_queue_delay_us / 1e6) if db else 0.0,
        adaptive=bool(db and db.window == "adaptive"),
        batch_buckets=buckets,
    )


class Scheduler:
    """A model version's dynamic batcher and the threads its instances run batches in (one each).

    Started on the event loop (:meth:`start`), which then owns it; requests reach it with :meth:`submit`.
    """

    def __init__(self, name: str, config: ModelConfig, max_batch_size: int, buckets: tuple[int, ...],
                 executor: BatchExecutor, instances: int, shape_key: Callable[[InferRequest], Hashable],
                 size: Callable[[InferRequest], int], device: str = "cpu") -> None:
        self.name = name
        self.device = device
        self._seeds: list[tuple[int, float]] = []
        self._policy = policy_config(config.dynamic_batching, max_batch_size, buckets)
        self._queue = queue_config(config.dynamic_batching)
        self._executor = executor
        self._instances = instances
        self._shape_key = shape_key
        self._size = size
        self._pools: list[ThreadPoolExecutor] = []
        self.batcher: DynamicBatcher | None = None
        self.scaler: InstanceScaler | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def instances(self) -> int:
        return len(self._pools)

    async def start(self) -> None:
        """Start the batcher on the running event loop."""
        self._pools = [ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-{i}") for i in range(self._instances)]
        loop = asyncio.get_running_loop()

        def run_in_thread(instance: int, fn: Any) -> Any:
            return loop.run_in_executor(self._pools[instance], fn)

        self.batcher = DynamicBatcher(BatchPolicy(self._policy), self._executor, self._instances, self._queue,
                                      shape_key=self._shape_key, size=self._size, run_in_thread=run_in_thread,
                                      inline_s=INLINE_RUN_S, device=self.device)
        for n, seconds in self._seeds:
            self.batcher.seed(n, seconds)
        self.batcher.start()
        if self.scaler is not None:
            self._tasks.append(loop.create_task(self.scaler.run(self), name=f"{self.name}-autoscale"))

    def add_instance(self) -> None:
        """Put instance number ``instances`` (its session opened) in service, with a thread of its own."""
        assert self.batcher is not None
        self._pools.append(ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-{len(self._pools)}"))
        self.batcher.add_instance(len(self._pools) - 1)

    async def remove_instance(self) -> int:
        """Take the last instance out of service (once its running batch is done); returns its number."""
        assert self.batcher is not None
        instance = len(self._pools) - 1
        await self.batcher.retire_instance(instance)
        self._pools.pop().shutdown(wait=False)
        return instance

    def seed(self, n: int, seconds: float) -> None:
        """A batch of ``n`` took ``seconds`` when timed before serving (warm-up): the batcher's cost models
        start from it."""
        self._seeds.append((n, seconds))
        if self.batcher is not None:
            self.batcher.seed(n, seconds)

    def outlook(self, now: float) -> RungOutlook:
        """The queue's load for the SLO ladder's routing (:mod:`..scheduling.ladder`)."""
        assert self.batcher is not None, "model not started"
        return self.batcher.outlook(self.name, now)

    async def submit(self, request: InferRequest) -> Any:
        assert self.batcher is not None, "model not started"
        return await self.batcher.submit(request)

    async def stop(self) -> None:
        """Let queued and running requests finish, then stop the batcher and its threads."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.batcher:
            await self.batcher.close()
        for p in self._pools:
            p.shutdown(wait=True)

    @property
    def queue_depth(self) -> int:
        return self.batcher.queue_depth if self.batcher else 0


class InstanceScaler:
    """The autoscaling driver of one model version (the policy: :mod:`~..scheduling.autoscale`): samples its
    queue depth four times an interval and its mean latency over the interval, asks the policy, and opens
    or closes one instance (the last opened is the first closed). ``grow(i)`` opens instance ``i``'s
    session (blocking: it runs in a thread), ``shrink(i)`` drops it once it is out of service;
    ``latency()`` is the model's cumulative (successful requests, their total nanoseconds)."""

    def __init__(self, name: str, settings: AutoscaleSettings, interval_s: float, grow: Callable[[int], None],
                 shrink: Callable[[int], None], latency: Callable[[], tuple[int, int]]) -> None:
        self.name = name
        self.settings = settings
        self.interval_s = interval_s
        self._grow, self._shrink, self._latency = grow, shrink, latency
        self.decisions: list[tuple[float, int, int, str]] = []  # (time.time(), from, to, why), the last 100

    async def run(self, scheduler: Scheduler) -> None:
        loop = asyncio.get_running_loop()
        state = AutoscaleState()
        count0, ns0 = self._latency()
        while True:
            depths = []
            for _ in range(4):
                await asyncio.sleep(self.interval_s / 4)
                depths.append(scheduler.queue_depth)
            count, ns = self._latency()
            latency = (ns - ns0) / (count - count0) / 1e9 if count > count0 else None
            count0, ns0 = count, ns
            running = scheduler.instances
            decision, state = decide(self.settings, state,
                                     Observation(loop.time(), running, sum(depths) / len(depths), latency))
            if not decision.changes(running):
                continue
            log.info("model '%s': %d -> %d instances: %s", self.name, running, decision.instances, decision.reason)
            self.decisions = [*self.decisions[-99:], (time.time(), running, decision.instances, decision.reason)]
            try:
                if decision.instances > running:
                    await loop.run_in_executor(None, self._grow, running)
                    scheduler.add_instance()
                else:
                    self._shrink(await scheduler.remove_instance())
            except Exception:  # a session that fails to open leaves the model as it was
                log.exception("model '%s': autoscaling to %d instances failed", self.name, decision.instances)


class GrowingExecutor(Protocol):
    """An executor that keeps per-instance state, told when an instance comes and goes."""

    def instance_added(self) -> None: ...

    def instance_removed(self) -> None: ...


def attach_autoscaler(scheduler: Scheduler, name: str, config: ModelConfig, instances: Instances,
                      path: Path | None, executor: GrowingExecutor, stats: ModelStats) -> None:
    """Give ``scheduler`` an :class:`InstanceScaler` when ``config`` asks for autoscaling: it opens more
    sessions of ``path`` in ``instances`` (and tells ``executor``) and closes the last ones."""
    settings = autoscale_settings(config)
    if settings is None or path is None:
        return

    def grow(instance: int) -> None:
        instances.open_instance(path, config)
        executor.instance_added()

    def shrink(instance: int) -> None:
        executor.instance_removed()
        instances.close_last()

    scheduler.scaler = InstanceScaler(name, settings, config.instance_group.autoscale.interval_s,  # type: ignore[union-attr]
                                      grow, shrink, lambda: (stats.success.count, stats.success.ns))


def autoscale_settings(config: ModelConfig) -> AutoscaleSettings | None:
    a = config.instance_group.autoscale
    if a is None:
        return None
    return AutoscaleSettings(a.min, a.max, None if a.slo_ms is None else a.slo_ms / 1e3, a.queue_up, a.queue_down,
                             a.up_after_s, a.down_after_s, a.cooldown_s)
