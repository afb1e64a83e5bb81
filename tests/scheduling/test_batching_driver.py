"""The dynamic batcher's asyncio driver, with an injected clock and asyncio gates: no sleeps.

Each dispatched batch waits on its own gate (``Gates.run`` stands in for the worker thread) and then
runs the fake executor inline, so the test decides when every batch finishes and in which order.
The queue's deadlines and timeouts read the injected :class:`Clock`; the driver is woken by arrivals
and completions, as in production.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from peregrine.server.core.errors import DeadlineExceeded, InvalidArgument, ModelExecutionError, Unavailable
from peregrine.server.core.types import InferRequest
from peregrine.server.scheduling.batcher import DynamicBatcher, QueueConfig, QueuePolicy
from peregrine.server.scheduling.policy import BatchPolicy, CostModel, PolicyConfig


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class Batch:
    instance: int
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Gates:
    """The batcher's ``run_in_thread``: every batch waits for the test to open its gate."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []

    async def run(self, instance: int, fn: Callable[[], Any]) -> Any:
        batch = Batch(instance)
        self.batches.append(batch)
        await batch.gate.wait()
        try:
            return fn()
        finally:
            batch.done.set()

    async def release(self, index: int) -> None:
        """Let batch ``index`` (in dispatch order) run, once it has been dispatched, and wait for it."""
        await until(lambda: len(self.batches) > index)
        self.batches[index].gate.set()
        await self.batches[index].done.wait()


class FakeExecutor:
    """Answers ``out-<id>`` per request; fails a batch holding a poisoned id; can miscount on purpose."""

    def __init__(self) -> None:
        self.executed: list[list[str]] = []
        self.poisoned: set[str] = set()
        self.drop_one_result = False

    def execute(self, instance: int, requests: Sequence[InferRequest]) -> list[Any]:
        ids = [r.id for r in requests]
        self.executed.append(ids)
        if self.poisoned & set(ids):
            raise ModelExecutionError("fake", "poisoned input")
        results = [f"out-{i}" for i in ids]
        return results[:-1] if self.drop_one_result else results


