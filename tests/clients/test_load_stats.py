"""The harness's arithmetic: HDR percentiles on known inputs, arrival schedules, payload shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from peregrine.client import ModelMetadata, TensorMetadata
from peregrine.client.load import LatencyHistogram, arrival_offsets, make_inputs, resolve_shape


def test_percentiles_of_known_latencies() -> None:
    h = LatencyHistogram()
    for ms in range(1, 1001):  # 1, 2, ..., 1000 ms: the p-th percentile is p * 10 ms
        h.record(ms / 1000)
    s = h.summary_ms()
    assert h.count == 1000
    for key, exact in (("p50", 500), ("p90", 900), ("p99", 990), ("p99.9", 999), ("max", 1000), ("min", 1)):
        assert s[key] == pytest.approx(exact, rel=1e-3), key  # 3 significant figures
    assert s["mean"] == pytest.approx(500.5, rel=1e-3)


def test_a_few_slow_requests_own_the_tail() -> None:
    h = LatencyHistogram()
    for _ in range(990):
        h.record(0.002)
    for _ in range(10):
        h.record(0.250)
    assert h.percentile_ms(50) == pytest.approx(2.0, rel=1e-3)
    assert h.percentile_ms(99) == pytest.approx(2.0, rel=1e-3)  # exactly 99 % are fast
    assert h.percentile_ms(99.9) == pytest.approx(250.0, rel=1e-3)
    assert h.summary_ms()["max"] == pytest.approx(250.0, rel=1e-3)


def test_empty_histogram_and_clamping() -> None:
    h = LatencyHistogram()
    assert math.isnan(h.percentile_ms(99)) and math.isnan(h.summary_ms()["p50"])
    assert h.encode() == ""
    h.record(0.0)  # below 1 µs
    h.record(10_000.0)  # above an hour
    assert h.summary_ms()["min"] == pytest.approx(0.001)
    assert h.summary_ms()["max"] == pytest.approx(3_600_000, rel=1e-3)
    assert h.encode()


def test_constant_arrivals_are_evenly_spaced() -> None:
    it = arrival_offsets(40.0, "constant")
    assert [next(it) for _ in range(5)] == [0.0, 0.025, 0.05, 0.075, 0.1]


def test_poisson_arrivals_have_the_asked_rate_and_are_seeded() -> None:
    it = arrival_offsets(500.0, "poisson", seed=7)
    t = np.array([next(it) for _ in range(20001)])
    gaps = np.diff(t)
    assert gaps.mean() == pytest.approx(1 / 500, rel=0.03)
    assert gaps.std() == pytest.approx(1 / 500, rel=0.05)  # exponential: std == mean
    again = arrival_offsets(500.0, "poisson", seed=7)
    assert [next(again) for _ in range(100)] == list(t[:100])
    with pytest.raises(ValueError):
        next(arrival_offsets(1.0, "bursty"))


def test_shapes_come_from_metadata_the_batch_size_and_overrides() -> None:
    images = TensorMetadata("images", "FP32", (-1, 3, 640, 640))
    assert resolve_shape(images, None, 4) == (4, 3, 640, 640)
    dyn = TensorMetadata("INPUT0", "FP32", (-1, -1))
    assert resolve_shape(dyn, [16], 2) == (2, 16)  # without the batch dimension, as perf_analyzer
    assert resolve_shape(dyn, [3, 16], 2) == (3, 16)  # the full shape
    with pytest.raises(ValueError, match="--shape INPUT0"):
        resolve_shape(dyn, None, 1)
    with pytest.raises(ValueError):
        resolve_shape(images, [3, 320, 320], 1)  # contradicts a fixed dimension


def test_inputs_from_an_image_an_array_and_random_data() -> None:
    meta = ModelMetadata("m", ("1",), "p", (
        TensorMetadata("images", "FP32", (-1, 3, 64, 64)),
        TensorMetadata("ids", "INT64", (-1, 2)),
        TensorMetadata("names", "BYTES", (-1, 1)),
    ), ())
    image = np.zeros((32, 64, 3), np.uint8)
    image[..., 0] = 255
    inputs = make_inputs(meta, batch_size=2, image=image, arrays={"ids": np.array([[1, 2]], np.int64)})
    assert inputs["images"].shape == (2, 3, 64, 64) and inputs["images"].dtype == np.float32
    assert inputs["images"][0, 0, 32, 32] == 1.0  # red channel, inside the letterbox
    assert inputs["images"][0, 0, 0, 32] == pytest.approx(114 / 255)  # grey padding above
    assert inputs["ids"].tolist() == [[1, 2]]
    assert inputs["names"].shape == (2, 1) and isinstance(inputs["names"][0, 0], bytes)
    with pytest.raises(ValueError):
        make_inputs(meta, arrays={"ids": np.zeros((1, 2), np.int32)})  # wrong datatype
    with pytest.raises(ValueError):
        make_inputs(meta, shapes={"nope": [1]})
