"""Triton's shared-memory extension as tritonclient (a client nobody here wrote) speaks it: system regions
made with ``tritonclient.utils.shared_memory``, registered and used through ``tritonclient.grpc``.

Every region a test makes is destroyed (unlinked) and unregistered by the ``regions`` fixture. The test
process is both client and server; "the server's mapping" is checked in its registry and in
/proc/self/maps once the client side has unmapped the key.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.utils.shared_memory as shm
from peregrine.server.app import PeregrineServer
from peregrine.server.cli import parse_args
from peregrine.server.config import ServerConfig
from peregrine.server.core.errors import InvalidArgument, PeregrineError, ResourceExhausted
from peregrine.server.dataplane.shm import (
    DEFAULT_MAX_REGIONS,
    MAX_NAME_CHARS,
    SharedMemoryRegistry,
    cuda_available,
)
from support import onnx_models
from support.onnx_models import ALL_TYPES
from support.tensors import random_tensor
from tritonclient.utils import InferenceServerException, serialize_byte_tensor


def _key() -> str:
    return f"/pgtest_{uuid.uuid4().hex[:12]}"


def _server_maps(key: str) -> list[str]:
    """Lines of /proc/self/maps that map ``key`` (deleted or not)."""
    name = "/dev/shm" + key
    return [line for line in Path("/proc/self/maps").read_text().splitlines() if line.split()[-1:] and name in line]


class Regions:
    """Creates tritonclient shared-memory regions and registers them; cleans everything up afterwards."""

    def __init__(self, client: tc.InferenceServerClient) -> None:
        self.client = client
        self.handles: dict[str, Any] = {}
        self.keys: dict[str, str] = {}

    def create(self, name: str, byte_size: int, register: bool = True) -> Any:
        key = _key()
        handle = shm.create_shared_memory_region(name, key, byte_size, create_only=True)
        self.handles[name], self.keys[name] = handle, key
        if register:
            self.client.register_system_shared_memory(name, key, byte_size)
        return handle

    def destroy(self, name: str) -> None:
        shm.destroy_shared_memory_region(self.handles.pop(name))

    def close(self) -> None:
        for name in list(self.handles):
            with contextlib.suppress(InferenceServerException):  # the test's server may be stopped already
                self.client.unregister_system_shared_memory(name)
            self.destroy(name)


def _code(e: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(e.value.status())


@pytest.fixture
def client(url: str) -> Iterator[tc.InferenceServerClient]:
    c = tc.InferenceServerClient(url)
    yield c
    c.close()


@pytest.fixture
def regions(client: tc.InferenceServerClient) -> Iterator[Regions]:
    r = Regions(client)
    yield r
    r.close()


def _payload(x: np.ndarray) -> np.ndarray:
    """What goes into the region: the array, or for BYTES its serialized form (as tritonclient documents)."""
    return serialize_byte_tensor(x) if x.dtype == object else x


def _nbytes(x: np.ndarray) -> int:
    return len(serialize_byte_tensor(x).item()) if x.dtype == object else x.nbytes


# -- round trips ----------------------------------------------------------------------------------
def test_extension_is_advertised(client: tc.InferenceServerClient) -> None:
    extensions = client.get_server_metadata().extensions
    assert "system_shared_memory" in extensions
    assert ("cuda_shared_memory" in extensions) == cuda_available()


@pytest.mark.parametrize("dt", ALL_TYPES)
def test_round_trip_every_datatype(client: tc.InferenceServerClient, regions: Regions, dt: str) -> None:
    """Input and output both in shared memory: the response carries metadata and no tensor bytes."""
    x = random_tensor(dt, (2, 5), np.random.default_rng(len(dt)))
    size = _nbytes(x)
    h_in = regions.create("in", size)
    h_out = regions.create("out", size + 64)  # room to spare: the output says how much it used
    shm.set_shared_memory_region(h_in, [_payload(x)])
    inp = tc.InferInput("INPUT0", list(x.shape), dt)
    inp.set_shared_memory("in", size)
    out = tc.InferRequestedOutput("OUTPUT0")
    out.set_shared_memory("out", size + 64)
    result = client.infer(f"identity_{dt.lower()}", [inp], outputs=[out])
    meta = result.get_output("OUTPUT0")
    assert (meta.datatype, list(meta.shape)) == (dt, [2, 5])
    assert result.get_response().raw_output_contents == [b""]
    assert meta.parameters["shared_memory_region"].string_param == "out"
    assert meta.parameters["shared_memory_byte_size"].int64_param == size
    got = shm.get_contents_as_numpy(h_out, tc.triton_to_np_dtype(dt), list(meta.shape))
    np.testing.assert_array_equal(got, x)
    del got  # the region cannot be unmapped under a view


def test_shm_and_raw_tensors_mixed_in_one_request(client: tc.InferenceServerClient, regions: Regions) -> None:
    """INPUT0 at an offset of a region shared with OUTPUT0, INPUT1 raw; OUTPUT0 in shm, OUTPUT1 raw."""
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 5, np.int32)
    h = regions.create("io", 1024)
    shm.set_shared_memory_region(h, [a], offset=256)
    in0 = tc.InferInput("INPUT0", [2, 16], "INT32")
    in0.set_shared_memory("io", a.nbytes, offset=256)
    in1 = tc.InferInput("INPUT1", [2, 16], "INT32")
    in1.set_data_from_numpy(b)
    out0 = tc.InferRequestedOutput("OUTPUT0")
    out0.set_shared_memory("io", 128, offset=512)
    result = client.infer("simple", [in0, in1], outputs=[out0, tc.InferRequestedOutput("OUTPUT1")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    got = shm.get_contents_as_numpy(h, np.int32, [2, 16], offset=512)
    np.testing.assert_array_equal(got, a + b)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(h, np.int32, [2, 16], offset=256), a)  # not written
    del got


def test_stream_infer_with_shared_memory(client: tc.InferenceServerClient, regions: Regions) -> None:
    h_in, h_out = regions.create("s_in", 64), regions.create("s_out", 64)
    results: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for i in range(3):
            x = np.full((1, 16), i, np.float32)
            shm.set_shared_memory_region(h_in, [x])
            inp = tc.InferInput("INPUT0", [1, 16], "FP32")
            inp.set_shared_memory("s_in", 64)
            out = tc.InferRequestedOutput("OUTPUT0")
            out.set_shared_memory("s_out", 64)
            client.async_stream_infer("identity_fp32", [inp], outputs=[out], request_id=str(i))
            result, error = results.get(timeout=30)
            assert error is None and result.get_response().id == str(i)
            got = shm.get_contents_as_numpy(h_out, np.float32, [1, 16])
            np.testing.assert_array_equal(got, x)
            del got
        inp = tc.InferInput("INPUT0", [1, 16], "FP32")
        inp.set_shared_memory("no_such_region", 64)
        client.async_stream_infer("identity_fp32", [inp], request_id="bad")
        result, error = results.get(timeout=30)
        assert error is not None  # answered inline; the stream goes on
    finally:
        client.stop_stream()


def test_many_concurrent_clients_each_with_their_own_regions(url: str) -> None:
    n_clients, n_requests = 8, 15
    failures: list[BaseException] = []

    def run(worker: int) -> None:
        c = tc.InferenceServerClient(url)
        r = Regions(c)
        try:
            h_in, h_out = r.create(f"c{worker}_in", 128), r.create(f"c{worker}_out", 128)
            for i in range(n_requests):
                a = np.full((2, 16), worker * 1000 + i, np.int32)
                shm.set_shared_memory_region(h_in, [a])
                in0 = tc.InferInput("INPUT0", [2, 16], "INT32")
                in0.set_shared_memory(f"c{worker}_in", 128)
                out = tc.InferRequestedOutput("OUTPUT0")
                out.set_shared_memory(f"c{worker}_out", 128)
                c.infer("identity_int32", [in0], outputs=[out])
                got = shm.get_contents_as_numpy(h_out, np.int32, [2, 16])
                if not (got == a).all():
                    raise AssertionError(f"client {worker} request {i}: got another client's data")
                del got
        except BaseException as e:
            failures.append(e)
        finally:
            r.close()
            c.close()

    threads = [threading.Thread(target=run, args=(w,)) for w in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures


# -- registration semantics -----------------------------------------------------------------------
def test_status_unregister_and_unregister_all(client: tc.InferenceServerClient, regions: Regions) -> None:
    regions.create("st_a", 64)
    regions.create("st_b", 128)
    status = client.get_system_shared_memory_status()
    assert {"st_a", "st_b"} <= set(status.regions)
    one = client.get_system_shared_memory_status("st_b").regions["st_b"]
    assert (one.key, one.offset, one.byte_size) == (regions.keys["st_b"], 0, 128)
    client.unregister_system_shared_memory("st_a")
    client.unregister_system_shared_memory("st_a")  # unknown now: not an error (Triton's behaviour)
    assert "st_a" not in client.get_system_shared_memory_status().regions
    with pytest.raises(InferenceServerException) as e:
        client.get_system_shared_memory_status("st_a")
    assert _code(e) == "StatusCode.NOT_FOUND"
    client.register_system_shared_memory("st_a", regions.keys["st_a"], 32, offset=16)  # the name is free again
    client.unregister_system_shared_memory()  # every region
    assert len(client.get_system_shared_memory_status().regions) == 0


def test_unregister_while_idle_unmaps(client: tc.InferenceServerClient, regions: Regions, server: PeregrineServer
                                      ) -> None:
    h = regions.create("idle", 64)
    key = regions.keys["idle"]
    shm.set_shared_memory_region(h, [np.ones((1, 16), np.float32)])
    inp = tc.InferInput("INPUT0", [1, 16], "FP32")
    inp.set_shared_memory("idle", 64)
    client.infer("identity_fp32", [inp])
    client.unregister_system_shared_memory("idle")
    regions.destroy("idle")  # the client side unmaps and unlinks: what is left is the server's
    assert key not in {r.key for r in server.shared_memory.mapped()}
    assert _server_maps(key) == []


def test_shutdown_unmaps_every_region(start_server: Callable[..., PeregrineServer], tmp_path: Path) -> None:
    onnx_models.write(tmp_path, "identity_fp32", onnx_models.identity("FP32", ["N", None]))
    s = start_server(tmp_path)
    c = tc.InferenceServerClient(f"127.0.0.1:{s.port}")
    r = Regions(c)
    try:
        h = r.create("down", 64)
        shm.set_shared_memory_region(h, [np.ones((1, 16), np.float32)])
        inp = tc.InferInput("INPUT0", [1, 16], "FP32")
        inp.set_shared_memory("down", 64)
        c.infer("identity_fp32", [inp])
        key = r.keys["down"]
        s.stop(grace=1.0)  # the client never unregisters: a client that went away
        r.destroy("down")
        assert s.shared_memory.mapped() == []
        assert _server_maps(key) == []
    finally:
        r.handles.clear()
        c.close()


def test_unregistering_a_region_in_use_waits_for_its_requests(tmp_path: Path) -> None:
    """The registry directly: a lease (a request in flight) keeps the mapping after unregister; the name is
    gone at once; an array that outlives its request reads zeros, never freed memory."""
    key = _key()
    fd = os.open(f"/dev/shm{key}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.write(fd, np.arange(16, dtype=np.float32).tobytes())
        os.close(fd)
        registry = SharedMemoryRegistry()
        registry.register_system("r", key, 0, 64)
        use = registry.use()
        view = use.input("r", 0, 64, "input 'x'").view(np.float32)
        registry.unregister("system", "r")
        assert registry.status("system") == [] and [m.key for m in registry.mapped()] == [key]
        assert len(_server_maps(key)) == 1
        np.testing.assert_array_equal(view, np.arange(16, dtype=np.float32))  # still the client's data
        use.release()
        assert registry.mapped() == [] and _server_maps(key) == []
        np.testing.assert_array_equal(view, np.zeros(16, np.float32))  # placeholder pages, not freed memory
        del view
        registry.close()
    finally:
        os.unlink(f"/dev/shm{key}")


@contextlib.contextmanager
def _object(size: int) -> Iterator[tuple[str, int]]:
    """A shared-memory object of ``size`` bytes as a client makes it: its key and the client's descriptor."""
    key = _key()
    fd = os.open(f"/dev/shm{key}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, size)
        yield key, fd
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"/dev/shm{key}")


