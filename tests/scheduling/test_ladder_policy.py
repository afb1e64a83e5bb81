"""The SLO ladder's routing policy with literal numbers (server/scheduling/ladder.py)."""

from __future__ import annotations

import math

import pytest
from peregrine.server.scheduling.ladder import RungOutlook, batch_cost, completion, route

INF = math.inf


def rung(name: str, one: float, full: float | None = None, batch: int = 1, queued: int = 0,
         free_in: tuple[float, ...] = (0.0,), known: bool = True) -> RungOutlook:
    return RungOutlook(name, known, one, one * batch if full is None else full, batch, queued, free_in)


def test_an_idle_rung_answers_in_one_batch() -> None:
    assert completion(rung("fp32", 0.040), 1) == pytest.approx(0.040)


def test_a_rung_that_runs_requests_one_by_one_plays_its_queue_forward() -> None:
    # 3 waiting, 1 instance busy for 10 more ms: 10 + 3 * 40 + 40 ms.
    assert completion(rung("fp32", 0.040, queued=3, free_in=(0.010,)), 1) == pytest.approx(0.170)
    # Two instances share the queue: (10, 0) -> 3 queued go to 0, 10, 40 -> the request starts at 50.
    assert completion(rung("fp32", 0.040, queued=3, free_in=(0.010, 0.0)), 1) == pytest.approx(0.090)


def test_a_batching_rung_cuts_its_queue_in_full_batches() -> None:
    # Batch of 8 costs 16 ms, one costs 4 ms: 10 queued = a full batch (16 ms), then the other 2 with the
    # request, a batch of 3 (4 + 12 * 2 / 7 ms).
    r = rung("gpu", 0.004, full=0.016, batch=8, queued=10)
    assert batch_cost(r, 3) == pytest.approx(0.004 + 0.012 * 2 / 7)
    assert completion(r, 1) == pytest.approx(0.016 + batch_cost(r, 3))
    # With a second instance idle, the two batches run side by side.
    assert completion(rung("gpu", 0.004, full=0.016, batch=8, queued=10, free_in=(0.0, 0.0)), 1) == \
        pytest.approx(batch_cost(r, 3))


def test_without_a_deadline_the_top_rung_answers_however_loaded() -> None:
    rungs = [rung("fp32", 0.040, queued=100), rung("int8", 0.010)]
    assert route(rungs, 1, INF, now=5.0).rung == 0


def test_the_most_accurate_rung_that_meets_the_deadline_wins() -> None:
    rungs = [rung("fp32", 0.040, queued=2), rung("fp16", 0.025, queued=1), rung("int8", 0.010, queued=1)]
    # fp32: 120 ms, fp16: 50 ms, int8: 20 ms; 20% headroom.
    assert route(rungs, 1, deadline=10.200, now=10.0).rung == 0  # 144 <= 200
    assert route(rungs, 1, deadline=10.100, now=10.0).rung == 1  # fp32 144 > 100; fp16 60 <= 100
    assert route(rungs, 1, deadline=10.030, now=10.0).rung == 2  # fp16 60 > 30; int8 24 <= 30
    assert route(rungs, 1, deadline=10.030, now=10.0, headroom=0.6).rung == 2  # 32 > 30: none fits -> fastest


def test_what_the_request_still_needs_before_its_queue_counts_against_its_deadline() -> None:
    rungs = [rung("fp32", 0.040), rung("int8", 0.010)]
    assert route(rungs, 1, deadline=1.050, now=1.0, lead=0.0).rung == 0  # 48 <= 50
    assert route(rungs, 1, deadline=1.050, now=1.0, lead=0.005).rung == 1  # 48 > 45


def test_when_no_rung_can_make_it_the_one_expected_first_answers() -> None:
    rungs = [rung("fp32", 0.040, queued=5), rung("fp16", 0.020, queued=9), rung("int8", 0.010, queued=20)]
    # fp32 240, fp16 200, int8 210 ms: all miss a 50 ms deadline; fp16 is expected first.
    choice = route(rungs, 1, deadline=0.050, now=0.0)
    assert choice.rung == 1 and choice.expected == pytest.approx(0.200)


def test_a_rung_whose_cost_is_unknown_is_tried_only_when_every_rung_above_misses() -> None:
    rungs = [rung("fp32", 0.040), rung("fp16", 0.0, known=False), rung("int8", 0.010)]
    assert route(rungs, 1, deadline=1.0, now=0.0).rung == 0
    assert route(rungs, 1, deadline=0.030, now=0.0).rung == 1  # fp32 misses; fp16 learns its cost now


def test_the_top_rung_answers_until_its_own_cost_is_known() -> None:
    rungs = [rung("fp32", 0.0, known=False), rung("int8", 0.010)]
    assert route(rungs, 1, deadline=0.001, now=0.0).rung == 0


def test_a_request_of_several_elements_costs_them_all() -> None:
    rungs = [rung("fp32", 0.010), rung("int8", 0.004)]
    assert route(rungs, 1, deadline=0.020, now=0.0).rung == 0  # 12 <= 20
    assert route(rungs, 4, deadline=0.020, now=0.0).rung == 1  # fp32 48 > 20; int8 16 * 1.2 <= 20


def test_a_ladder_has_a_rung() -> None:
    with pytest.raises(ValueError):
        route([], 1, 1.0, 0.0)


def test_rungs_on_one_device_slow_each_other() -> None:
    # The INT8 rung is busy: on the same CPU the FP32 rung's queue takes twice its cost (2 x 120 ms).
    fp32 = rung("fp32", 0.040, queued=2)
    int8 = rung("int8", 0.010, free_in=(0.008,))
    assert completion(fp32, 1, slowdown=2.0) == pytest.approx(0.240)
    assert route([fp32, int8], 1, deadline=0.200, now=0.0).rung == 1  # 288 > 200: down the ladder
    # On another device the busy rung costs the FP32 one nothing: 144 <= 200.
    gpu_int8 = RungOutlook("int8", True, 0.010, 0.010, 1, 0, (0.008,), device="cuda")
    assert route([fp32, gpu_int8], 1, deadline=0.200, now=0.0).rung == 0
    # Idle rungs slow nobody.
    assert route([fp32, rung("int8", 0.010)], 1, deadline=0.200, now=0.0).rung == 0


def test_a_device_busy_lately_slows_what_is_routed_now() -> None:
    # Nothing else runs this instant, but the CPU ran two batches at once lately: a request routed now will
    # run beside the next one. FP32: 2 queued + itself at 40 ms, twice as long: 240 ms > 200.
    fp32 = RungOutlook("fp32", True, 0.040, 0.040, 1, 2, (0.0,), concurrency=2.0)
    int8 = RungOutlook("int8", True, 0.010, 0.010, 1, 0, (0.0,), concurrency=2.0)
    choice = route([fp32, int8], 1, deadline=0.200, now=0.0)
    assert choice.rung == 1 and choice.expected == pytest.approx(0.020)
    # The instant's busy rungs count when they say more than the recent past.
    busy_int8 = RungOutlook("int8", True, 0.010, 0.010, 1, 0, (0.008,), concurrency=1.2)
    assert completion(fp32, 1, slowdown=2.0) == pytest.approx(0.240)
    assert route([RungOutlook("fp32", True, 0.040, 0.040, 1, 2, (0.0,), concurrency=1.2), busy_int8], 1,
                 deadline=0.200, now=0.0).rung == 1
