"""The request histograms count rows in bulk (server/observability/request_histograms.py): what a scrape shows
must be what prometheus_client's own ``Histogram`` shows for the same values, one observation at a time,
whether the rows were counted when FOLD_AT of them were pending or at the scrape."""

from __future__ import annotations

import random

import pytest
from peregrine.server.observability import request_histograms as rh
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(registry: CollectorRegistry, family: str) -> Samples:
    """A family's samples (``_created`` aside: only prometheus_client's own histogram has it)."""
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text)
            if f.name == family for s in f.samples if not s.name.endswith("_created")}


def sample(found: Samples, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def row(model: str, status: str, total: int, ran: tuple[str, int] | None = None,
        stages: tuple[int | None, ...] = (None,) * 7) -> tuple[rh.Key, tuple[int, ...]]:
    """What observe takes for a request: None stands for a stage it did not go through."""
    return (model, status, ran), tuple(rh.NOT_THROUGH if v is None else v for v in (*stages, total))


def test_literal_values_land_in_their_buckets() -> None:
    histograms = rh.RequestHistograms(lambda model: model if model in ("a", "b") else "(unknown)")
    registry = CollectorRegistry()
    registry.register(histograms)
    # 1 ms exactly is in the bucket le="0.001" (upper bounds are inclusive), 1 ms and 1 ns is not.
    histograms.observe(*row("a", "OK", 1_000_000, ("a", 1), (20_000, None, 1_000_000, None, None, None, None)))
    histograms.observe(*row("a", "OK", 1_000_001, ("a", 1), (20_000, None, None, None, None, None, None)))
    histograms.observe(*row("who?", "NOT_FOUND", 50_000))  # failed: no stages; an unknown name's label
    histograms.observe(*row("b", "OK", 7_000_000_000, ("b", 3)))  # past the last stage bound but 10 s
    latency = samples(registry, rh.LATENCY_FAMILY)
    bucket, ok_a = "peregrine_request_duration_seconds_bucket", {"model": "a", "status": "OK"}
    assert [sample(latency, bucket, le=le, **ok_a) for le in ("0.0005", "0.001", "0.002")] == [0, 1, 2]
    assert sample(latency, "peregrine_request_duration_seconds_count", **ok_a) == 2
    assert sample(latency, "peregrine_request_duration_seconds_sum", **ok_a) == pytest.approx(0.002000001)
    assert sample(latency, "peregrine_request_duration_seconds_count", model="(unknown)", status="NOT_FOUND") == 1
    stages = samples(registry, rh.STAGE_FAMILY)
    counts = {dict(labels)["stage"] + "@" + dict(labels)["model"]: v for (name, labels), v in stages.items()
              if name.endswith("_count")}
    assert counts == {"transport_decode@a": 2, "queue@a": 1, "total@a": 2, "total@b": 1}
    b_total = {"model": "b", "version": "3", "stage": "total"}
    assert [sample(stages, "peregrine_pipeline_stage_seconds_bucket", le=le, **b_total) for le in ("5.0", "10.0")] \
        == [0, 1]


def test_bulk_counts_equal_prometheus_clients_histogram_one_value_at_a_time() -> None:
    """Thousands of rows over three label sets and stages that are sometimes absent: the folded counts (some at
    FOLD_AT, the rest at the scrape) against prometheus_client's Histogram fed each value as it came."""
    draw = random.Random(19)
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    histograms = rh.RequestHistograms(lambda model: model)
    ours.register(histograms)
    latency = Histogram(rh.LATENCY_FAMILY, "Server-side request latency, from decode to reply", ["model", "status"],
                        buckets=rh.LATENCY_BUCKETS, registry=theirs)
    stage = Histogram(rh.STAGE_FAMILY, "stages", ["model", "version", "stage"], buckets=rh.STAGE_BUCKETS,
                      registry=theirs)
    for _ in range(3 * rh.FOLD_AT + 17):
        model, status = draw.choice([("m", "OK"), ("m", "UNAVAILABLE"), ("n", "OK")])
        total = draw.choice([draw.randrange(1, 12_000_000_000), 2_000_000, 10_000])  # some exactly on a bound
        stages = tuple(draw.choice([None, draw.randrange(1, 200_000_000), 1_000_000]) for _ in range(7))
        ran = (model, 1) if status == "OK" else None
        histograms.observe(*row(model, status, total, ran, stages))
        latency.labels(model, status).observe(total / 1e9)
        if ran is not None:
            for name, value in zip(rh.STAGES, (*stages, total), strict=True):
                if value is not None:
                    stage.labels(model, "1", name).observe(value / 1e9)
    for family in (rh.LATENCY_FAMILY, rh.STAGE_FAMILY):
        mine, reference = samples(ours, family), samples(theirs, family)
        assert mine.keys() == reference.keys()
        for key, value in reference.items():
            assert mine[key] == pytest.approx(value, rel=1e-9), key


def test_pending_rows_and_their_keys_are_bounded() -> None:
    """Every request naming a model of its own (a client probing names): at most FOLD_AT rows and keys are
    ever pending, and all of them land under the one label the repository allows."""
    histograms = rh.RequestHistograms(lambda model: model if model == "m" else "(unknown)")
    registry = CollectorRegistry()
    registry.register(histograms)
    width = 1 + len(rh.STAGES)
    for i in range(5 * rh.FOLD_AT):
        histograms.observe(*row(f"probe-{i}", "NOT_FOUND", i + 1))
        histograms.observe(*row("m", "OK", i + 1, ("m", 1)))
        assert len(histograms._rows) < rh.FOLD_AT * width and len(histograms._keys) <= rh.FOLD_AT
    latency = samples(registry, rh.LATENCY_FAMILY)
    count = "peregrine_request_duration_seconds_count"
    assert sample(latency, count, model="(unknown)", status="NOT_FOUND") == 5 * rh.FOLD_AT
    assert sample(latency, count, model="m", status="OK") == 5 * rh.FOLD_AT
