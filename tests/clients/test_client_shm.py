"""Peregrine's client with system shared memory, and ``peregrine-load --shared-memory system``, against a real
in-process server. Every region made here is unregistered and unlinked."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import client_support
import grpc
import numpy as np
import pytest
from peregrine.client import (
    AsyncInferenceClient,
    InferenceClient,
    InferRequest,
    PeregrineClientError,
    SharedMemoryInput,
    SystemSharedMemory,
)
from peregrine.client.load.cli import main
from peregrine.server.app import PeregrineServer

# Fixtures shared with the other client tests (see client_support).
peregrine_server = client_support.peregrine_server
peregrine_url = client_support.peregrine_url


def _ours() -> set[str]:
    """Shared-memory objects this process made and has not unlinked."""
    return {f for f in os.listdir("/dev/shm") if f.startswith("peregrine_") and f"_{os.getpid()}_" in f}


@pytest.fixture
def client(peregrine_url: str) -> Iterator[InferenceClient]:
    with InferenceClient(peregrine_url) as c:
        yield c


@pytest.fixture
def region(client: InferenceClient) -> Iterator[SystemSharedMemory]:
    with SystemSharedMemory.create("client_io", 8192) as r:
        client.register_shared_memory(r)
        yield r
        client.unregister_system_shared_memory(r.name)


def test_region_lifecycle() -> None:
    before = _ours()
    r = SystemSharedMemory.create("life", 256)
    assert os.path.exists(f"/dev/shm{r.key}") and _ours() - before == {r.key[1:]}
    x = np.arange(12, dtype=np.float64).reshape(3, 4)
    t = r.put(x, offset=64)
    assert (t.region, t.datatype, t.shape, t.offset, t.byte_size) == ("life", "FP64", (3, 4), 64, 96)
    np.testing.assert_array_equal(r.read("FP64", (3, 4), offset=64), x)
    r.view(np.int32, (4,))[:] = [1, 2, 3, 4]
    other = SystemSharedMemory.attach("life", r.key)  # another process would do this
    np.testing.assert_array_equal(other.read("INT32", (4,)), [1, 2, 3, 4])
    other.close()
    assert os.path.exists(f"/dev/shm{r.key}")  # attach does not own it
    r.put(np.zeros(64, np.float32))  # 256 bytes fit at offset 0, not at 8
    with pytest.raises(ValueError):
        r.put(np.zeros(64, np.float32), offset=8)
    with pytest.raises(FileExistsError):
        SystemSharedMemory.create("again", 16, key=r.key)
    with pytest.raises(ValueError):
        SystemSharedMemory.create("bad", 16, key="/a/b")
    r.close()
    r.close()
    assert _ours() == before


def test_infer_with_inputs_and_outputs_in_shared_memory(client: InferenceClient, region: SystemSharedMemory) -> None:
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 7, np.int32)
    in0 = region.put(a)
    out = client.infer("simple", {"INPUT0": in0, "INPUT1": b}, outputs=["OUTPUT1"],
                       outputs_to_shm={"OUTPUT0": region.output_at(1024, 128)})
    np.testing.assert_array_equal(out["OUTPUT0"], a + b)
    np.testing.assert_array_equal(out["OUTPUT1"], a - b)
    assert np.shares_memory(out["OUTPUT0"], region.read("INT32", (2, 16), 1024))  # a view of the region
    status = client.system_shared_memory_status(region.name)
    assert [(s.name, s.key, s.byte_size) for s in status] == [(region.name, region.key, 8192)]


def test_bytes_and_stream(client: InferenceClient, region: SystemSharedMemory) -> None:
    x = np.array([[b"", b"\x00\x01", "\u00e9".encode(), b"camera"]], dtype=object)
    inp = region.put(x, offset=4096)
    slot = region.output_at(6144, 1024)
    out = client.infer("identity_bytes", {"INPUT0": inp}, outputs_to_shm={"OUTPUT0": slot})
    np.testing.assert_array_equal(out["OUTPUT0"], x)
    requests = [InferRequest("identity_fp32", {"INPUT0": region.put(np.full((1, 4), i, np.float32), 256 * i)},
                             outputs_to_shm={"OUTPUT0": region.output_at(2048 + 256 * i, 16)}) for i in range(3)]
    results = list(client.stream_infer(requests))
    assert [r.ok for r in results] == [True] * 3
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r.outputs["OUTPUT0"], np.full((1, 4), i, np.float32))


def test_async_client(peregrine_url: str) -> None:
    async def go() -> None:
        async with AsyncInferenceClient(peregrine_url) as c:
            with SystemSharedMemory.create("async_io", 1024) as r:
                await c.register_shared_memory(r)
                try:
                    x = np.linspace(0, 1, 16, dtype=np.float32).reshape(1, 16)
                    out = await c.infer("identity_fp32", {"INPUT0": r.put(x)},
                                        outputs_to_shm={"OUTPUT0": r.output_at(512)})
                    np.testing.assert_array_equal(out["OUTPUT0"], x)
                    assert [s.name for s in await c.system_shared_memory_status()] == ["async_io"]
                finally:
                    await c.unregister_system_shared_memory(r.name)

    asyncio.run(go())


def test_errors(client: InferenceClient, region: SystemSharedMemory) -> None:
    with pytest.raises(PeregrineClientError) as e:
        client.register_shared_memory(region)
    assert e.value.code == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(PeregrineClientError) as e:
        client.register_system_shared_memory("nope", "/peregrine_no_such_key_anywhere", 64)
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(PeregrineClientError) as e:  # past the end of the region: the server checks too
        client.infer("identity_fp32", {"INPUT0": SharedMemoryInput(region.name, "FP32", (1, 4), 8190, 16)})
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(PeregrineClientError) as e:
        client.infer("identity_fp32", {"INPUT0": SharedMemoryInput("not_registered", "FP32", (1, 4), 0, 16)})
    assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_input_at_checks_bounds(region: SystemSharedMemory) -> None:
    with pytest.raises(ValueError):
        region.input_at("FP32", (1, 4), offset=8190)
    with pytest.raises(ValueError):
        region.input_at("BYTES", (1, 4))


@pytest.mark.parametrize("load", [["-c", "2"], ["--rate", "200"]])
def test_load_harness_with_shared_memory(peregrine_url: str, peregrine_server: PeregrineServer,
                                         load: list[str], tmp_path: Path) -> None:
    before = _ours()
    rc = main(["identity_fp32", "-u", peregrine_url, "--shape", "INPUT0:4096", *load, "--shared-memory", "system",
               "--warmup", "0.2", "--duration", "0.5", "--no-progress", "--json", str(tmp_path / "r.json")])
    assert rc == 0
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["ok"] == summary["sent"] > 0 and summary["errors"] == {}
    assert summary["payload"].endswith("in system shared memory")
    assert peregrine_server.shared_memory.mapped() == []  # every set was unregistered
    assert _ours() == before  # and unlinked