class Recording(CostModel):
    """A cost model that keeps the sizes of the batches it is told of."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def observe_batch(self, n: int, seconds: float) -> None:
        self.sizes.append(n)
        super().observe_batch(n, seconds)


async def until(condition: Callable[[], bool], max_yields: int = 10_000) -> None:
    """Yield to the event loop until ``condition`` holds (a bounded number of turns, no timers)."""
    for _ in range(max_yields):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


@dataclass
class Harness:
    batcher: DynamicBatcher
    gates: Gates
    executor: FakeExecutor
    clock: Clock

    def request(self, id: str, size: int = 1, shape: str = "a", timeout_s: float | None = None,
                deadline_in: float | None = None, priority: int = 0, key: str = "") -> InferRequest:
        params: dict[str, Any] = {"shape": shape}
        if timeout_s is not None:
            params["timeout"] = int(timeout_s * 1e6)
        return InferRequest(
            model_name="fake", id=id, inputs={"x": np.zeros((size, 2), np.float32)}, parameters=params,
            deadline=None if deadline_in is None else self.clock() + deadline_in, priority=priority,
            ordering_key=key,
        )

    def submit(self, *args: Any, **kw: Any) -> asyncio.Task[Any]:
        return asyncio.create_task(self.batcher.submit(self.request(*args, **kw)))

    async def queued(self, depth: int) -> None:
        await until(lambda: self.batcher.queue_depth == depth)


def harness(policy: PolicyConfig | None = None, queue: QueueConfig | None = None, instances: int = 1,
            cost: CostModel | None = None) -> Harness:
    gates, executor, clock = Gates(), FakeExecutor(), Clock()
    batcher = DynamicBatcher(
        BatchPolicy(policy or PolicyConfig(max_batch_size=1), cost), executor, instances, queue or QueueConfig(),
        shape_key=lambda r: r.parameters["shape"], size=lambda r: len(r.inputs["x"]),
        run_in_thread=gates.run, clock=clock,
    )
    batcher.start()
    return Harness(batcher, gates, executor, clock)


def run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        await asyncio.wait_for(body(), timeout=30)  # a hang is a failure, not a stuck test run

    asyncio.run(main())


# -- admission ---------------------------------------------------------------------------------
def test_a_full_queue_rejects_at_once() -> None:
    async def body() -> None:
        h = harness(queue=QueueConfig(max_queue_size=2))
        a = h.submit("a")
        await until(lambda: len(h.gates.batches) == 1)  # a runs (its gate is shut), the queue is empty
        b, c = h.submit("b"), h.submit("c")
        await h.queued(2)
        with pytest.raises(Unavailable):
            await h.batcher.submit(h.request("d"))
        assert h.executor.executed == []  # rejected while nothing had finished
        for i in range(3):
            await h.gates.release(i)
        assert [await t for t in (a, b, c)] == ["out-a", "out-b", "out-c"]
        assert h.executor.executed == [["a"], ["b"], ["c"]]

    run(body)


def test_a_full_priority_level_rejects_only_its_own_requests() -> None:
    async def body() -> None:
        h = harness(queue=QueueConfig(priority_levels=2, default_priority_level=2,
                                      level_policies=((1, QueuePolicy(max_queue_size=1)),)))
        a = h.submit("a")
        await until(lambda: len(h.gates.batches) == 1)
        b = h.submit("b", priority=1)
        await h.queued(1)
        with pytest.raises(Unavailable):
            await h.batcher.submit(h.request("c", priority=1))
        d = h.submit("d")  # level 2 (the default) has room
        await h.queued(2)
        for i in range(3):
            await h.gates.release(i)
        assert [await t for t in (a, b, d)] == ["out-a", "out-b", "out-d"]

    run(body)


def test_a_priority_outside_the_levels_is_invalid() -> None:
    async def body() -> None:
        h = harness(queue=QueueConfig(priority_levels=2, default_priority_level=1))
        with pytest.raises(InvalidArgument):
            await h.batcher.submit(h.request("a", priority=3))
        assert h.batcher.queue_depth == 0

    run(body)


# -- cancellation and deadlines ------------------------------------------------------------------
def test_a_request_cancelled_before_dispatch_is_removed_and_never_run() -> None:
    async def body() -> None:
        h = harness()
        a = h.submit("a")
        await until(lambda: len(h.gates.batches) == 1)
        b = h.submit("b")
        await h.queued(1)
        b.cancel()
        with pytest.raises(asyncio.CancelledError):
            await b
        assert h.batcher.queue_depth == 0
        await h.gates.release(0)
        assert await a == "out-a"
        c = h.submit("c")
        await h.gates.release(1)
        assert await c == "out-c"
        assert h.executor.executed == [["a"], ["c"]]

    run(body)


def test_a_request_cancelled_after_dispatch_still_completes_its_batch() -> None:
    async def body() -> None:
        h = harness(PolicyConfig(max_batch_size=4))
        first = h.submit("first")  # a lone request runs at once; a and b queue behind it
        await until(lambda: len(h.gates.batches) == 1)
        a, b = h.submit("a"), h.submit("b")
        await h.queued(2)
        await h.gates.release(0)
        assert await first == "out-first"
        await until(lambda: len(h.gates.batches) == 2)
        a.cancel()
        await h.gates.release(1)
        assert await b == "out-b"
        assert h.executor.executed == [["first"], ["a", "b"]]

    run(body)


def test_a_deadline_that_passes_while_queued_is_answered_and_never_run() -> None:
    async def body() -> None:
        h = harness()
        a = h.submit("a")
        await until(lambda: len(h.gates.batches) == 1)
        b = h.submit("b", deadline_in=1.0)  # the call's own deadline (gRPC)
        c = h.submit("c", timeout_s=0.5)  # a queue timeout asked for in the request (REJECT)
        d = h.submit("d", deadline_in=5.0)
        await h.queued(3)
        h.clock.advance(2.0)
        await h.gates.release(0)  # the instance frees up after b's and c's deadlines passed
        assert await a == "out-a"
        for t in (b, c):
            with pytest.raises(DeadlineExceeded):
                await t
        await h.gates.release(1)
        assert await d == "out-d"
        assert h.executor.executed == [["a"], ["d"]]

    run(body)


def test_a_deadline_that_passes_during_the_batching_window_is_answered_and_never_run() -> None:
    async def body() -> None:
        h = harness(PolicyConfig(max_batch_size=4, max_queue_delay=10.0))
        a = h.submit("a", deadline_in=1.0)
        await h.queued(1)  # the instance is idle; the window holds a for more company
        h.clock.advance(1.5)
        other = h.submit("x", shape="b")  # any arrival wakes the driver, which finds a expired
        with pytest.raises(DeadlineExceeded):
            await a
        other.cancel()
        await asyncio.gather(other, return_exceptions=True)
        assert h.executor.executed == []

    run(body)


def test_queued_requests_expire_even_while_every_instance_is_busy() -> None:
    async def body() -> None:
        h = harness(instances=1)
        a = h.submit("a")
        await until(lambda: len(h.gates.batches) == 1)
        b = h.submit("b", deadline_in=1.0)
        await h.queued(1)
        h.clock.advance(1.0)
        h.submit("poke", shape="b")
        with pytest.raises(DeadlineExceeded):
            await b
        assert not a.done()  # answered without waiting for the busy instance
        await h.gates.release(0)
        await h.gates.release(1)
        assert await a == "out-a"

    run(body)


def test_queue_timeout_override_may_only_shorten() -> None:
    async def body() -> None:
        h = harness(queue=QueueConfig(default_policy=QueuePolicy(timeout=10.0)))
        busy = h.submit("busy")
        await until(lambda: len(h.gates.batches) == 1)
        default = h.submit("default")
        longer = h.submit("longer", timeout_s=20.0)  # asks for more than the model allows: ignored
        shorter = h.submit("shorter", timeout_s=5.0)
        await h.queued(3)
        h.clock.advance(6.0)
        h.submit("poke1", shape="b")
        with pytest.raises(DeadlineExceeded):
            await shorter
        assert not default.done() and not longer.done()
        h.clock.advance(5.0)
        h.submit("poke2", shape="b")
        for t in (default, longer):
            with pytest.raises(DeadlineExceeded):
                await t
        for i in range(3):
            await h.gates.release(i)
        assert await busy == "out-busy"
        assert h.executor.executed == [["busy"], ["poke1"], ["poke2"]]

    run(body)


def test_queue_timeout_override_can_be_forbidden() -> None:
    async def body() -> None:
        h = harness(queue=QueueConfig(default_policy=QueuePolicy(timeout=10.0, allow_timeout_override=False)))
        h.submit("busy")
        await until(lambda: len(h.gates.batches) == 1)
        r = h.submit("r", timeout_s=1.0)
        await h.queued(1)
        h.clock.advance(2.0)
        await h.gates.release(0)
        await h.gates.release(1)
        assert await r == "out-r"

    run(body)


def test_delay_on_timeout_sends_the_request_behind_the_others_instead_of_failing_it() -> None:
    async def body() -> None:
        h = harness(queue=QueueConfig(default_policy=QueuePolicy(timeout=1.0, delay_on_timeout=True)))
        h.submit("busy")
        await until(lambda: len(h.gates.batches) == 1)
        old = h.submit("old")
        await h.queued(1)
        h.clock.advance(2.0)
        new = h.submit("new")
        await h.queued(2)
        for i in range(3):
            await h.gates.release(i)
        assert await old == "out-old" and await new == "out-new"
        assert h.executor.executed == [["busy"], ["new"], ["old"]]

    run(body)


# -- failures ----------------------------------------------------------------------------------
def test_a_failed_batch_is_run_again_per_request_so_only_the_bad_one_fails() -> None:
    async def body() -> None:
        cost = Recording()
        h = harness(PolicyConfig(max_batch_size=4), cost=cost)
        h.executor.poisoned = {"bad"}
        a = h.submit("a")
        await until(lambda: len(h.gates.batches) == 1)
        batch = [h.submit("b"), h.submit("bad"), h.submit("c")]
        await h.queued(3)
        for i in range(5):  # a, the batch of three, then b, bad and c alone
            await h.gates.release(i)
        outcomes = await asyncio.gather(*batch, return_exceptions=True)
        assert outcomes[0] == "out-b" and outcomes[2] == "out-c"
        assert isinstance(outcomes[1], ModelExecutionError)
        assert h.executor.executed == [["a"], ["b", "bad", "c"], ["b"], ["bad"], ["c"]]
        assert {b.instance for b in h.gates.batches} == {0}  # the retries hold the batch's instance
        # Statistics see what ran: the batch that failed taught nothing; the two that succeeded alone are
        # batches of one.
        assert cost.sizes == [1, 1, 1]
        after = h.submit("d")
        await h.gates.release(5)
        assert await after == "out-d"  # the next batch is served
        assert await a == "out-a"

    run(body)


def test_a_failed_batch_of_one_request_fails_it_without_running_it_again() -> None:
    async def body() -> None:
        h = harness(PolicyConfig(max_batch_size=4))
        h.executor.poisoned = {"bad"}
        bad = h.submit("bad")
        await h.gates.release(0)
        with pytest.raises(ModelExecutionError):
            await bad
        assert h.executor.executed == [["bad"]]

    run(body)


def test_requests_whose_deadline_passed_are_not_run_again_after_their_batch_failed() -> None:
    async def body() -> None:
        h = harness(PolicyConfig(max_batch_size=4))
        h.executor.poisoned = {"bad"}
        busy = h.submit("busy")
        await until(lambda: len(h.gates.batches) == 1)
        batch = [h.submit("late", deadline_in=5.0), h.submit("bad"), h.submit("ok")]
        await h.queued(3)
        await h.gates.release(0)
        await until(lambda: len(h.gates.batches) == 2)  # the batch of three is dispatched
        h.clock.advance(10.0)  # while it runs, late's deadline passes
        for i in range(1, 4):
            await h.gates.release(i)
        outcomes = await asyncio.gather(*batch, return_exceptions=True)
        assert isinstance(outcomes[0], DeadlineExceeded)
        assert isinstance(outcomes[1], ModelExecutionError)
        assert outcomes[2] == "out-ok"
        assert h.executor.executed == [["busy"], ["late", "bad", "ok"], ["bad"], ["ok"]]
        await busy

    run(body)


def test_an_unexpected_error_of_a_batch_run_again_logs_one_traceback(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(FakeExecutor):
        def execute(self, instance: int, requests: Sequence[InferRequest]) -> list[Any]:
            self.executed.append([r.id for r in requests])
            raise ZeroDivisionError("a bug")

    async def body() -> list[BaseException]:
        h = harness(PolicyConfig(max_batch_size=4))
        h.batcher.executor = Broken()
        busy = h.submit("busy")
        await until(lambda: len(h.gates.batches) == 1)
        batch = [h.submit("x"), h.submit("y"), h.submit("z")]
        await h.queued(3)
        for i in range(5):
            await h.gates.release(i)
        return list(await asyncio.gather(busy, *batch, return_exceptions=True))

    with caplog.at_level("WARNING", logger="peregrine"):
        errors = asyncio.run(asyncio.wait_for(body(), 30))
    assert all(isinstance(e, ModelExecutionError) for e in errors)  # INTERNAL, with a generic message
    assert len([r for r in caplog.records if r.exc_info]) == 2  # busy's batch, then the batch of three's


def test_an_executor_returning_the_wrong_number_of_results_fails_the_whole_batch() -> None:
    async def body() -> None:
        h = harness(PolicyConfig(max_batch_size=4))
        h.executor.drop_one_result = True
        busy = h.submit("busy")
        await until(lambda: len(h.gates.batches) == 1)
        batch = [h.submit("b"), h.submit("c"), h.submit("d")]
        await h.queued(3)
        for i in range(5):  # busy, the batch, then b, c and d alone (each miscounted again)
            await h.gates.release(i)
        errors = await asyncio.gather(busy, *batch, return_exceptions=True)
        assert all(isinstance(e, Exception) for e in errors)  # no request got someone else's result
        assert h.executor.executed == [["busy"], ["b", "c", "d"], ["b"], ["c"], ["d"]]
        h.executor.drop_one_result = False
        again = h.submit("e")
        await h.gates.release(5)
        assert await again == "out-e"

    run(body)


# -- order -------------------------------------------------------------------------------------
def test_priorities_then_deadlines_reorder_a_backlog() -> None:
    async def body() -> None:
        h = harness(queue=QueueConfig(priority_levels=3, default_priority_level=2))
        tasks = [h.submit("busy")]
        await until(lambda: len(h.gates.batches) == 1)
        tasks += [
            h.submit("low", priority=3),
            h.submit("late", priority=1, deadline_in=50.0),
            h.submit("soon", priority=1, deadline_in=20.0),
            h.submit("none", priority=1),
            h.submit("default"),  # level 2
            h.submit("soon2", priority=1, deadline_in=20.0),
        ]
        await h.queued(6)
        for i in range(7):
            await h.gates.release(i)
        await asyncio.gather(*tasks)
        assert [b[0] for b in h.executor.executed] == ["busy", "soon", "soon2", "late", "none", "default", "low"]

    run(body)


def test_requests_of_one_shape_share_a_batch_and_other_shapes_wait_their_turn() -> None:
    async def body() -> None:
        h = harness(PolicyConfig(max_batch_size=4))
        tasks = [h.submit("busy")]
        await until(lambda: len(h.gates.batches) == 1)
        tasks += [h.submit("a1", size=2), h.submit("b1", shape="b"), h.submit("a2"), h.submit("a3", size=2)]
        await h.queued(4)
        for i in range(4):
            await h.gates.release(i)
        await asyncio.gather(*tasks)
        assert h.executor.executed == [["busy"], ["a1", "a2"], ["b1"], ["a3"]]
        assert all(t.result().startswith("out-") for t in tasks)

    run(body)


def _ordering_case(preserve: bool) -> list[str]:
    delivered: list[str] = []

    async def body() -> None:
        h = harness(queue=QueueConfig(preserve_ordering=preserve), instances=2)

        def track(task: asyncio.Task[Any], name: str) -> asyncio.Task[Any]:
            task.add_done_callback(lambda _: delivered.append(name))
            return task

        first = track(h.submit("first", key="client-1"), "first")
        second = track(h.submit("second", key="client-1"), "second")
        await until(lambda: len(h.gates.batches) == 2)  # one on each instance
        await h.gates.release(1)  # the later request finishes first
        other = track(h.submit("other", key="client-2"), "other")
        await h.gates.release(2)
        await other  # another client's answer is not held back
        await h.gates.release(0)
        await asyncio.gather(first, second)

    run(body)
    return delivered


def test_preserve_ordering_delivers_per_client_results_in_arrival_order() -> None:
    assert _ordering_case(preserve=True) == ["other", "first", "second"]


def test_without_preserve_ordering_results_leave_as_they_finish() -> None:
    assert _ordering_case(preserve=False) == ["second", "other", "first"]


def test_preserve_ordering_still_delivers_after_a_cancelled_predecessor() -> None:
    async def body() -> None:
        h = harness(queue=QueueConfig(preserve_ordering=True))
        busy = h.submit("busy", key="other")
        await until(lambda: len(h.gates.batches) == 1)
        first = h.submit("first", key="k")
        second = h.submit("second", key="k")
        await h.queued(2)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        await h.gates.release(0)
        await h.gates.release(1)
        assert await second == "out-second"
        assert await busy == "out-busy"

    run(body)


# -- bookkeeping and shutdown --------------------------------------------------------------------
def test_queue_time_is_recorded_on_the_request() -> None:
    async def body() -> None:
        h = harness()
        h.submit("busy")
        await until(lambda: len(h.gates.batches) == 1)
        r = h.request("r")
        t = asyncio.create_task(h.batcher.submit(r))
        await h.queued(1)
        h.clock.advance(0.25)
        await h.gates.release(0)
        await h.gates.release(1)
        await t
        assert r.queue_ns == 250_000_000

    run(body)


def test_close_lets_queued_and_running_requests_finish_then_refuses_new_ones() -> None:
    async def body() -> None:
        h = harness()
        a = h.submit("a")
        await until(lambda: len(h.gates.batches) == 1)
        b = h.submit("b")
        await h.queued(1)
        closing = asyncio.create_task(h.batcher.close())
        await h.gates.release(0)
        await h.gates.release(1)
        await closing
        assert [await a, await b] == ["out-a", "out-b"]
        with pytest.raises(Unavailable):
            await h.batcher.submit(h.request("c"))

    run(body)


def test_a_failing_policy_fails_the_queued_requests_instead_of_hanging_them() -> None:
    class BrokenPolicy(BatchPolicy):
        def decide(self, queue: Any, now: float, idle_instances: int) -> Any:
            if any(r.payload[0].id == "bad" for r in queue):
                raise RuntimeError("policy bug")
            return super().decide(queue, now, idle_instances)

    async def body() -> None:
        gates, executor, clock = Gates(), FakeExecutor(), Clock()
        batcher = DynamicBatcher(BrokenPolicy(PolicyConfig(max_batch_size=1)), executor, 1, QueueConfig(),
                                 shape_key=lambda r: (), size=lambda r: 1, run_in_thread=gates.run, clock=clock)
        batcher.start()
        h = Harness(batcher, gates, executor, clock)
        with pytest.raises(ModelExecutionError):  # INTERNAL, its traceback logged once, by the batcher
            await batcher.submit(h.request("bad"))
        assert batcher.queue_depth == 0
        ok = h.submit("ok")  # the driver goes on serving
        await gates.release(0)
        assert await ok == "out-ok"
        assert executor.executed == [["ok"]]

    run(body)


# -- head-of-line blocking and batch buckets --------------------------------------------------------
async def _yield_many(turns: int = 200) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


def _hol_case(instances: int) -> tuple[int, list[list[str]]]:
    """Shape b waits since t=0; shape a (more urgent) arrives at t=8 with a 10 s window. At t=11 b's
    own window has closed but a's has not. Returns how many batches were dispatched at t=11, and
    the batches in the order they ran once a's window closed too."""
    at_11 = 0

    async def body() -> None:
        nonlocal at_11
        h = harness(PolicyConfig(max_batch_size=4, max_queue_delay=10.0),
                    QueueConfig(priority_levels=2, default_priority_level=2), instances=instances)
        b1 = h.submit("b1", shape="b", priority=2)
        await h.queued(1)
        h.clock.advance(8.0)
        a1 = h.submit("a1", shape="a", priority=1)
        await h.queued(2)
        h.clock.advance(3.0)
        a2 = h.submit("a2", shape="a", priority=1)  # an arrival wakes the driver at t=11
        await h.queued(3 if instances == 1 else 2)
        await _yield_many()  # give the driver every chance to dispatch what it would
        at_11 = len(h.gates.batches)
        h.clock.advance(7.0)  # t=18: a's window closes
        a3 = h.submit("a3", shape="a", priority=1)
        await h.gates.release(0)
        await h.gates.release(1)
        await asyncio.gather(b1, a1, a2, a3)

        order.extend(h.executor.executed)

    order: list[list[str]] = []
    run(body)
    return at_11, order