def _descriptors_of(key: str, but: int) -> int:
    """This process's file descriptors open on the object ``key`` (unlinked or not), other than ``but``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if int(fd) != but and os.readlink(f"/proc/self/fd/{fd}").startswith(f"/dev/shm{key}"):
                count += 1
    return count


def test_a_shrunk_object_fails_its_uses_and_nothing_touches_it(tmp_path: Path) -> None:
    """The registry directly: once the object no longer covers the region, leases (inputs, outputs) and
    output writes already reserved answer INVALID_ARGUMENT; restored, it serves again. Outputs are written
    through the descriptor, so they land in the client's object."""
    with _object(8192) as (key, fd):
        registry = SharedMemoryRegistry()
        registry.register_system("r", key, 4096, 4096)
        out = registry.use()
        target = out.output("OUTPUT0", "r", 64, 64)
        os.ftruncate(fd, 4096 + 100)  # the region's first page is still there, its end is not
        with pytest.raises(InvalidArgument, match="4196 bytes"):
            registry.use().input("r", 0, 64, "input 'x'")
        with pytest.raises(InvalidArgument):
            registry.use().output("OUTPUT0", "r", 0, 64)
        with pytest.raises(InvalidArgument):
            target.write(np.ones(16, np.float32))
        assert os.fstat(fd).st_size == 4096 + 100  # not written, not grown
        assert [s.name for s in registry.status("system")] == ["r"]  # still registered: status needs no bytes
        os.ftruncate(fd, 8192)
        assert target.write(np.arange(16, dtype=np.float32)) == 64
        assert os.pread(fd, 64, 4096 + 64) == np.arange(16, dtype=np.float32).tobytes()
        out.release()
        registry.close()


