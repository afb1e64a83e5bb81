"""The SLO ladder's routing policy with literal numbers (server/scheduling/ladder.py)."""

from __future__ import annotations

import math

import pytest
from peregrine.server.scheduling.ladder import (
    RungOutlook,
    batch_cost,
    completion,
    element_cost,
    pending_work,
    route,
    sustainable_share,
)

INF = math.inf


def rung(name: str, one: float, full: float | None = None, batch: int = 1, queued: int = 0,
         free_in: tuple[float, ...] = (0.0,), known: bool = True, device: str | None = None) -> RungOutlook:
    """A rung; on a device of its own unless ``device`` names one (rungs sharing one: the tests below)."""
    return RungOutlook(name, known, one, one * batch if full is None else full, batch, queued, free_in,
                       device or f"device-of-{name}")


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


def test_rungs_on_one_device_share_its_time() -> None:
    # FP32: 2 queued at 40 ms; INT8 on the same CPU: 8 ms left of its batch and 3 queued at 10 ms.
    fp32 = rung("fp32", 0.040, queued=2, device="cpu")
    int8 = rung("int8", 0.010, queued=3, free_in=(0.008,), device="cpu")
    assert pending_work(fp32) == pytest.approx(0.080) and pending_work(int8) == pytest.approx(0.038)
    # FP32 answers after its own 120 ms and the 38 ms INT8 holds: 158 * 1.2 = 190 <= 200.
    choice = route([fp32, int8], 1, deadline=0.200, now=0.0)
    assert choice.rung == 0 and choice.expected == pytest.approx(0.158)
    # 190 > 180: down the ladder, where the request waits 48 ms for INT8 and the 80 ms FP32 holds.
    choice = route([fp32, int8], 1, deadline=0.180, now=0.0)
    assert choice.rung == 1 and choice.expected == pytest.approx(0.128)
    # On another device the busy rung costs the FP32 one nothing: 144 <= 180.
    assert route([fp32, rung("int8", 0.010, queued=3, free_in=(0.008,), device="cuda")], 1, deadline=0.180,
                 now=0.0).rung == 0


def test_a_device_busy_lately_slows_what_is_routed_now() -> None:
    # The CPU ran two batches at once lately: a request routed now will run beside the next ones. FP32: 2
    # queued + itself at 40 ms, twice as long: 240 ms > 200. INT8: 20 ms, after the 80 ms FP32 holds.
    fp32 = RungOutlook("fp32", True, 0.040, 0.040, 1, 2, (0.0,), concurrency=2.0)
    int8 = RungOutlook("int8", True, 0.010, 0.010, 1, 0, (0.0,), concurrency=2.0)
    choice = route([fp32, int8], 1, deadline=0.200, now=0.0)
    assert choice.rung == 1 and choice.expected == pytest.approx(0.100)


def test_what_happened_corrects_the_estimates() -> None:
    # FP32 alone is expected in 40 ms (48 with headroom, <= 100); its requests have lately taken 2.5 times
    # their estimates: 120 > 100, and INT8 answers.
    assert route([rung("fp32", 0.040), rung("int8", 0.010)], 1, deadline=0.100, now=0.0).rung == 0
    fp32 = RungOutlook("fp32", True, 0.040, 0.040, 1, 0, (0.0,), device="a", correction=2.5)
    choice = route([fp32, rung("int8", 0.010)], 1, deadline=0.100, now=0.0)
    assert choice.rung == 1 and choice.expected == pytest.approx(0.010)


