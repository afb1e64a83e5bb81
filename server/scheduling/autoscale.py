"""Instance autoscaling: how many execution instances a model should run, from what it observes.

A pure policy (state + observation -> decision + new state), as the batch policy is: no clock, no I/O, so
it is tested with literal numbers. The driver (:class:`~peregrine.server.models.loading.Scheduler`) samples
the model once per interval and carries the decision out.

One more instance when, for ``up_after_s`` in a row, the queue holds at least ``queue_up`` requests per
instance or the mean latency is over the SLO; one fewer when, for ``down_after_s`` in a row, the queue
holds at most ``queue_down`` per instance and latency is under half the SLO. Between the two thresholds
nothing changes (hysteresis), and after a change nothing changes for ``cooldown_s``. Never below ``min``
or above ``max``; one step at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

INF = float("inf")


@dataclass(frozen=True)
class AutoscaleSettings:
    min_instances: int
    max_instances: int
    slo_s: float | None = None  # mean request latency to keep under (None: queue depth alone decides)
    queue_up: float = 2.0  # queued requests per instance that ask for one more
    queue_down: float = 0.25  # queued requests per instance below which one fewer will do
    up_after_s: float = 2.0
    down_after_s: float = 30.0
    cooldown_s: float = 10.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_instances <= self.max_instances:
            raise ValueError(f"autoscale: expected 1 <= min ({self.min_instances}) <= max ({self.max_instances})")
        if self.queue_down >= self.queue_up:
            raise ValueError(f"autoscale: queue_down ({self.queue_down}) must be below queue_up ({self.queue_up})")


@dataclass(frozen=True)
class Observation:
    now: float  # seconds, any monotonic clock
    instances: int  # running now
    queue_depth: float  # requests waiting, averaged over the sampling interval
    latency_s: float | None  # mean latency of the requests answered in the interval (None: none answered)


@dataclass(frozen=True)
class AutoscaleState:
    pressure_since: float | None = None  # when the scale-up condition began to hold (None: it does not)
    slack_since: float | None = None  # when the scale-down condition began to hold
    last_change: float = -INF


@dataclass(frozen=True)
class Decision:
    instances: int  # what should run
    reason: str

    def changes(self, running: int) -> bool:
        return self.instances != running


def decide(s: AutoscaleSettings, state: AutoscaleState, o: Observation) -> tuple[Decision, AutoscaleState]:
    per_instance = o.queue_depth / max(o.instances, 1)
    over_slo = s.slo_s is not None and o.latency_s is not None and o.latency_s > s.slo_s
    pressure = per_instance >= s.queue_up or over_slo
    calm_latency = s.slo_s is None or o.latency_s is None or o.latency_s <= 0.5 * s.slo_s
    slack = per_instance <= s.queue_down and calm_latency
    pressure_since = (o.now if state.pressure_since is None else state.pressure_since) if pressure else None
    slack_since = (o.now if state.slack_since is None else state.slack_since) if slack else None

    target, reason = o.instances, "steady"
    if o.instances < s.min_instances:
        target, reason = s.min_instances, f"below the minimum of {s.min_instances}"
    elif o.instances > s.max_instances:
        target, reason = s.max_instances, f"above the maximum of {s.max_instances}"
    elif o.now - state.last_change < s.cooldown_s:
        reason = "cooling down after the last change"
    elif pressure_since is not None and o.now - pressure_since >= s.up_after_s and o.instances < s.max_instances:
        target = o.instances + 1
        reason = (f"mean latency {o.latency_s * 1e3:.1f} ms over the SLO of {s.slo_s * 1e3:.1f} ms"  # type: ignore[operator]
                  if over_slo else f"{per_instance:.1f} requests queued per instance (>= {s.queue_up:g})") + \
            f" for {o.now - pressure_since:.1f} s"
    elif slack_since is not None and o.now - slack_since >= s.down_after_s and o.instances > s.min_instances:
        target = o.instances - 1
        reason = f"{per_instance:.2f} requests queued per instance (<= {s.queue_down:g}) for " \
                 f"{o.now - slack_since:.1f} s"
    if target != o.instances:
        return Decision(target, reason), AutoscaleState(None, None, o.now)
    return Decision(target, reason), AutoscaleState(pressure_since, slack_since, state.last_change)