def test_region_descriptors_are_bounded_and_closed_on_every_path(tmp_path: Path) -> None:
    with _object(64) as (key, fd):
        registry = SharedMemoryRegistry(max_regions=3)
        for bad in ({"byte_size": 65}, {"offset": 64}):  # failed registrations keep nothing
            with pytest.raises(InvalidArgument):
                registry.register_system("e", key, **{"offset": 0, "byte_size": 64, **bad})
        assert _descriptors_of(key, fd) == 0
        for name in "abc":
            registry.register_system(name, key, 0, 64)
        assert _descriptors_of(key, fd) == 3  # one per region, none more (Python's mmap would keep two)
        with pytest.raises(ResourceExhausted, match="max-shm-regions 3"):
            registry.register_system("d", key, 0, 64)
        registry.unregister("system", "a")
        assert _descriptors_of(key, fd) == 2
        use = registry.use()
        view = use.input("b", 0, 64, "input 'x'")
        registry.unregister("system", "b")  # in use: it keeps its descriptor and its place until released
        registry.register_system("a", key, 0, 64)
        with pytest.raises(ResourceExhausted):
            registry.register_system("d", key, 0, 64)
        use.release()  # a view still alive: the range goes to placeholder pages, the descriptor is closed
        assert _descriptors_of(key, fd) == 2
        registry.register_system("d", key, 0, 64)
        del view
        registry.close()
        assert _descriptors_of(key, fd) == 0
        assert registry.mapped() == [] and _server_maps(key) == []