def test_another_shape_whose_window_closed_uses_a_second_idle_instance() -> None:
    # Two instances: b runs at t=11 on the spare one, while a keeps filling until its window closes.
    assert _hol_case(instances=2) == (1, [["b1"], ["a1", "a2", "a3"]])


def test_with_one_instance_other_shapes_still_wait_for_the_head() -> None:
    # The only idle instance is kept for a: b waits behind a's window, as before.
    assert _hol_case(instances=1) == (0, [["a1", "a2", "a3"], ["b1"]])


def test_the_cost_model_learns_the_padded_batch_size() -> None:
    async def body() -> None:
        cost = Recording()
        h = harness(PolicyConfig(max_batch_size=8, batch_buckets=(4, 8)), cost=cost)
        busy = h.submit("busy")
        await until(lambda: len(h.gates.batches) == 1)
        batch = [h.submit("x", size=2), h.submit("y", size=3)]
        await h.queued(2)
        await h.gates.release(0)
        await h.gates.release(1)
        await asyncio.gather(busy, *batch)
        assert h.executor.executed == [["busy"], ["x", "y"]]
        assert cost.sizes == [4, 8]  # 1 element ran at 4, 5 elements at 8

    run(body)


# -- inline execution of cheap lone requests -----------------------------------------------------------
class ThreadNoting(FakeExecutor):
    """Notes the thread each batch ran on; sleeps ``seconds`` per batch."""

    def __init__(self, seconds: float = 0.0) -> None:
        super().__init__()
        self.threads: list[int] = []
        self.seconds = seconds

    def execute(self, instance: int, requests: Sequence[InferRequest]) -> list[Any]:
        self.threads.append(threading.get_ident())
        if self.seconds:
            time.sleep(self.seconds)
        return super().execute(instance, requests)


