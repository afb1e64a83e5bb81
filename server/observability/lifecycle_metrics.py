"""Prometheus families of the model lifecycle, autoscaling, the response cache and the SLO ladders, read at
scrape time.

Every label is a model the repository knows (cold starts only happen to models it lists), so clients
cannot grow the label set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class LifecycleCollector(Collector):
    """``lifecycle``: the server's Lifecycle (cold starts); ``models``: the loaded versions (their
    schedulers' instances and autoscaling decisions); ``cache``: the ResponseCache; ``ladders``: the data
    plane's Ladders (requests per variant), or None."""

    def __init__(self, lifecycle: Any, models: Callable[[], Iterable[Any]], cache: Any, ladders: Any = None) -> None:
        self._lifecycle, self._models, self._cache, self._ladders = lifecycle, models, cache, ladders

    def collect(self) -> Iterable[Any]:
        waits = CounterMetricFamily("peregrine_model_cold_start_requests", "Requests that waited for their "
                                    "model to load on demand", labels=["model"])
        loads = CounterMetricFamily("peregrine_model_on_demand_loads", "Loads made on demand (cold starts)",
                                    labels=["model"])
        seconds = CounterMetricFamily("peregrine_model_on_demand_load_seconds", "Time spent in on-demand loads",
                                      labels=["model"])
        last = GaugeMetricFamily("peregrine_model_last_load_seconds", "Duration of the model's last on-demand "
                                 "load", labels=["model"])
        for name, cold in sorted(self._lifecycle.cold.items()):
            waits.add_metric([name], cold.requests)
            loads.add_metric([name], cold.loads)
            seconds.add_metric([name], cold.load_seconds)
            last.add_metric([name], cold.last_load_seconds)
        yield from (waits, loads, seconds, last)

        instances = GaugeMetricFamily("peregrine_model_instances", "Execution instances in service",
                                      labels=["model", "version"])
        decisions = CounterMetricFamily("peregrine_autoscale_decisions", "Instance autoscaling changes (the "
                                        "last 100 kept per version)", labels=["model", "version", "direction"])
        for m in self._models():
            scheduler = getattr(m, "scheduler", None)
            if scheduler is None:
                continue
            labels = [m.name, str(m.version)]
            instances.add_metric(labels, scheduler.instances)
            scaler = scheduler.scaler
            if scaler is not None:
                up = sum(1 for _, before, after, _ in scaler.decisions if after > before)
                decisions.add_metric([*labels, "up"], up)
                decisions.add_metric([*labels, "down"], len(scaler.decisions) - up)
        yield from (instances, decisions)

        cache = self._cache
        c = cache.counters
        yield GaugeMetricFamily("peregrine_response_cache_bytes", "Bytes the response cache holds", value=cache.used)
        yield GaugeMetricFamily("peregrine_response_cache_capacity_bytes", "The response cache's bound",
                                value=cache.capacity)
        yield GaugeMetricFamily("peregrine_response_cache_entries", "Answers in the response cache", value=len(cache))
        for name, value, about in (("hits", c.hits, "Look-ups answered from the cache"),
                                   ("misses", c.misses, "Look-ups that missed"),
                                   ("inserts", c.inserts, "Answers stored"),
                                   ("evictions", c.evictions, "Answers evicted to stay within the bound")):
            yield CounterMetricFamily(f"peregrine_response_cache_{name}", about, value=value)

        if self._ladders is not None:
            routed = CounterMetricFamily("peregrine_ladder_requests", "Requests of a model with an SLO ladder, by "
                                         "the variant that answered (the model itself or a rung below it)",
                                         labels=["model", "variant"])
            missed = CounterMetricFamily("peregrine_ladder_deadline_misses", "Requests of a model with an SLO "
                                         "ladder answered DEADLINE_EXCEEDED, by the variant they were routed to",
                                         labels=["model", "variant"])
            for model, variant, n, late in self._ladders.counts():
                routed.add_metric([model, variant], n)
                missed.add_metric([model, variant], late)
            yield routed
            yield missed