def test_region_names_are_bounded_and_echoed_clipped() -> None:
    with _object(64) as (key, _):
        registry = SharedMemoryRegistry()
        with pytest.raises(InvalidArgument) as e:
            registry.register_system("n" * 10_000, key, 0, 64)
        assert len(str(e.value)) < 600
        registry.register_system("n" * MAX_NAME_CHARS, key, 0, 64)
        for call in (lambda: registry.register_system("k", "/" + "k" * 10_000, 0, 64),
                     lambda: registry.status("system", "x" * 10_000),
                     lambda: registry.use().input("x" * 10_000, 0, 4, "input 'x'")):
            with pytest.raises(PeregrineError) as e:
                call()
            assert len(str(e.value)) < 600
        registry.close()
    with pytest.raises(ValueError):
        SharedMemoryRegistry(max_regions=0)


def test_max_shm_regions_flag() -> None:
    assert parse_args(["--max-shm-regions", "7"]).max_shm_regions == 7
    assert parse_args([]).max_shm_regions == ServerConfig().max_shm_regions == DEFAULT_MAX_REGIONS


# -- bad requests: the right status, and the server keeps serving ------------------------------------
def _infer_from(client: tc.InferenceServerClient, region: str, byte_size: int, offset: int = 0,
                shape: tuple[int, ...] = (1, 16)) -> None:
    inp = tc.InferInput("INPUT0", list(shape), "FP32")
    inp.set_shared_memory(region, byte_size, offset=offset)
    client.infer("identity_fp32", [inp])