def _threaded(executor: FakeExecutor, inline_s: float) -> DynamicBatcher:
    async def in_thread(instance: int, fn: Callable[[], Any]) -> Any:
        return await asyncio.to_thread(fn)

    batcher = DynamicBatcher(BatchPolicy(PolicyConfig(max_batch_size=4)), executor, 1, QueueConfig(),
                             shape_key=lambda r: r.parameters["shape"], size=lambda r: len(r.inputs["x"]),
                             run_in_thread=in_thread, inline_s=inline_s)
    batcher.start()
    return batcher


def _request(id: str) -> InferRequest:
    return InferRequest(model_name="fake", id=id, inputs={"x": np.zeros((1, 2), np.float32)},
                        parameters={"shape": "a"})


def test_a_cheap_lone_request_runs_on_the_loop_once_its_cost_is_known() -> None:
    async def body() -> None:
        executor = ThreadNoting()
        batcher = _threaded(executor, inline_s=0.05)
        loop_thread = threading.get_ident()
        assert await batcher.submit(_request("first")) == "out-first"  # no cost known yet: the thread
        assert executor.threads[0] != loop_thread
        assert await batcher.submit(_request("second")) == "out-second"
        assert executor.threads[1] == loop_thread  # known to be cheap: run at once, without the hop
        executor.poisoned.add("bad")
        with pytest.raises(ModelExecutionError):  # an error inline fails that request only
            await batcher.submit(_request("bad"))
        assert await batcher.submit(_request("third")) == "out-third"  # the instance came back
        assert batcher.queue_depth == 0 and not batcher._running
        await batcher.close()

    run(body)


