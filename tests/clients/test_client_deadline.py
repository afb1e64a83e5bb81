"""Deadlines: every call has one, and the server's answer to a late request is DEADLINE_EXCEEDED.

The model "slow" holds a lone request for SLOW_WINDOW_US (5 s) while it waits for a fuller batch: from the
client's side its run takes 5 s, so any deadline well under that must end the call with DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import time

import client_support
import grpc
import numpy as np
import pytest
from client_support import SLOW_WINDOW_US
from peregrine.client import AsyncInferenceClient, InferenceClient, PeregrineClientError

# Fixtures shared with the other client tests (see client_support).
peregrine_server = client_support.peregrine_server
peregrine_url = client_support.peregrine_url

X = {"INPUT0": np.ones((1, 4), np.float32)}
WINDOW_S = SLOW_WINDOW_US / 1e6


def test_a_deadline_shorter_than_the_run_ends_the_call(peregrine_url: str) -> None:
    with InferenceClient(peregrine_url) as client:
        start = time.monotonic()
        with pytest.raises(PeregrineClientError) as e:
            client.infer("slow", X, deadline_s=0.2)
        assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - start < WINDOW_S  # the call ended at its deadline, not after the run


def test_the_client_default_deadline_applies_to_every_call(peregrine_url: str) -> None:
    with InferenceClient(peregrine_url, deadline_s=0.2) as client:
        assert client.server_live()
        with pytest.raises(PeregrineClientError) as e:
            client.infer("slow", X)
        assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_the_server_side_queue_timeout_is_sent(peregrine_url: str) -> None:
    # A 30 s call deadline, but a 100 ms queue timeout: the server itself answers DEADLINE_EXCEEDED.
    with InferenceClient(peregrine_url, deadline_s=30.0) as client:
        with pytest.raises(PeregrineClientError) as e:
            client.infer("slow", X, timeout_us=100_000)
        assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_async_deadline(peregrine_url: str) -> None:
    async def main() -> grpc.StatusCode:
        async with AsyncInferenceClient(peregrine_url) as client:
            try:
                await client.infer("slow", X, deadline_s=0.2)
            except PeregrineClientError as e:
                return e.code
            return grpc.StatusCode.OK

    assert asyncio.run(main()) == grpc.StatusCode.DEADLINE_EXCEEDED