def test_bad_uses_of_a_region(client: tc.InferenceServerClient, regions: Regions) -> None:
    regions.create("bad", 64)
    cases: list[tuple[str, Callable[[], object]]] = [
        ("StatusCode.NOT_FOUND", lambda: _infer_from(client, "never_registered", 64)),
        ("StatusCode.INVALID_ARGUMENT", lambda: _infer_from(client, "bad", 64, offset=32)),  # past the end
        ("StatusCode.INVALID_ARGUMENT", lambda: _infer_from(client, "bad", 64, offset=2**40)),
        ("StatusCode.INVALID_ARGUMENT", lambda: _infer_from(client, "bad", 32)),  # size != shape x dtype
        ("StatusCode.INVALID_ARGUMENT", lambda: _infer_from(client, "bad", 64, shape=(1, 8))),
    ]
    for expected, call in cases:
        with pytest.raises(InferenceServerException) as e:
            call()
        assert _code(e) == expected
    out = tc.InferRequestedOutput("OUTPUT0")
    out.set_shared_memory("bad", 16)  # the output needs 64 bytes
    inp = tc.InferInput("INPUT0", [1, 16], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 16), np.float32))
    with pytest.raises(InferenceServerException) as e:
        client.infer("identity_fp32", [inp], outputs=[out])
    assert _code(e) == "StatusCode.INVALID_ARGUMENT"
    _infer_from(client, "bad", 64)  # still serving


def test_bad_shared_memory_parameters(url: str, regions: Regions) -> None:
    """Parameters tritonclient would never send, written by hand."""
    from peregrine.proto import grpc_service_pb2 as pb
    from peregrine.proto import grpc_service_pb2_grpc as pb_grpc

    regions.create("p", 64)

    def request(**params: Any) -> pb.ModelInferRequest:
        req = pb.ModelInferRequest(model_name="identity_fp32")
        t = req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
        for k, v in params.items():
            if isinstance(v, str):
                t.parameters[k].string_param = v
            elif isinstance(v, float):
                t.parameters[k].double_param = v
            else:
                t.parameters[k].int64_param = v
        return req

    typed = request(shared_memory_region="p", shared_memory_byte_size=64)
    typed.inputs[0].contents.fp32_contents.extend([0.0] * 16)
    bad = [
        request(shared_memory_region="p"),  # no byte size
        request(shared_memory_byte_size=64),  # no region
        request(shared_memory_region="p", shared_memory_byte_size=64.0),  # wrong type
        request(shared_memory_region="p", shared_memory_byte_size=64, shared_memory_offset=-4),
        request(shared_memory_region=7, shared_memory_byte_size=64),  # type: ignore[arg-type]
        typed,  # data both in shm and in contents
    ]
    with grpc.insecure_channel(url) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        for req in bad:
            with pytest.raises(grpc.RpcError) as e:
                stub.ModelInfer(req)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, req
        # raw_input_contents count: one per input not in shared memory (here none)
        raw = request(shared_memory_region="p", shared_memory_byte_size=64)
        raw.raw_input_contents.append(bytes(64))
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(raw)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        stub.ModelInfer(request(shared_memory_region="p", shared_memory_byte_size=64))  # still serving


def test_bad_bytes_in_shared_memory(client: tc.InferenceServerClient, regions: Regions) -> None:
    h = regions.create("bytes", 16)
    shm.set_shared_memory_region(h, [np.frombuffer(b"\xff\x00\x00\x00abcd" + bytes(8), np.uint8)])
    inp = tc.InferInput("INPUT0", [1, 1], "BYTES")
    inp.set_shared_memory("bytes", 16)  # the element claims 255 bytes
    with pytest.raises(InferenceServerException) as e:
        client.infer("identity_bytes", [inp])
    assert _code(e) == "StatusCode.INVALID_ARGUMENT"


