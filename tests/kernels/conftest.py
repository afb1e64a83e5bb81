"""Fixtures for the kernel tests: every CPU test runs on both CPU tiers; GPU tests need CuPy and a device."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import peregrine.kernels as K
import pytest

CPU_TIERS = [K.NATIVE_CPU, K.NUMBA] if K.has_native() else [K.NUMBA]


@pytest.fixture(params=CPU_TIERS)
def tier(request: pytest.FixtureRequest) -> Iterator[str]:
    """Selects each CPU tier in turn for the test and restores the previous one."""
    previous = K.set_cpu_tier(request.param)
    try:
        yield request.param
    finally:
        K.set_cpu_tier(previous)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240607)


@pytest.fixture(scope="session")
def cp():  # type: ignore[no-untyped-def]
    """CuPy, when it imports and the native module has usable CUDA kernels; otherwise the test skips."""
    cupy = pytest.importorskip("cupy")
    if not K.cuda_available():
        pytest.skip("no CUDA build of peregrine.kernels._native or no CUDA device")
    return cupy
