"""The autoscaling policy with literal numbers: load steps, hysteresis, cool-down, bounds."""

from __future__ import annotations

import pytest
from peregrine.server.scheduling.autoscale import AutoscaleSettings, AutoscaleState, Observation, decide

S = AutoscaleSettings(min_instances=1, max_instances=3, slo_s=0.050, queue_up=2.0, queue_down=0.25,
                      up_after_s=2.0, down_after_s=10.0, cooldown_s=5.0)


def run(samples: list[tuple[float, float, float | None]], instances: int = 1,
        settings: AutoscaleSettings = S) -> list[tuple[float, int, str]]:
    """Feed (time, queue depth, latency) samples; carry decisions out at once; the changes made."""
    state = AutoscaleState()
    changes = []
    for now, queue, latency in samples:
        decision, state = decide(settings, state, Observation(now, instances, queue, latency))
        if decision.changes(instances):
            instances = decision.instances
            changes.append((now, instances, decision.reason))
    return changes


def test_a_load_step_adds_instances_one_at_a_time_after_the_sustain_and_cool_down() -> None:
    # From t=0 the queue holds 10 requests (10 per instance with one instance): sustained 2 s -> 2 at t=2;
    # then cool-down 5 s -> 3 at t=7 (5 per instance still >= 2); never above the maximum of 3.
    changes = run([(t, 10.0, 0.020) for t in range(0, 20)])
    assert [(t, n) for t, n, _ in changes] == [(2, 2), (7, 3)]
    assert "10.0 requests queued per instance" in changes[0][2]


def test_latency_over_the_slo_scales_up_with_an_empty_queue() -> None:
    changes = run([(t, 0.0, 0.080) for t in range(0, 4)])
    assert [(t, n) for t, n, _ in changes] == [(2, 2)]
    assert "over the SLO of 50.0 ms" in changes[0][2]


def test_a_short_burst_does_not_scale() -> None:
    samples = [(0, 10.0, 0.02), (1, 10.0, 0.02), (2, 0.0, 0.01), (3, 10.0, 0.02), (4, 0.0, 0.01)]
    assert run(samples) == []


def test_between_the_thresholds_nothing_changes_hysteresis() -> None:
    # 1 request per instance: below queue_up (2) and above queue_down (0.25): two instances stay two.
    assert run([(t, 2.0, 0.020) for t in range(0, 60)], instances=2) == []


def test_idle_scales_down_to_the_minimum_slowly() -> None:
    changes = run([(t, 0.0, None) for t in range(0, 40)], instances=3)
    # 10 s of slack each; the count restarts after a change (the sample at t=10 made it): 11 + 10 = 21.
    assert [(t, n) for t, n, _ in changes] == [(10, 2), (21, 1)]


def test_latency_near_the_slo_keeps_capacity_even_with_an_empty_queue() -> None:
    # 40 ms is under the 50 ms SLO but over half of it: not slack, so no scale-down.
    assert run([(t, 0.0, 0.040) for t in range(0, 60)], instances=2) == []


def test_bounds_are_restored_at_once() -> None:
    assert [(t, n) for t, n, _ in run([(0, 0.0, None)], instances=5)] == [(0, 3)]
    assert [(t, n) for t, n, _ in run([(0, 0.0, None)], instances=0)] == [(0, 1)]


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        AutoscaleSettings(min_instances=3, max_instances=2)
    with pytest.raises(ValueError):
        AutoscaleSettings(min_instances=1, max_instances=2, queue_up=1.0, queue_down=1.0)