def test_bad_registrations(client: tc.InferenceServerClient, regions: Regions) -> None:
    regions.create("dup", 64)
    key = regions.keys["dup"]
    link = f"/dev/shm/pgtest_link_{uuid.uuid4().hex[:8]}"
    os.symlink(f"/dev/shm{key}", link)
    try:
        cases = [
            ("StatusCode.ALREADY_EXISTS", ("dup", key, 64)),
            ("StatusCode.NOT_FOUND", ("missing", f"/pgtest_missing_{uuid.uuid4().hex}", 64)),
            ("StatusCode.INVALID_ARGUMENT", ("big", key, 65)),  # larger than the object
            ("StatusCode.INVALID_ARGUMENT", ("zero", key, 0)),
            ("StatusCode.INVALID_ARGUMENT", ("", key, 64)),
            ("StatusCode.INVALID_ARGUMENT", ("slash", "/dir/key", 64)),
            ("StatusCode.INVALID_ARGUMENT", ("dots", "/..pgtest", 64)),
            ("StatusCode.INVALID_ARGUMENT", ("root", "/", 64)),
            ("StatusCode.INVALID_ARGUMENT", ("link", "/" + Path(link).name, 64)),
        ]
        for expected, (name, k, size) in cases:
            with pytest.raises(InferenceServerException) as e:
                client.register_system_shared_memory(name, k, size)
            assert _code(e) == expected, (name, e.value)
        with pytest.raises(InferenceServerException) as e:
            client.register_system_shared_memory("off", key, 32, offset=48)
        assert _code(e) == "StatusCode.INVALID_ARGUMENT"
        assert set(client.get_system_shared_memory_status().regions) == {"dup"}
    finally:
        os.unlink(link)


@pytest.mark.skipif(cuda_available(), reason="this server has a GPU and CuPy")
def test_cuda_shared_memory_without_a_gpu_registers_nothing_and_answers_the_rest_as_triton(
        client: tc.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as e:  # registering needs a GPU
        client.register_cuda_shared_memory("g", b"AAAA", 0, 64)
    assert _code(e) == "StatusCode.UNAVAILABLE"
    # Clients unregister everything "to be safe" before they start (perf_analyzer does): OK, as in Triton.
    client.unregister_cuda_shared_memory()
    client.unregister_cuda_shared_memory("g")
    assert len(client.get_cuda_shared_memory_status().regions) == 0
    with pytest.raises(InferenceServerException) as e:
        client.get_cuda_shared_memory_status("g")
    assert _code(e) == "StatusCode.NOT_FOUND"


# -- the server's trust options -----------------------------------------------------------------------
def test_key_prefix_allow_list_and_turning_the_extension_off(
        start_server: Callable[..., PeregrineServer], tmp_path: Path) -> None:
    onnx_models.write(tmp_path, "identity_fp32", onnx_models.identity("FP32", ["N", None]))
    strict = start_server(tmp_path, shm_key_prefixes=("pgtest_allowed_",))
    off = start_server(tmp_path, shared_memory=False)
    allowed = f"/pgtest_allowed_{uuid.uuid4().hex[:8]}"
    h_ok = shm.create_shared_memory_region("ok", allowed, 64, create_only=True)
    h_other = shm.create_shared_memory_region("other", _key(), 64, create_only=True)
    c = tc.InferenceServerClient(f"127.0.0.1:{strict.port}")
    c_off = tc.InferenceServerClient(f"127.0.0.1:{off.port}")
    try:
        c.register_system_shared_memory("ok", allowed, 64)
        with pytest.raises(InferenceServerException) as e:
            c.register_system_shared_memory("other", h_other._shm_key, 64)
        assert _code(e) == "StatusCode.PERMISSION_DENIED"
        assert "system_shared_memory" not in c_off.get_server_metadata().extensions
        for call in (lambda: c_off.register_system_shared_memory("ok", allowed, 64),
                     lambda: c_off.get_system_shared_memory_status(),
                     lambda: c_off.unregister_system_shared_memory()):
            with pytest.raises(InferenceServerException) as e:
                call()
            assert _code(e) == "StatusCode.UNIMPLEMENTED"
        c.unregister_system_shared_memory()
    finally:
        c.close()
        c_off.close()
        shm.destroy_shared_memory_region(h_ok)
        shm.destroy_shared_memory_region(h_other)
