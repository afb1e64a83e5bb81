"""The dynamic batcher's policy: given the queued requests and ``now``, what to run next.

Pure and synchronous: plain data in, a :class:`Decision` out, no clock of its own, no I/O, so it is
tested with literal numbers. Times are seconds on the monotonic clock.

Order: real-time requests before background ones (asynchronous jobs' items), then priority level (1 is
the most urgent; 0 means "no levels"), then earliest deadline first, then arrival order. A batch led by a
real-time request takes background items only up to ``background_share`` of its elements, and while
real-time requests keep arriving a batch of background items alone stays small. Requests
whose queue timeout passed under the DELAY action go behind all others.
A batch is the most urgent request plus the next ones of the same shape, up to ``max_batch_size``
elements. It is dispatched when it is full (or reaches the largest preferred size), when its window
closes, or, in the adaptive window, as soon as waiting would cost a deadline or no longer pays. The
adaptive window also stops merging requests when the learned cost shows that batching does not raise
throughput (a batch of n costing about n single runs, as on a CPU).

While the most urgent batch waits inside its window, a batch of another shape may run first on a
spare instance (one that every more urgent waiting batch leaves over) when it is full, its own window
closed, or its deadline needs it to start now: one idle instance stays kept for each more urgent
batch, so none of them is dispatched later than it would have been.

With batch buckets (``PolicyConfig.batch_buckets``) a batch of n elements runs padded to the smallest
bucket >= n; the cost model and the deadline guard count the executed (padded) size.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .buckets import bucket_for

INF = math.inf


@dataclass(eq=False)
class QueuedRequest:
    """One request waiting in a model's queue, as the policy sees it."""

    seq: int  # arrival order, unique per queue
    arrival: float
    size: int = 1  # batch elements this request carries
    shape_key: Hashable = ()  # requests with different keys never share a batch
    priority: int = 0
    deadline: float = INF  # past it, the request is answered DEADLINE_EXCEEDED and never run
    delay_at: float = INF  # past it (queue timeout, action DELAY), the request goes behind the others
    delayed: bool = False
    background: bool = False  # an asynchronous job's item: behind every real-time request
    payload: Any = None  # the driver's own data (request and future)

    def order(self) -> tuple[bool, bool, int, float, int]:
        return (self.delayed, self.background, self.priority, self.deadline, self.seq)


@dataclass(frozen=True)
class PolicyConfig:
    max_batch_size: int = 1  # elements per batch; 1 disables batching
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay: float = 0.0  # seconds a batch may wait to fill (fixed window; cap in adaptive)
    adaptive: bool = False
    # Sizes batches are executed at, ascending (a batch of n runs padded to the smallest one >= n);
    # empty: every batch runs at its own size.
    batch_buckets: tuple[int, ...] = ()
    # The most of a batch led by a real-time request that background (job) items may fill. 0: none; on a
    # CPU a batch costs about the sum of its elements, so riding along would make the real-time request wait
    # for them (measured: a camera's p99 100 ms -> 975 ms with a share of 0.5, benchmarks/bench_jobs.py).
    background_share: float = 0.0
    # While real-time requests keep coming (one arrived within `realtime_quiet_s`), a batch of background
    # items alone has at most this many elements: a real-time request that arrives while it runs waits for
    # no more than that. Once real-time traffic stops, background batches fill up to max_batch_size.
    background_batch_while_busy: int = 1
    realtime_quiet_s: float = 1.0


@dataclass
class Decision:
    expired: list[QueuedRequest] = field(default_factory=list)  # answer DEADLINE_EXCEEDED, drop
    batch: list[QueuedRequest] = field(default_factory=list)  # run now on an idle instance
    wake_at: float = INF  # nothing to run: decide again by then (or on the next arrival/completion)