def test_a_ladder_asking_more_than_its_device_has_is_pushed_down() -> None:
    # Both rungs idle and in time (deadline 1 s): which one answers depends on the ladder's recent demand.
    rungs = [rung("fp32", 0.040), rung("int8", 0.010)]
    assert element_cost(rungs[0]) == 0.040
    # Half the device asked for lately: the top rung.
    assert route(rungs, 1, deadline=1.0, now=0.0, demand=0.5, rate=20.0).rung == 0
    # 95% asked for, 25 requests a second: each may cost 0.85 / 25 = 34 ms, FP32's 40 does not fit.
    assert route(rungs, 1, deadline=1.0, now=0.0, demand=0.95, rate=25.0).rung == 1
    # At 20 a second, 42.5 ms each: FP32 fits again; a request of two elements costs 80 ms and does not.
    assert route(rungs, 1, deadline=1.0, now=0.0, demand=0.95, rate=20.0).rung == 0
    assert route(rungs, 2, deadline=1.0, now=0.0, demand=0.95, rate=20.0).rung == 1
    # Over what even the last rung affords (8.5 ms each at 100 a second), the last rung still answers.
    assert route(rungs, 1, deadline=1.0, now=0.0, demand=2.0, rate=100.0).rung == 1
    # No rung in time (deadline 5 ms): the one expected first (FP32, idle, before INT8's 40 ms of queue),
    # unless the demand is over: then the best chance among the rungs it can afford.
    loaded = [rung("fp32", 0.040), rung("int8", 0.010, queued=4)]
    assert route(loaded, 1, deadline=0.005, now=0.0).rung == 0
    assert route(loaded, 1, deadline=0.005, now=0.0, demand=0.95, rate=25.0).rung == 1
    # Allowed less of the device (a CPU's default share, 0.6): at 20 a second each may cost 30 ms.
    assert sustainable_share("cpu") == 0.6 and sustainable_share("cuda") == 0.85
    assert route(rungs, 1, deadline=1.0, now=0.0, demand=0.7, rate=20.0, sustainable=0.6).rung == 1
    # A batching rung's element costs what its recent batches cost an element, at the sizes they ran; before
    # any ran, a share of its full batch: 64 ms for 8 is 8 ms each.
    assert element_cost(rung("gpu", 0.020, full=0.064, batch=8)) == 0.008
    assert element_cost(RungOutlook("gpu", True, 0.020, 0.064, 8, 0, (0.0,), per_element=0.012)) == 0.012


def test_a_ladders_recent_rate_and_demand_decay() -> None:
    from peregrine.server.dataplane.ladders import DEMAND_WINDOW_S, Ladders

    ladders = Ladders(None)  # type: ignore[arg-type]
    assert ladders._pace("cam", 10.0) == (0.0, 0.0)
    ladders._paced["cam"] = (40.0, 1.6, 10.0)  # 40 requests asking 1.6 device seconds, as of t = 10 s
    assert ladders._pace("cam", 10.0) == (40.0, 1.6)
    requests, demand = ladders._pace("cam", 10.0 + DEMAND_WINDOW_S)
    assert requests == pytest.approx(40.0 / math.e) and demand == pytest.approx(1.6 / math.e)


def test_a_ladders_corrections_follow_what_happened_and_fade() -> None:
    import time

    from peregrine.server.dataplane.ladders import CORRECTION_FADE_S, Ladders

    ladders = Ladders(None)  # type: ignore[arg-type]  # corrections need no repository
    assert ladders.correction("cam", "cam_320", time.monotonic()) == 1.0
    for _ in range(100):  # its requests take twice their estimates
        ladders.observe_answer("cam", "cam_320", expected=0.050, seconds=0.100)
    now = time.monotonic()
    learned = ladders.correction("cam", "cam_320", now)
    assert learned == pytest.approx(2.0, abs=0.05)  # the 95th percentile of a ratio that is always 2
    # Unobserved (a rung corrected out of use), it fades back toward 1.
    assert ladders.correction("cam", "cam_320", now + CORRECTION_FADE_S) == pytest.approx(1 + (learned - 1) / math.e)
    assert ladders.correction("cam", "cam_320", now + 10 * CORRECTION_FADE_S) == pytest.approx(1.0, abs=1e-3)
    # No estimate, nothing learned; ratios are kept within 0.5..8.
    ladders.observe_answer("cam", "cam", expected=math.inf, seconds=0.1)
    assert ladders.correction("cam", "cam", time.monotonic()) == 1.0
    for _ in range(200):
        ladders.observe_answer("cam", "cam", expected=0.001, seconds=10.0)
    assert ladders.correction("cam", "cam", time.monotonic()) == pytest.approx(8.0, abs=0.01)
