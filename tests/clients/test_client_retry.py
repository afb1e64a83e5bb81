"""Retries: idempotent calls are retried on UNAVAILABLE; infer, load and unload never are.

A fake servicer fails the first N calls of each method with UNAVAILABLE and counts the calls it received.
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from client_support import FlakyServicer, serve
from peregrine.client import NO_RETRY, AsyncInferenceClient, InferenceClient, PeregrineClientError, RetryPolicy

FAST = RetryPolicy(max_attempts=5, initial_backoff_s=0.01, max_backoff_s=0.05)
X = {"INPUT0": np.zeros((1, 1), np.float32)}


def test_idempotent_calls_are_retried_until_they_succeed() -> None:
    flaky = FlakyServicer(failures=2)
    with serve(flaky) as port, InferenceClient(f"127.0.0.1:{port}", retry=FAST, deadline_s=10) as client:
        assert client.model_metadata("m").name == "m"
        assert client.server_live()
        assert client.repository_index() == []
    assert flaky.calls == {"ModelMetadata": 3, "ServerLive": 3, "RepositoryIndex": 3}


def test_calls_that_change_state_or_run_a_model_are_never_retried() -> None:
    flaky = FlakyServicer(failures=2)
    with serve(flaky) as port, InferenceClient(f"127.0.0.1:{port}", retry=FAST, deadline_s=10) as client:
        for call in (lambda: client.infer("m", X), lambda: client.load_model("m"),
                     lambda: client.unload_model("m")):
            with pytest.raises(PeregrineClientError) as e:
                call()
            assert e.value.code == grpc.StatusCode.UNAVAILABLE
    assert flaky.calls == {"ModelInfer": 1, "RepositoryModelLoad": 1, "RepositoryModelUnload": 1}


def test_retries_stop_after_max_attempts() -> None:
    flaky = FlakyServicer(failures=100)
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)
    with serve(flaky) as port, InferenceClient(f"127.0.0.1:{port}", retry=policy, deadline_s=10) as client:
        with pytest.raises(PeregrineClientError) as e:
            client.model_metadata("m")
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
    assert flaky.calls["ModelMetadata"] == 3


def test_retries_can_be_turned_off() -> None:
    flaky = FlakyServicer(failures=1)
    with (serve(flaky) as port, InferenceClient(f"127.0.0.1:{port}", retry=NO_RETRY, deadline_s=10) as client,
          pytest.raises(PeregrineClientError)):
        client.server_live()
    assert flaky.calls["ServerLive"] == 1


def test_async_client_retries_the_same_way() -> None:
    flaky = FlakyServicer(failures=2)

    async def main(port: int) -> None:
        async with AsyncInferenceClient(f"127.0.0.1:{port}", retry=FAST, deadline_s=10) as client:
            assert (await client.model_metadata("m")).name == "m"
            with pytest.raises(PeregrineClientError) as e:
                await client.infer("m", X)
            assert e.value.code == grpc.StatusCode.UNAVAILABLE

    with serve(flaky) as port:
        asyncio.run(main(port))
    assert flaky.calls == {"ModelMetadata": 3, "ModelInfer": 1}


def test_a_server_that_is_not_there_is_unavailable() -> None:
    with serve(FlakyServicer(failures=0)) as port:
        pass  # the port is closed again
    with InferenceClient(f"127.0.0.1:{port}", retry=FAST, deadline_s=5) as client:
        with pytest.raises(PeregrineClientError) as e:
            client.server_live()
        assert e.value.code == grpc.StatusCode.UNAVAILABLE


def test_retry_policy_limits() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=6)  # gRPC caps attempts at 5
    with pytest.raises(ValueError):
        RetryPolicy(initial_backoff_s=0)
