"""A batch's time alone on its device, told apart from the batches that ran beside it (device_load.py), and
the SLO ladder's outlook built on it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
from peregrine.server.core.types import InferRequest
from peregrine.server.scheduling.batcher import DynamicBatcher, QueueConfig
from peregrine.server.scheduling.device_load import DeviceLoad
from peregrine.server.scheduling.policy import BatchPolicy, PolicyConfig


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_batch_alone_keeps_its_time() -> None:
    clock = Clock()
    load = DeviceLoad(clock)
    mark = load.begin()
    clock.t += 0.040
    assert load.end(mark) == pytest.approx((0.040, 0.040))
    assert load.running == 0


def test_batches_that_overlap_share_the_time_they_ran_together() -> None:
    clock = Clock()
    load = DeviceLoad(clock)
    a = load.begin()  # A runs 0..2; B joins at 1 and ends with it
    clock.t += 1.0
    b = load.begin()
    clock.t += 1.0
    seconds_b, alone_b = load.end(b)
    seconds_a, alone_a = load.end(a)
    assert (seconds_b, alone_b) == pytest.approx((1.0, 0.5))  # two ran all along: half of it is B's own
    assert (seconds_a, alone_a) == pytest.approx((2.0, 2.0 / 1.5))  # alone 1 s, then 1 s beside B
    # Three at once for a while: a batch that spanned it divides by the mean, never by less than one.
    c = load.begin()
    clock.t += 0.3
    d, e = load.begin(), load.begin()
    clock.t += 0.3
    load.end(d), load.end(e)
    clock.t += 0.4
    assert load.end(c) == pytest.approx((1.0, 1.0 / (0.3 + 0.9 + 0.4)))


def test_recent_concurrency_is_the_mean_while_anything_ran() -> None:
    clock = Clock()
    load = DeviceLoad(clock, window_s=1.0)
    assert load.concurrency() == 1.0  # nothing ran yet
    for _ in range(20):  # two batches at once, 50 ms each, then 50 ms idle: two while busy
        a, b = load.begin(), load.begin()
        clock.t += 0.05
        load.end(a), load.end(b)
        clock.t += 0.05
    assert load.concurrency() == pytest.approx(2.0)
    for _ in range(40):  # then one at a time for 4 s: the past fades
        a = load.begin()
        clock.t += 0.05
        load.end(a)
        clock.t += 0.05
    assert load.concurrency() == pytest.approx(1.0, abs=0.05)


class Sleeping:
    """Its batches take ``seconds`` of wall time (sleeping: what a device shared with another model does)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def execute(self, instance: int, requests: Sequence[InferRequest]) -> list[Any]:
        time.sleep(self.seconds)
        return [r.id for r in requests]


def _batcher(seconds: float, device: str) -> DynamicBatcher:
    async def in_thread(instance: int, fn: Callable[[], Any]) -> Any:
        return await asyncio.to_thread(fn)

    batcher = DynamicBatcher(BatchPolicy(PolicyConfig(max_batch_size=1)), Sleeping(seconds), 1, QueueConfig(),
                             shape_key=lambda r: (), size=lambda r: 1, run_in_thread=in_thread, device=device)
    batcher.start()
    return batcher


def _request(i: int) -> InferRequest:
    return InferRequest(model_name="m", id=str(i), inputs={"x": np.zeros((1, 2), np.float32)})


def test_a_rung_that_ran_beside_another_learns_its_cost_alone() -> None:
    """The lower rung runs only while the top one is busy; its outlook must not count that slowdown, which
    the ladder's routing applies again from the device's load."""

    async def body() -> None:
        device = f"test-{time.monotonic_ns()}"  # a device of this test's own
        top, lower = _batcher(0.2, device), _batcher(0.2, device)
        lone = _batcher(0.2, device + "-other")
        await asyncio.gather(top.submit(_request(0)), lower.submit(_request(1)), lone.submit(_request(2)))
        now = time.monotonic()
        alone_cost = lower.outlook("lower", now).cost_one
        assert 0.08 < alone_cost < 0.14  # 0.2 s of wall beside another batch all along: ~0.1 s its own
        assert 0.18 < lone.outlook("lone", now).cost_one < 0.3  # alone on its device: its wall time
        for b in (top, lower, lone):
            await b.close()

    asyncio.run(body())


def test_a_seeded_cost_is_known_before_the_first_request() -> None:
    async def body() -> None:
        batcher = _batcher(0.01, "cpu")
        assert not batcher.outlook("m", time.monotonic()).known
        batcher.seed(1, 0.025)
        outlook = batcher.outlook("m", time.monotonic())
        assert outlook.known and outlook.cost_one == pytest.approx(0.025)
        await batcher.close()

    asyncio.run(body())
