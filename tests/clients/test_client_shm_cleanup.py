"""Shared-memory registrations end with the program that made them: a region registered through
``register_shared_memory`` is unregistered by the region's or the client's ``close()``, so an example that
fails half-way can be run again (before: ALREADY_EXISTS on the rerun)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import client_support
from peregrine.client import AsyncInferenceClient, InferenceClient, SystemSharedMemory

peregrine_server = client_support.peregrine_server
peregrine_url = client_support.peregrine_url

FAILING_PROGRAM = """
import sys
from peregrine.client import InferenceClient, SystemSharedMemory

with InferenceClient(sys.argv[1]) as client, SystemSharedMemory.create("rerun_cam", 1 << 16) as region:
    client.register_shared_memory(region)
    for frame in camera:   # a placeholder the user has not filled in yet: NameError
        pass
"""


def names(client: InferenceClient) -> set[str]:
    return {s.name for s in client.system_shared_memory_status()}


def test_a_failed_program_can_run_again(peregrine_url: str) -> None:
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", FAILING_PROGRAM, peregrine_url], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 1
        assert "NameError" in done.stderr and "ALREADY_EXISTS" not in done.stderr, done.stderr
    with InferenceClient(peregrine_url) as client:
        assert "rerun_cam" not in names(client)


def test_whichever_closes_first_unregisters(peregrine_url: str) -> None:
    with InferenceClient(peregrine_url) as client:
        # The region closes first (it is the inner `with`): it unregisters itself through the open client.
        with SystemSharedMemory.create("first_region", 4096) as region:
            client.register_shared_memory(region)
            assert "first_region" in names(client)
        assert "first_region" not in names(client)

        # The client closes first: its close() unregisters; the region's own close() later has nothing to do.
        region = SystemSharedMemory.create("first_client", 4096)
        other = InferenceClient(peregrine_url)
        other.register_shared_memory(region)
        assert "first_client" in names(client)
        other.close()
        assert "first_client" not in names(client)
        region.close()

        # Unregistered by hand, then registered again under the same name by someone else: closing the
        # region must not take the newer registration away.
        with SystemSharedMemory.create("reused", 4096) as region:
            client.register_shared_memory(region)
            client.unregister_system_shared_memory("reused")
            client.register_system_shared_memory("reused", region.key, 4096)
        assert "reused" in names(client)
        client.unregister_system_shared_memory("reused")


def test_async_client_unregisters_at_close(peregrine_url: str) -> None:
    async def scenario() -> None:
        with SystemSharedMemory.create("async_region", 4096) as region:
            async with AsyncInferenceClient(peregrine_url) as client:
                await client.register_shared_memory(region)
                assert "async_region" in {s.name for s in await client.system_shared_memory_status()}
            with InferenceClient(peregrine_url) as check:
                assert "async_region" not in names(check)

    asyncio.run(scenario())