class CostModel:
    """Online fit of a batch's run time as ``a + b * n`` (seconds) over recent batches, and of the
    gap between arrivals. With one batch size seen so far, ``a`` is the mean time (batching is
    assumed to pay, so the batcher explores) while :meth:`upper` scales linearly (never optimistic
    about a deadline)."""

    def __init__(self, window: int = 64) -> None:
        self._samples: deque[tuple[int, float]] = deque()
        self._window = window
        self._gap: float | None = None
        self._last_arrival: float | None = None
        self.a = 0.0
        self.b = 0.0
        self._fitted_sizes = 0
        self._mean_per_item = 0.0
        # Running sums over the window (every batch updates the fit: O(1), not O(window)).
        self._sizes: dict[int, int] = {}  # batch size -> samples of it in the window
        self._sn = self._st = self._snn = self._snt = self._per_item = 0.0
        self._since_exact = 0

    @property
    def ready(self) -> bool:
        return bool(self._samples)

    def observe_batch(self, n: int, seconds: float) -> None:
        self._add(n, seconds, 1)
        self._samples.append((n, seconds))
        if len(self._samples) > self._window:
            self._add(*self._samples.popleft(), -1)
        self._since_exact += 1
        if self._since_exact >= 4 * self._window:  # sums drift with float rounding: start them over
            self._since_exact = 0
            self._sizes.clear()
            self._sn = self._st = self._snn = self._snt = self._per_item = 0.0
            for x, t in self._samples:
                self._add(x, t, 1)
        count = len(self._samples)
        mean_n, mean_t = self._sn / count, self._st / count
        self._mean_per_item = self._per_item / count
        var_n = self._snn - count * mean_n * mean_n
        self._fitted_sizes = len(self._sizes)
        if self._fitted_sizes == 1 or var_n <= 0:
            self.a, self.b = mean_t, 0.0
            return
        b = max((self._snt - count * mean_n * mean_t) / var_n, 0.0)
        self.a = max(mean_t - b * mean_n, 0.0)
        self.b = b

    def _add(self, n: int, seconds: float, sign: int) -> None:
        left = self._sizes.get(n, 0) + sign
        if left:
            self._sizes[n] = left
        else:
            del self._sizes[n]
        self._sn += sign * n
        self._st += sign * seconds
        self._snn += sign * n * n
        self._snt += sign * n * seconds
        self._per_item += sign * seconds / n

    @property
    def per_item(self) -> float:
        """Seconds one element of the recent batches cost, at the sizes they ran (0 before any)."""
        return self._mean_per_item

    def observe_arrival(self, now: float) -> None:
        if self._last_arrival is not None:
            gap = max(now - self._last_arrival, 0.0)
            self._gap = gap if self._gap is None else 0.8 * self._gap + 0.2 * gap
        self._last_arrival = now

    @property
    def arrival_gap(self) -> float:
        """Expected seconds until the next arrival (infinite before two arrivals were seen)."""
        return INF if self._gap is None else self._gap

    def estimate(self, n: int) -> float:
        return self.a + self.b * n

    def batching_pays(self, max_batch: int, gain: float = 1.1, single: int = 1) -> bool:
        """Whether, by the fit, a full batch of ``max_batch`` elements runs at least ``gain`` times the
        throughput of single requests, each executed at size ``single`` (1, or the smallest batch
        bucket). True while fewer than two batch sizes were seen: batching is then still being explored."""
        if self._fitted_sizes < 2 or max_batch <= 1:
            return True
        full = self.estimate(max_batch)
        if full <= 0:
            return True
        return max_batch * self.estimate(single) >= gain * full

    def upper(self, n: int) -> float:
        """An estimate of the batch time that is not optimistic when the fit is unsure.

        With one batch size seen (time ``t`` for ``m`` elements) and a true cost ``a + b * n`` with
        ``a, b >= 0``, a smaller batch takes at most ``t`` and a larger one at most ``t * n / m``."""
        if self._fitted_sizes >= 2:
            return self.estimate(n)
        return max(self.a, self._mean_per_item * n)


