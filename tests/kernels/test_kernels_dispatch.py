"""Tier selection and reporting."""

from __future__ import annotations

import os
import subprocess
import sys

import peregrine.kernels as K
import pytest


def test_active_tier_reports_a_known_tier() -> None:
    assert K.active_tier() in (K.NATIVE_CPU, K.NUMBA)
    assert K.active_tier("cuda") in (K.NATIVE_CUDA, "none")
    with pytest.raises(ValueError, match="device"):
        K.active_tier("tpu")


def test_set_cpu_tier_round_trips() -> None:
    previous = K.set_cpu_tier(K.NUMBA)
    try:
        assert K.active_tier() == K.NUMBA
    finally:
        K.set_cpu_tier(previous)
    assert K.active_tier() == previous
    with pytest.raises(ValueError, match="tier"):
        K.set_cpu_tier("gpu")


@pytest.mark.parametrize(("env", "expected"), [("numba", K.NUMBA), ("auto", None)])
def test_environment_variable_selects_the_tier(env: str, expected: str | None) -> None:
    code = "import peregrine.kernels as K; print(K.active_tier())"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PEREGRINE_KERNELS": env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    want = expected or (K.NATIVE_CPU if K.has_native() else K.NUMBA)
    assert result.stdout.strip() == want


def test_cuda_device_count_is_graceful_without_a_gpu() -> None:
    if not K.has_native():
        pytest.skip("native module not built")
    from peregrine.kernels import _native

    count = _native.cuda_device_count()
    assert isinstance(count, int) and count >= 0
    assert K.cuda_available() == (_native.has_cuda() and count > 0)
