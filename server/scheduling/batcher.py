"""The dynamic batcher's asyncio driver: one queue per model version, one future per request.

The driver owns the queue and the futures; :class:`BatchPolicy` decides. Each decision either
expires requests (DEADLINE_EXCEEDED, never run), dispatches a batch to an idle instance, or sleeps
until the policy's wake time or the next arrival/completion, whichever comes first.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..core.errors import Cancelled, DeadlineExceeded, InvalidArgument, ModelExecutionError, PeregrineError, Unavailable
from ..core.types import InferRequest
from .device_load import device_load
from .ladder import RungOutlook
from .policy import INF, BatchPolicy, CostModel, QueuedRequest

log = logging.getLogger(__name__)


class BatchExecutor(Protocol):
    """Runs one batch on one instance, in a worker thread. Returns one result per request, in order."""

    def execute(self, instance: int, requests: Sequence[InferRequest]) -> list[Any]: ...


@dataclass(frozen=True)
class QueuePolicy:
    """What happens to a request that waits longer than its queue timeout (Triton's ModelQueuePolicy)."""

    timeout: float = 0.0  # seconds; 0: none
    delay_on_timeout: bool = False  # False: REJECT (DEADLINE_EXCEEDED); True: DELAY (go behind others)
    allow_timeout_override: bool = True
    max_queue_size: int = 0  # per priority level; 0: unbounded


@dataclass(frozen=True)
class QueueConfig:
    max_queue_size: int = 0  # all levels together; 0: unbounded
    priority_levels: int = 0
    default_priority_level: int = 0
    preserve_ordering: bool = False
    default_policy: QueuePolicy = QueuePolicy()
    level_policies: tuple[tuple[int, QueuePolicy], ...] = ()

    def policy_for(self, level: int) -> QueuePolicy:
        return dict(self.level_policies).get(level, self.default_policy)


class DynamicBatcher:
    """Queues requests of one model version and runs them in batches on ``instances`` executors.

    ``shape_key(request)`` says which requests may share a batch and ``size(request)`` how many batch
    elements a request carries. ``on_batch(n, seconds)`` is told each batch's size and run time.
    """

    def __init__(
        self,
        policy: BatchPolicy,
        executor: BatchExecutor,
        instances: int,
        queue: QueueConfig,
        shape_key: Callable[[InferRequest], Hashable],
        size: Callable[[InferRequest], int],
        run_in_thread: Callable[[int, Callable[[], Any]], Any],
        clock: Callable[[], float] = time.monotonic,
        inline_s: float = 0.0,
        inline_max_bytes: int = 64 * 1024,
        device: str = "cpu",
    ) -> None:
        self.policy = policy
        self.executor = executor
        self.queue_config = queue
        self._shape_key = shape_key
        self._size = size
        self._run_in_thread = run_in_thread
        self._clock = clock
        # A lone request whose batch is expected to compute in at most this long runs on the event loop
        # itself, at once (0: never): for tiny models the hop to the instance's thread and back costs more
        # than the model. The estimate is of the executor's own time, without that hop.
        self.inline_s = inline_s
        # ... and carries at most this many bytes of inputs: the cost model learns per batch row, and a row
        # of a model with other dynamic dimensions may be far larger than the rows it learned from.
        self.inline_max_bytes = inline_max_bytes
        self._compute = CostModel()
        # The executor's time alone on its device (batches of other models running beside one divided out,
        # see device_load.py): what the SLO ladder's outlook scales by the device's load when it routes.
        self.device = device
        self._load = device_load(device)
        self._alone = CostModel()
        self._queue: list[QueuedRequest] = []
        self._idle = list(range(instances))
        # instance -> when its running batch is expected to end (clock), as it would alone on the device (the
        # ladder's outlook scales it by the device's load)
        self._busy: dict[int, float] = {}
        self._retiring: set[int] = set()  # instances to take out of service once their batch is done
        self._retired = asyncio.Event()
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._last_in_order: dict[str, asyncio.Future[Any]] = {}

    # -- public API ---------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def outlook(self, name: str, now: float) -> RungOutlook:
        """This queue's load as the SLO ladder's routing sees it (:mod:`.ladder`), at ``now`` (its clock)."""
        policy = self.policy
        cfg, cost = policy.config, policy.cost
        one = policy.executed_size(1)
        batching = cfg.max_batch_size > 1 and not (cfg.adaptive and not cost.batching_pays(cfg.max_batch_size,
                                                                                         single=one))
        size = cfg.max_batch_size if batching else 1
        alone = self._alone_cost()
        free_in = tuple(max(end - now, 0.0) for end in self._busy.values()) + (0.0,) * len(self._idle)
        return RungOutlook(name, alone.ready, alone.upper(one), alone.upper(policy.executed_size(size)), size,
                           sum(e.size for e in self._queue if not e.background), free_in, self.device,
                           self._load.concurrency(), per_element=alone.per_item)

    def _alone_cost(self) -> CostModel:
        """The cost model of batches alone on the device; the executor's plain one until it has seen a batch."""
        return self._alone if self._alone.ready else self.policy.cost

    def seed(self, n: int, seconds: float) -> None:
        """A batch of ``n`` elements (as executed: padded to its bucket, if any) took ``seconds`` alone on the
        device, measured before serving (a timed warm-up run): the cost models start from it instead of from
        the first request's batch."""
        executed = self.policy.executed_size(n)
        for model in (self.policy.cost, self._compute, self._alone):
            model.observe_batch(executed, seconds)

    async def submit(self, request: InferRequest) -> Any:
        """Queue a request and wait for its result. Raises Unavailable at once when the queue is full,
        DeadlineExceeded when its deadline or queue timeout passes first."""
        if self._closed:
            raise Unavailable(f"model '{request.model_name}' is unloading")
        entry = self._admit(request)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        # A dispatched request whose caller went away still completes; nobody reads its outcome.
        future.add_done_callback(_consume)
        entry.payload = (request, future)
        key = request.ordering_key
        previous = delivered = None
        if self.queue_config.preserve_ordering:
            previous = self._last_in_order.get(key)
            delivered = loop.create_future()
            self._last_in_order[key] = delivered
        self.policy.cost.observe_arrival(entry.arrival)
        if not self._queue and self._idle and self._task is not None:
            # Fast path: a lone request and an idle instance. When the policy runs it at once, it is
            # dispatched from here, without waking the batcher's loop; otherwise it queues as any other.
            try:
                batch = self.policy.decide((entry,), entry.arrival, len(self._idle)).batch
            except Exception:  # the loop decides again, and fails the request as it fails any
                batch = []
            if batch and self._inline(entry.size) and _input_bytes(request) <= self.inline_max_bytes:
                self._run_inline(entry)
            elif batch:
                self._dispatch(batch, entry.arrival)
            else:
                self._queue.append(entry)
                self._wake.set()
        else:
            self._queue.append(entry)
            self._wake.set()
        error: Exception | None = None
        try:
            try:
                result = await asyncio.shield(future)
            except asyncio.CancelledError:
                if entry in self._queue:  # not dispatched yet: it never reaches an instance
                    self._queue.remove(entry)
                    if not future.done():
                        future.set_exception(Cancelled("request cancelled by the client"))
                raise
            except Exception as e:
                result, error = None, e
            if previous is not None and not previous.done():
                # Answer in arrival order per client: wait for the previous request to be answered.
                await asyncio.wait([previous])
            if error is not None:
                raise error
            return result
        finally:
            if delivered is not None:
                delivered.set_result(None)
                if self._last_in_order.get(key) is delivered:
                    del self._last_in_order[key]

    def add_instance(self, instance: int) -> None:
        """Put a new instance (its session opened by the caller) in service."""
        self._idle.append(instance)
        self._wake.set()

    async def retire_instance(self, instance: int) -> None:
        """Take ``instance`` out of service: at once when idle, else when its running batch is done."""
        if instance in self._idle:
            self._idle.remove(instance)
            return
        self._retiring.add(instance)
        while instance in self._retiring:
            self._retired.clear()
            await self._retired.wait()

    def _give_back(self, instance: int) -> None:
        self._busy.pop(instance, None)
        if instance in self._retiring:
            self._retiring.discard(instance)
            self._retired.set()
            return
        self._idle.append(instance)

    async def close(self) -> None:
        """Stop taking requests, let queued and running ones finish, then stop the loop."""
        self._closed = True
        while self._queue or self._running:
            self._wake.set()
            await asyncio.sleep(0.001)
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # -- internals ----------------------------------------------------------------------------
    def _admit(self, request: InferRequest) -> QueuedRequest:
        qc = self.queue_config
        level = request.priority or qc.default_priority_level
        if qc.priority_levels and not 1 <= level <= qc.priority_levels:
            raise InvalidArgument(
                f"parameters.priority: expected 1..{qc.priority_levels} (or 0 for the default), got {request.priority}"
            )
        if not qc.priority_levels:
            level = 0
        if qc.max_queue_size and len(self._queue) >= qc.max_queue_size:
            raise Unavailable(
                f"model '{request.model_name}': queue is full ({qc.max_queue_size} requests waiting); retry later"
            )
        policy = qc.policy_for(level)
        if policy.max_queue_size and sum(1 for e in self._queue if e.priority == level) >= policy.max_queue_size:
            raise Unavailable(
                f"model '{request.model_name}': queue of priority {level} is full ({policy.max_queue_size} waiting)"
            )
        now = self._clock()
        timeout = policy.timeout
        requested = request.parameters.get("timeout")
        if requested and policy.allow_timeout_override:
            # A request may shorten the queue timeout, never lengthen it.
            t = requested / 1e6
            timeout = min(timeout, t) if timeout else t
        deadline = request.deadline if request.deadline is not None else INF
        delay_at = INF
        if timeout:
            if policy.delay_on_timeout:
                delay_at = now + timeout
            else:
                deadline = min(deadline, now + timeout)
        return QueuedRequest(
            seq=next(self._seq),
            arrival=now,
            size=self._size(request),
            shape_key=self._shape_key(request),
            priority=level,
            background=request.background,
            deadline=deadline,
            delay_at=delay_at,
        )

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            now = self._clock()
            try:
                decision = self.policy.decide(self._queue, now, len(self._idle))
            except Exception as e:
                # A scheduling bug must fail the queued requests (INTERNAL), not leave them waiting forever.
                log.error("batch policy failed; failing %d queued requests", len(self._queue), exc_info=e)
                failed, self._queue = self._queue, []
                for entry in failed:
                    if not entry.payload[1].done():
                        entry.payload[1].set_exception(_logged(entry.payload[0], e))
                continue
            for entry in decision.expired:
                self._queue.remove(entry)
                _, future = entry.payload
                if not future.done():
                    future.set_exception(
                        DeadlineExceeded("deadline exceeded while queued; the request was not run")
                    )
            if decision.batch:
                for entry in decision.batch:
                    self._queue.remove(entry)
                self._dispatch(decision.batch, now)
                continue  # another instance may be idle too
            if decision.wake_at == INF:
                await self._wake.wait()
                continue
            timer = asyncio.get_running_loop().call_later(max(decision.wake_at - self._clock(), 0.0),
                                                          self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()

    def _dispatch(self, batch: list[QueuedRequest], now: float) -> None:
        """Run ``batch`` on an idle instance, in a task of its own (a caller that goes away does not stop
        a batch that may hold other callers' requests)."""
        instance = self._idle.pop(0)
        cost = self._alone_cost()
        self._busy[instance] = now + (cost.upper(self.policy.executed_size(sum(r.size for r in batch)))
                                      if cost.ready else 0.0)
        task = asyncio.get_running_loop().create_task(self._run_batch(instance, batch, now))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run_batch(self, instance: int, entries: list[QueuedRequest], dispatched: float) -> None:
        for e in entries:
            e.payload[0].queue_ns = int((dispatched - e.arrival) * 1e9)
        try:
            error = await self._execute(instance, entries)
            if error is None:
                return
            if len(entries) == 1:
                self._fail(entries, error)
                return
            # A batch of several requests failed: one bad request must not fail the others, who may be other
            # clients. Each runs again alone, on this instance, and gets its own result or error.
            log.warning("batch of %d requests failed (%s); running each request alone", len(entries), error)
            traceback = True  # an unexpected error's traceback is logged once for the batch
            for entry in entries:
                request, future = entry.payload
                if request.deadline is not None and self._clock() >= request.deadline:
                    if not future.done():
                        future.set_exception(DeadlineExceeded(
                            "deadline exceeded before the request could run again after its batch failed"))
                    continue
                error = await self._execute(instance, [entry])
                if error is not None and self._fail([entry], error, traceback):
                    traceback = False
        finally:
            self._give_back(instance)
            self._wake.set()

    async def _execute(self, instance: int, entries: list[QueuedRequest]) -> Exception | None:
        """Run ``entries`` as one batch in the instance's thread; answer their futures with its results, or
        return its error."""
        requests = [e.payload[0] for e in entries]
        executed = self.policy.executed_size(sum(e.size for e in entries))
        start = time.perf_counter()

        try:
            results, computed, alone = await self._run_in_thread(instance, lambda: self._timed(instance, requests))
        except Exception as e:
            return e
        self._learn(executed, computed, alone)
        return self._answer(entries, results, executed, time.perf_counter() - start)

    def _timed(self, instance: int, requests: list[InferRequest]) -> tuple[list[Any], float, float]:
        """Run a batch on ``instance``: its results, its seconds, and its seconds alone on the device."""
        mark = self._load.begin()
        try:
            results = self.executor.execute(instance, requests)
        finally:
            seconds, alone = self._load.end(mark)
        return results, seconds, alone

    def _learn(self, executed: int, seconds: float, alone: float) -> None:
        """The executor's cost models learn a batch of ``executed`` elements that ran that long."""
        self._compute.observe_batch(executed, seconds)
        self._alone.observe_batch(executed, alone)

    def _inline(self, size: int) -> bool:
        return self.inline_s > 0 and self._compute.ready and \
            self._compute.upper(self.policy.executed_size(size)) <= self.inline_s

    def _run_inline(self, entry: QueuedRequest) -> None:
        """Run a lone request now, on the loop, on an idle instance (see ``inline_s``)."""
        instance = self._idle.pop(0)
        entry.payload[0].queue_ns = 0
        executed = self.policy.executed_size(entry.size)
        try:
            try:
                results, seconds, alone = self._timed(instance, [entry.payload[0]])
            except Exception as e:
                error: Exception | None = e
            else:
                self._learn(executed, seconds, alone)
                error = self._answer([entry], results, executed, seconds)
            if error is not None:
                self._fail([entry], error)
        finally:
            self._give_back(instance)

    def _answer(self, entries: list[QueuedRequest], results: list[Any], executed: int,
                seconds: float) -> Exception | None:
        """Answer each entry's future with its result; the error when the executor answered wrongly."""
        if len(results) != len(entries):
            return RuntimeError(f"executor returned {len(results)} results for a batch of {len(entries)}")
        # The cost model learns the size that ran: with batch buckets, the padded one.
        self.policy.cost.observe_batch(executed, seconds)
        for entry, result in zip(entries, results, strict=True):
            if not entry.payload[1].done():
                entry.payload[1].set_result(result)
        return None

    def _fail(self, entries: list[QueuedRequest], error: Exception, traceback: bool = True) -> bool:
        """Fail every request of a failed batch with its error; True when a traceback was logged."""
        logged = False
        if not isinstance(error, PeregrineError):
            log.error("batch of %d requests failed", len(entries), exc_info=error if traceback else None)
            logged = traceback
            error = _logged(entries[0].payload[0], error)
        for e in entries:
            if not e.payload[1].done():
                e.payload[1].set_exception(error)
        return logged


def _logged(request: InferRequest, error: Exception) -> ModelExecutionError:
    """What the requests of a failed batch get when ``error``, an unexpected exception, was logged here with
    its traceback: still INTERNAL with a generic message, but a PeregrineError, which the transport does not
    log again (the traceback once per batch, not once here and again per request)."""
    return ModelExecutionError(request.model_name, str(error))


def _input_bytes(request: InferRequest) -> float:
    """The bytes a request's inputs hold (BYTES elements by their length; many of them: too many to count)."""
    total: float = 0
    for a in request.inputs.values():
        if getattr(getattr(a, "dtype", None), "kind", "") == "O":
            total += sum(len(x) for x in a.flat) if a.size <= 64 else float("inf")
        else:
            total += getattr(a, "nbytes", 0)
    return total


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