class BatchPolicy:
    """Decides the next batch. One instance per model; it holds the cost model, nothing else."""

    def __init__(self, config: PolicyConfig, cost: CostModel | None = None) -> None:
        if config.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {config.max_batch_size}")
        self.config = config
        self.cost = cost or CostModel()
        self.last_realtime = -INF  # when the latest real-time (not background) request arrived
        self._now = 0.0

    def executed_size(self, n: int) -> int:
        """The size a batch of ``n`` elements runs at (its batch bucket, or ``n``)."""
        return bucket_for(n, self.config.batch_buckets)

    def decide(self, queue: Iterable[QueuedRequest], now: float, idle_instances: int) -> Decision:
        d = Decision()
        live: list[QueuedRequest] = []
        for r in queue:
            if r.deadline <= now:
                d.expired.append(r)
                continue
            if not r.delayed and r.delay_at <= now:
                r.delayed = True
            live.append(r)
        if not live:
            return d
        self._now = now
        for r in live:
            if not r.background and r.arrival > self.last_realtime:
                self.last_realtime = r.arrival
        # Wake in time to answer the next request that expires, even while every instance is busy.
        d.wake_at = min(min(r.deadline for r in live), min((r.delay_at for r in live if not r.delayed), default=INF))
        if idle_instances <= 0:
            return d
        live.sort(key=QueuedRequest.order)
        cfg = self.config
        if cfg.adaptive and not self.cost.batching_pays(cfg.max_batch_size, single=self.executed_size(1)):
            # A batch of n costs about n single runs here (no fixed cost to share): merging requests
            # would only make the first ones wait for the others' compute. The most urgent runs alone,
            # with the requests of its shape that ride free in its batch bucket's padding.
            d.batch = self._fill(live, self.executed_size(live[0].size))
            return d
        # The most urgent batch first, then the batches of other shapes in the order of their most
        # urgent request. Each batch still inside its window keeps one idle instance for itself, so a
        # later batch may only use an instance left over: nothing dispatched here can make a more
        # urgent batch start later than it would have.
        for waiting, batch in enumerate(self._batches(live)):  # `waiting`: more urgent batches still waiting
            if waiting >= idle_instances:
                break  # every idle instance is kept for a more urgent batch
            ready_at = self._ready_at(batch, now, head=waiting == 0)
            if ready_at <= now:
                d.batch = self._finalize(batch)
                return d
            d.wake_at = min(d.wake_at, ready_at)
        return d

    def _batches(self, ordered: list[QueuedRequest]) -> Iterator[list[QueuedRequest]]:
        """One candidate batch per shape key, most urgent first."""
        groups: dict[Hashable, list[QueuedRequest]] = {}
        for r in ordered:
            groups.setdefault(r.shape_key, []).append(r)
        for members in groups.values():
            yield self._fill(members)

    def _ready_at(self, batch: list[QueuedRequest], now: float, head: bool) -> float:
        """When the batch should be dispatched: now when it is full, else when its window closes. A
        batch behind the most urgent one also goes when its own deadline needs it to start (it is not
        waiting for company then, but for an instance)."""
        n = sum(r.size for r in batch)
        if self._target(n) is not None:
            return now
        close = self._window_close(batch, now)
        if not head and self.cost.ready:
            urgent = min(r.deadline for r in batch)
            if urgent < INF:
                close = min(close, urgent - self.cost.upper(self.executed_size(n)))
        return close

    def _finalize(self, batch: list[QueuedRequest]) -> list[QueuedRequest]:
        """What of a ready batch runs: the target size when full, else the largest preferred size
        that fits, else all of it."""
        n = sum(r.size for r in batch)
        target = self._target(n)
        return self._trim(batch, target if target is not None else (self._largest_preferred(n) or n))

    def _fill(self, ordered: list[QueuedRequest], limit: int | None = None) -> list[QueuedRequest]:
        """The first request plus the next ones of its shape, up to ``limit`` (default
        ``max_batch_size``) elements."""
        limit = self.config.max_batch_size if limit is None else limit
        head = ordered[0]
        batch = [head]
        n = head.size
        # Background items ride in a real-time batch only up to their share of it (they make it longer), and
        # run in small batches of their own while real-time traffic goes on (a batch cannot be interrupted).
        if head.background and self._now - self.last_realtime < self.config.realtime_quiet_s:
            limit = min(limit, max(head.size, self.config.background_batch_while_busy))
        room = limit if head.background else int(self.config.background_share * limit)
        for r in ordered[1:]:
            if n >= limit:
                break
            if r.shape_key == head.shape_key and n + r.size <= limit:
                if r.background:
                    if r.size > room:
                        continue
                    room -= r.size
                batch.append(r)
                n += r.size
        return batch

    def _target(self, n: int) -> int | None:
        """The batch size to dispatch at once, if the batch is already as large as it should get:
        the largest preferred size, or the maximum."""
        cfg = self.config
        preferred = [p for p in cfg.preferred_batch_sizes if p <= cfg.max_batch_size]
        top = max(preferred) if preferred else cfg.max_batch_size
        return top if n >= top else None

    def _largest_preferred(self, n: int) -> int | None:
        fits = [p for p in self.config.preferred_batch_sizes if p <= n]
        return max(fits) if fits else None

    @staticmethod
    def _trim(batch: list[QueuedRequest], size: int) -> list[QueuedRequest]:
        out: list[QueuedRequest] = []
        n = 0
        for r in batch:
            if n + r.size > size and out:
                break
            out.append(r)
            n += r.size
        return out

    def _window_close(self, batch: list[QueuedRequest], now: float) -> float:
        """When the batch stops waiting for more requests."""
        cfg = self.config
        oldest = min(r.arrival for r in batch)
        if not cfg.adaptive:
            return oldest + cfg.max_queue_delay
        cost = self.cost
        urgent = min(r.deadline for r in batch)
        if not cost.ready:
            # No batch has run yet, so its time is unknown: any wait could cost a deadline.
            return now if urgent < INF else oldest + cfg.max_queue_delay
        n = sum(r.size for r in batch)
        # Waiting pays only while the next request is expected sooner than the time that merging it
        # saves: its own run, less what it adds to this batch. Without buckets that is the fixed cost
        # `a`; with buckets a request that fits in the padding adds nothing, and one that needs the
        # next bucket adds that bucket's extra rows, so a batch that fills its bucket stops sooner.
        ex = self.executed_size
        saving = cost.a + cost.b * (ex(1) - (ex(n + 1) - ex(n)))
        if cost.arrival_gap >= saving:
            return now
        cap = cfg.max_queue_delay if cfg.max_queue_delay > 0 else cost.a
        close = oldest + cap
        # Never wait past the moment where running one more element would miss the most urgent deadline:
        # at `close`, dispatching still meets every deadline that dispatching now meets.
        if urgent < INF:
            close = min(close, urgent - cost.upper(ex(n + 1)))
        return close