def test_an_expensive_batch_never_runs_on_the_loop() -> None:
    async def body() -> None:
        executor = ThreadNoting(seconds=0.02)
        batcher = _threaded(executor, inline_s=0.005)  # 20 ms batches, 5 ms bound: always the thread
        loop_thread = threading.get_ident()
        for i in range(3):
            assert await batcher.submit(_request(str(i))) == f"out-{i}"
        assert loop_thread not in executor.threads
        off = _threaded(ThreadNoting(), inline_s=0.0)  # 0 turns inline execution off
        for i in range(3):
            await off.submit(_request(str(i)))
        assert loop_thread not in off.executor.threads  # type: ignore[attr-defined]
        await batcher.close()
        await off.close()

    run(body)


def test_a_request_with_large_inputs_never_runs_on_the_loop_whatever_the_cost_model_learned() -> None:
    async def body() -> None:
        executor = ThreadNoting()
        batcher = _threaded(executor, inline_s=0.05)
        loop_thread = threading.get_ident()
        for i in range(3):  # small rows: learned to be cheap, then run on the loop
            await batcher.submit(_request(str(i)))
        assert executor.threads[-1] == loop_thread
        big = InferRequest(model_name="fake", id="big", inputs={"x": np.zeros((1, 200_000), np.float32)},
                           parameters={"shape": "a"})  # one row, as the cheap ones, but 800 KB
        assert await batcher.submit(big) == "out-big"
        assert executor.threads[-1] != loop_thread
        await batcher.close()

    run(body)
