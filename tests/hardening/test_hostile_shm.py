"""Hostile local clients against the shared-memory extension (issue 14, finding 1 and the shared-memory half
of finding 7), and a fuzz of the shared-memory calls.

The server runs in a subprocess (``PeregrineServer`` on port 0, which prints the port it bound), the tests
are its clients over real gRPC on loopback, and the shared-memory objects are real ``/dev/shm`` objects
made here as a camera process would make them. A SIGBUS then shows as the server's exit (-7) and fails the
test, instead of killing pytest; a dead server is started again for the next test.

Only what the server offered before the fixes is used (``PeregrineServer``, ``ServerConfig`` with
``shm_key_prefixes``, the protos, tritonclient), so that each test can be run against the old code and
seen to fail there:
``PYTHONPATH=/tmp/origsite .venv/bin/python -m pytest tests/hardening/test_hostile_shm.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from peregrine.proto import grpc_service_pb2 as pb
from peregrine.proto import grpc_service_pb2_grpc as pb_grpc
from support import onnx_models
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

pytestmark = pytest.mark.timeout(120)

INVALID = "StatusCode.INVALID_ARGUMENT"
EXHAUSTED = "StatusCode.RESOURCE_EXHAUSTED"
CALL_S = 10.0  # every call's own timeout
DEFAULT_MAX_REGIONS = 1024  # ServerConfig.max_shm_regions' default
# The statuses docs/SHARED_MEMORY.md lists for the shared-memory calls and for requests that use regions.
DOCUMENTED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
              grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.PERMISSION_DENIED,
              grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNIMPLEMENTED}

# The server process: `options` are ServerConfig fields (only ones the old code has), `nofile` its open-file
# limit. It prints the port it bound and serves until its stdin closes.
LAUNCHER = """
import json, resource, sys
from pathlib import Path
from peregrine.server.app import PeregrineServer
from peregrine.server.config import ServerConfig
spec = json.loads(sys.argv[2])
if spec.get("nofile"):
    resource.setrlimit(resource.RLIMIT_NOFILE, (spec["nofile"], resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
options = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.get("options", {}).items()}
server = PeregrineServer(ServerConfig(model_repository=Path(sys.argv[1]), grpc_port=0, http_port=None, **options))
print(server.start(), flush=True)
sys.stdin.read()
server.stop(grace=1.0)
"""


class ServerProcess:
    """One Peregrine server in a subprocess, and what it logged."""

    def __init__(self, repo: Path, log: Path, **spec: Any) -> None:
        self.log = log
        with open(log, "ab") as err:
            self.proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(repo), json.dumps(spec)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline() if ready else b""
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"the server did not start; its log ends:\n{self.log_tail()}")
        self.port = int(line)
        self.url = f"127.0.0.1:{self.port}"

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def describe(self) -> str:
        """How the server is, for a failed assertion: alive, or how it died (waiting briefly for a crash)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(1.0)
        rc = self.proc.poll()
        if rc is None:
            return "the server is alive"
        how = f" ({signal.Signals(-rc).name})" if rc < 0 else ""
        return f"the server died, exit {rc}{how}; its log ends:\n{self.log_tail()}"

    def assert_serving(self) -> None:
        """The process is alive, takes a new connection and answers an inference."""
        assert self.alive(), self.describe()
        fresh = tc.InferenceServerClient(self.url)
        try:
            assert fresh.is_server_live(client_timeout=CALL_S), self.describe()
            x = np.arange(4, dtype=np.float32).reshape(1, 4)
            inp = tc.InferInput("INPUT0", [1, 4], "FP32")
            inp.set_data_from_numpy(x)
            got = fresh.infer("identity_fp32", [inp], client_timeout=CALL_S).as_numpy("OUTPUT0")
            np.testing.assert_array_equal(got, x)
        finally:
            fresh.close()

    def fds(self) -> int:
        """The server process's open file descriptors."""
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class ShmObject:
    """A POSIX shared-memory object made here, as the client process would make it, with its own
    descriptor (which stays the object's even once its key names another one)."""

    def __init__(self, size: int, prefix: str = "pghostile_", key: str | None = None) -> None:
        self.key = key or f"/{prefix}{uuid.uuid4().hex[:12]}"
        self.path = "/dev/shm" + self.key
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.linked = True
        os.ftruncate(self.fd, size)

    def write(self, data: bytes | np.ndarray, offset: int = 0) -> None:
        os.pwrite(self.fd, bytes(data), offset)

    def read(self, size: int, offset: int = 0) -> bytes:
        return os.pread(self.fd, size, offset)

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)

    def unlink(self) -> None:
        if self.linked:
            self.linked = False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def close(self) -> None:
        self.unlink()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# -- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile_shm")
    onnx_models.write(root, "identity_fp32", onnx_models.identity("FP32", ["N", None]))
    onnx_models.write(root, "identity_bytes", onnx_models.identity("BYTES", ["N", None]))
    return root


class _Servers:
    """Servers of this module by their spec, started on demand and again when one died."""

    def __init__(self, repo: Path, logs: Path) -> None:
        self.repo, self.logs = repo, logs
        self.running: dict[str, ServerProcess] = {}

    def get(self, **spec: Any) -> ServerProcess:
        key = json.dumps(spec, sort_keys=True)
        s = self.running.get(key)
        if s is None or not s.alive():
            if s is not None:
                s.stop()
            s = ServerProcess(self.repo, self.logs / f"server_{len(self.running)}_{time.monotonic_ns()}.log",
                              **spec)
            self.running[key] = s
        return s

    def close(self) -> None:
        for s in self.running.values():
            s.stop()


@pytest.fixture(scope="module")
def servers(hostile_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Servers]:
    pool = _Servers(hostile_repo, tmp_path_factory.mktemp("hostile_shm_logs"))
    yield pool
    pool.close()


@pytest.fixture
def served(servers: _Servers) -> ServerProcess:
    """The module's plain server (started again if a test before killed it)."""
    return servers.get()


@pytest.fixture
def client(served: ServerProcess) -> Iterator[tc.InferenceServerClient]:
    c = tc.InferenceServerClient(served.url)
    yield c
    with contextlib.suppress(InferenceServerException):
        c.unregister_system_shared_memory(client_timeout=CALL_S)
    c.close()


@pytest.fixture
def objects() -> Iterator[Callable[..., ShmObject]]:
    """Makes shared-memory objects; unlinks and closes them all at the end."""
    made: list[ShmObject] = []

    def make(size: int, **kw: Any) -> ShmObject:
        made.append(ShmObject(size, **kw))
        return made[-1]

    yield make
    for o in made:
        o.close()


def _code(call: Callable[[], object]) -> str:
    """The status a tritonclient call ends with ("OK" when it returns)."""
    try:
        call()
    except InferenceServerException as e:
        return str(e.status())
    return "OK"


def _infer_input(c: tc.InferenceServerClient, region: str, byte_size: int, offset: int = 0,
                 elements: int = 16) -> Any:
    inp = tc.InferInput("INPUT0", [1, elements], "FP32")
    inp.set_shared_memory(region, byte_size, offset=offset)
    return c.infer("identity_fp32", [inp], client_timeout=CALL_S)


def _infer_output(c: tc.InferenceServerClient, region: str, byte_size: int, offset: int = 0,
                  elements: int = 16) -> Any:
    inp = tc.InferInput("INPUT0", [1, elements], "FP32")
    inp.set_data_from_numpy(np.arange(elements, dtype=np.float32).reshape(1, elements))
    out = tc.InferRequestedOutput("OUTPUT0")
    out.set_shared_memory(region, byte_size, offset=offset)
    return c.infer("identity_fp32", [inp], outputs=[out], client_timeout=CALL_S)


def _infer_between(c: tc.InferenceServerClient, source: str, target: str, elements: int) -> Any:
    """identity_fp32 from region ``source`` into region ``target`` (FP32 [1, elements] each)."""
    inp = tc.InferInput("INPUT0", [1, elements], "FP32")
    inp.set_shared_memory(source, 4 * elements)
    out = tc.InferRequestedOutput("OUTPUT0")
    out.set_shared_memory(target, 4 * elements)
    return c.infer("identity_fp32", [inp], outputs=[out], client_timeout=CALL_S)


# -- finding 1: a truncated object is an error for that request, never a crash -----------------------------
@pytest.mark.parametrize("shrink_to", [0, 4096 + 32], ids=["to_zero", "below_the_region_end"])
def test_input_from_a_truncated_object_is_an_error_not_a_crash(
        served: ServerProcess, client: tc.InferenceServerClient, objects: Callable[..., ShmObject],
        shrink_to: int) -> None:
    obj = objects(16384)
    x = np.arange(2048, dtype=np.float32)  # two pages: the second is gone once shrunk
    obj.write(x.tobytes(), 4096)
    client.register_system_shared_memory("frames", obj.key, 8192, offset=4096, client_timeout=CALL_S)

    def infer() -> Any:
        return _infer_input(client, "frames", 8192, elements=2048)

    np.testing.assert_array_equal(infer().as_numpy("OUTPUT0")[0], x)
    obj.truncate(shrink_to)  # `truncate -s`: the client shrinks the object under its registered region
    assert _code(infer) == INVALID, served.describe()
    served.assert_serving()
    obj.truncate(16384)  # restored: the region is usable again (the lost bytes read as zeros)
    obj.write(x.tobytes(), 4096)
    np.testing.assert_array_equal(infer().as_numpy("OUTPUT0")[0], x)


@pytest.mark.parametrize("shrink_to", [0, 100], ids=["to_zero", "below_the_region_end"])
def test_output_into_a_truncated_object_is_an_error_not_a_crash(
        served: ServerProcess, client: tc.InferenceServerClient, objects: Callable[..., ShmObject],
        shrink_to: int) -> None:
    obj = objects(16384)
    client.register_system_shared_memory("boxes", obj.key, 8192, offset=64, client_timeout=CALL_S)

    def infer() -> Any:
        return _infer_output(client, "boxes", 8192, elements=2048)  # spans three pages

    infer()
    assert obj.read(8192, 64) == np.arange(2048, dtype=np.float32).tobytes()
    obj.truncate(shrink_to)
    assert _code(infer) == INVALID, served.describe()
    assert os.fstat(obj.fd).st_size == shrink_to  # nothing was written: the object was not grown back
    served.assert_serving()


def test_bytes_input_from_a_truncated_object_is_an_error_not_a_crash(
        served: ServerProcess, client: tc.InferenceServerClient, objects: Callable[..., ShmObject]) -> None:
    words = np.array([[b"camera", b"frame"]], dtype=object)
    payload = serialize_byte_tensor(words).item()
    obj = objects(4096)
    obj.write(payload)
    client.register_system_shared_memory("words", obj.key, len(payload), client_timeout=CALL_S)

    def infer() -> Any:
        inp = tc.InferInput("INPUT0", [1, 2], "BYTES")
        inp.set_shared_memory("words", len(payload))
        return client.infer("identity_bytes", [inp], client_timeout=CALL_S)

    assert infer().as_numpy("OUTPUT0").tolist() == words.tolist()
    obj.truncate(0)
    assert _code(infer) == INVALID, served.describe()
    served.assert_serving()


def test_a_replaced_object_is_checked_by_what_is_mapped_not_by_its_key(
        served: ServerProcess, client: tc.InferenceServerClient, objects: Callable[..., ShmObject]) -> None:
    """The client unlinks the object and makes a new one under the same key: the region stays the object
    that was registered (as in Triton), so shrinking the old one (through a descriptor the client kept)
    must be caught even though the key now names a large, healthy object."""
    old = objects(4096)
    x = np.full(16, 7, np.float32)
    old.write(x.tobytes())
    client.register_system_shared_memory("cam", old.key, 64, client_timeout=CALL_S)
    old.unlink()
    new = objects(4096, key=old.key)
    new.write(np.full(16, 9, np.float32).tobytes())
    np.testing.assert_array_equal(_infer_input(client, "cam", 64).as_numpy("OUTPUT0")[0], x)  # still the old one
    old.truncate(0)
    assert _code(lambda: _infer_input(client, "cam", 64)) == INVALID, served.describe()
    assert _code(lambda: _infer_output(client, "cam", 64)) == INVALID, served.describe()
    served.assert_serving()
    client.unregister_system_shared_memory("cam", client_timeout=CALL_S)  # re-registering follows the new one
    client.register_system_shared_memory("cam", new.key, 64, client_timeout=CALL_S)
    np.testing.assert_array_equal(_infer_input(client, "cam", 64).as_numpy("OUTPUT0")[0], np.full(16, 9, np.float32))


def test_status_unregister_and_register_of_a_truncated_object(
        served: ServerProcess, client: tc.InferenceServerClient, objects: Callable[..., ShmObject]) -> None:
    obj = objects(4096)
    client.register_system_shared_memory("gone", obj.key, 4096, client_timeout=CALL_S)
    client.register_system_shared_memory("gone_too", obj.key, 64, client_timeout=CALL_S)
    obj.truncate(0)
    status = client.get_system_shared_memory_status("gone", client_timeout=CALL_S)
    assert [r.name for r in status.regions.values()] == ["gone"]
    client.unregister_system_shared_memory("gone", client_timeout=CALL_S)
    assert _code(lambda: client.register_system_shared_memory("gone", obj.key, 64, client_timeout=CALL_S)) \
        == INVALID  # too small now
    assert _code(lambda: _infer_input(client, "gone_too", 64)) == INVALID, served.describe()
    client.unregister_system_shared_memory(client_timeout=CALL_S)  # all, one of them truncated
    served.assert_serving()


def test_a_truncation_fails_only_the_requests_that_use_that_region(
        served: ServerProcess, client: tc.InferenceServerClient, objects: Callable[..., ShmObject]) -> None:
    bad, good = objects(64), objects(64)
    x = np.arange(16, dtype=np.float32)
    good.write(x.tobytes())
    client.register_system_shared_memory("bad", bad.key, 64, client_timeout=CALL_S)
    client.register_system_shared_memory("good", good.key, 64, client_timeout=CALL_S)
    bad.truncate(0)
    for _ in range(20):
        assert _code(lambda: _infer_input(client, "bad", 64)) == INVALID, served.describe()
        np.testing.assert_array_equal(_infer_input(client, "good", 64).as_numpy("OUTPUT0")[0], x)


# The data plane's own steps, in a process of its own: lease an input (a view of the mapping, no copy),
# let the client shrink the object, read the view as a model would. A SIGBUS shows as exit -7.
READ_AFTER_SHRINK = """
import os, sys
from peregrine.server.core.errors import InvalidArgument
from peregrine.server.dataplane.shm import SharedMemoryRegistry
key, fd = sys.argv[1], int(sys.argv[2])
registry = SharedMemoryRegistry()
registry.register_system("r", key, 0, 8192)
regions = registry.use()
view = regions.input("r", 0, 8192, "input 'INPUT0'")
os.ftruncate(fd, 0)  # the client shrinks the object after the lease's check
print(int(view.astype("int64").sum()), flush=True)  # the model reads the input
try:
    regions.verify_inputs()
    print("verified")
except InvalidArgument as e:
    print("refused:", e.message)
try:
    registry.use().input("r", 0, 8192, "input 'INPUT0'")
    print("leased again")
except InvalidArgument as e:
    print("refused again:", e.message)
"""


def test_a_shrink_while_the_model_reads_fails_the_request_not_the_process(
        objects: Callable[..., ShmObject]) -> None:
    """Finding 1's remaining window: the object shrinks after the lease's check, while the input is read
    straight from the mapping. The read finishes (on zeros), the request is refused, the region refuses
    further use until registered again, and the process lives."""
    obj = objects(8192)
    obj.write(np.full(8192, 7, np.uint8).tobytes())
    done = subprocess.run([sys.executable, "-c", READ_AFTER_SHRINK, obj.key, str(obj.fd)], pass_fds=(obj.fd,),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    total, verdict, again = done.stdout.splitlines()
    assert int(total) in (0, 7 * 4096)  # the first page may have been read before the fault: zeros after
    assert verdict.startswith("refused:") and "shrank while a request was reading it" in verdict, verdict
    assert again.startswith("refused again:"), again


def test_shrinking_an_object_under_running_requests_never_kills_the_server(
        served: ServerProcess, client: tc.InferenceServerClient, objects: Callable[..., ShmObject]) -> None:
    """The same race over the wire: 8 MB inputs read from a region while the client truncates and restores
    its object as fast as it can. Every request answers OK (with its bytes) or INVALID_ARGUMENT; a region
    that faulted is registered again; the server lives."""
    size = 8 << 20
    elements = size // 4
    x = np.arange(elements, dtype=np.float32)
    obj, out = objects(size), objects(size)
    obj.write(x.tobytes())
    client.register_system_shared_memory("out", out.key, size, client_timeout=CALL_S)

    def register() -> None:  # again, until the object is whole at the moment the server checks it
        with contextlib.suppress(InferenceServerException):
            client.unregister_system_shared_memory("in", client_timeout=CALL_S)
        for _ in range(200):
            with contextlib.suppress(InferenceServerException):
                client.register_system_shared_memory("in", obj.key, size, client_timeout=CALL_S)
                return

    register()
    stop = time.monotonic() + 6.0
    codes: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        import threading

        def shrink() -> None:
            while time.monotonic() < stop:
                obj.truncate(0)
                time.sleep(0.0005)
                obj.truncate(size)
                obj.write(x.tobytes())
                time.sleep(0.005)

        t = threading.Thread(target=shrink, daemon=True)
        t.start()
        stack.callback(t.join)
        while time.monotonic() < stop and served.alive():
            code = _code(lambda: _infer_between(client, "in", "out", elements))
            codes[code] = codes.get(code, 0) + 1
            if code == INVALID:
                register()
    assert served.alive(), served.describe()
    assert set(codes) <= {"OK", INVALID} and codes.get("OK") and codes.get(INVALID), codes
    obj.truncate(size)
    obj.write(x.tobytes())
    register()
    _infer_between(client, "in", "out", elements)
    assert out.read(size) == x.tobytes()
    served.assert_serving()


# -- finding 7: regions and their file descriptors are bounded ---------------------------------------------
def _register_until_refused(url: str, key: str, limit: int) -> tuple[int, grpc.StatusCode]:
    """Registers regions r0, r1, ... of ``key`` until one is refused or ``limit`` are in; (count, status)."""
    with grpc.insecure_channel(url) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        for i in range(limit):
            try:
                stub.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(
                    name=f"r{i}", key=key, offset=0, byte_size=64), timeout=CALL_S)
            except grpc.RpcError as e:
                return i, e.code()
    return limit, grpc.StatusCode.OK


def test_registered_regions_are_capped_and_give_their_descriptors_back(
        servers: _Servers, objects: Callable[..., ShmObject]) -> None:
    nofile = min(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    served = servers.get(nofile=nofile)
    cap = min(DEFAULT_MAX_REGIONS, nofile // 2)
    obj = objects(64)
    c = tc.InferenceServerClient(served.url)
    try:
        before = served.fds()
        count, code = _register_until_refused(served.url, obj.key, cap + 10)
        assert (count, code) == (cap, grpc.StatusCode.RESOURCE_EXHAUSTED), served.describe()
        assert served.fds() <= before + cap + 8  # one descriptor per region at most
        for _ in range(50):  # failed registrations keep nothing
            assert _code(lambda: c.register_system_shared_memory("big", obj.key, 65, client_timeout=CALL_S)) \
                in (INVALID, EXHAUSTED)
        c.unregister_system_shared_memory(client_timeout=CALL_S)
        assert served.fds() <= before + 8
        c.register_system_shared_memory("again", obj.key, 64, client_timeout=CALL_S)  # room again
        served.assert_serving()
    finally:
        with contextlib.suppress(InferenceServerException):
            c.unregister_system_shared_memory(client_timeout=CALL_S)
        c.close()


def test_registrations_never_reach_the_open_file_limit(
        servers: _Servers, objects: Callable[..., ShmObject]) -> None:
    """With a low open-file limit (a systemd service's 1024, here 256) the regions stop well before it:
    the server keeps descriptors for new connections."""
    served = servers.get(nofile=256)
    obj = objects(64)
    count, code = _register_until_refused(served.url, obj.key, 300)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and count <= 128, (count, code, served.describe())
    clients = [tc.InferenceServerClient(served.url) for _ in range(20)]  # new connections are accepted
    try:
        for c in clients:
            assert c.is_server_live(client_timeout=CALL_S)
    finally:
        for c in clients:
            c.close()
    served.assert_serving()
    tc_client = tc.InferenceServerClient(served.url)
    try:
        tc_client.unregister_system_shared_memory(client_timeout=CALL_S)
    finally:
        tc_client.close()


def test_client_strings_are_bounded_in_registrations_and_errors(
        served: ServerProcess, objects: Callable[..., ShmObject]) -> None:
    """A region name is held as long as the region: it is bounded. Names and keys a client sends are
    echoed in messages at most 256 characters long (plus an ellipsis)."""
    obj = objects(64)
    huge = "n" * 100_000
    with grpc.insecure_channel(served.url) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        calls: list[tuple[grpc.StatusCode, Callable[[], object]]] = [
            (grpc.StatusCode.INVALID_ARGUMENT, lambda: stub.SystemSharedMemoryRegister(
                pb.SystemSharedMemoryRegisterRequest(name=huge, key=obj.key, byte_size=64), timeout=CALL_S)),
            (grpc.StatusCode.INVALID_ARGUMENT, lambda: stub.SystemSharedMemoryRegister(
                pb.SystemSharedMemoryRegisterRequest(name="k", key="/" + huge, byte_size=64), timeout=CALL_S)),
            (grpc.StatusCode.NOT_FOUND, lambda: stub.SystemSharedMemoryStatus(
                pb.SystemSharedMemoryStatusRequest(name=huge), timeout=CALL_S)),
        ]
        infer = pb.ModelInferRequest(model_name="identity_fp32")
        t = infer.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
        t.parameters["shared_memory_region"].string_param = huge
        t.parameters["shared_memory_byte_size"].int64_param = 64
        calls.append((grpc.StatusCode.NOT_FOUND, lambda: stub.ModelInfer(infer, timeout=CALL_S)))
        for expected, call in calls:
            with pytest.raises(grpc.RpcError) as e:
                call()
            assert e.value.code() == expected, e.value.details()[:300]
            assert len(e.value.details()) < 1000
        status = stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(), timeout=CALL_S)
        assert huge not in status.regions
    served.assert_serving()


# -- fuzzing: random calls, documented statuses only, a live server after -----------------------------------
FUZZ_PREFIX = f"pgfuzz_{uuid.uuid4().hex[:8]}_"
FUZZ_SIZE = 8192
# Half the draws come from small pools, so that sequences that fit together (register a region, shrink its
# object, infer from it with a matching size) are common; the rest are anything the wire can carry.
_names = st.one_of(st.sampled_from(["a", "b", "c"]), st.text(max_size=300))
_small = st.one_of(st.sampled_from([0, 1, 3, 4, 60, 64, 4096, 8128, 8192]), st.integers(0, 9000))
_u64 = st.one_of(_small, st.integers(0, 2**64 - 1))
_i64 = st.one_of(_small, st.integers(-(2**63), 2**63 - 1))
_slice_offsets = st.one_of(st.sampled_from([0, 4, 64]), _i64)
_slice_sizes = st.one_of(st.sampled_from([4, 64, 4096]), _i64)
_elements = st.one_of(st.none(), st.integers(0, 40))  # None: as many as the slice holds
_bad_keys = st.sampled_from(["", "/", "//x", "/a/b", "/..x", "x\0y", "/" + "k" * 300, "/not_" + FUZZ_PREFIX])
_OPS = st.one_of(
    st.tuples(st.just("register"), _names, st.one_of(st.integers(0, 2), _bad_keys,
                                                     st.text(max_size=20).map(lambda t: f"/{FUZZ_PREFIX}{t}")),
              _u64, _u64),
    st.tuples(st.just("unregister"), st.one_of(_names, st.just(""))),
    st.tuples(st.just("status"), st.one_of(_names, st.just(""))),
    st.tuples(st.just("infer_in"), _names, _slice_offsets, _slice_sizes, _elements,
              st.sampled_from(["FP32", "BYTES"])),
    st.tuples(st.just("infer_out"), _names, _slice_offsets, _slice_sizes, _elements),
    st.tuples(st.just("truncate"), st.integers(0, 2), st.sampled_from([0, 1, 63, 4095, 4096, 8191, FUZZ_SIZE])),
    st.tuples(st.just("replace"), st.integers(0, 2), st.sampled_from([0, 64, FUZZ_SIZE])),
    st.tuples(st.just("cuda"), _names, st.binary(max_size=80)),
    # A sequence that fits together: register a region, shrink its object, use it.
    st.tuples(st.just("shrink_then_use"), st.sampled_from(["a", "b", "c"]), st.integers(0, 2),
              st.sampled_from([0, 64, 4096]), st.sampled_from([64, 4096, 4096 - 64]),
              st.sampled_from([0, 1, 64, 4095, 4096, 4160, 8191]), st.sampled_from([0, 64]),
              st.sampled_from(["infer_in", "infer_out"])),
)


class _Fuzzer:
    """Plays random operations against one server; the objects are made under FUZZ_PREFIX, the only keys
    that server accepts, so nothing of another process's can be mapped (or written)."""

    def __init__(self, servers: _Servers) -> None:
        self.servers = servers
        self.server = servers.get(options={"shm_key_prefixes": [FUZZ_PREFIX]})
        self.channel = grpc.insecure_channel(self.server.url)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.objects = [ShmObject(FUZZ_SIZE, prefix=FUZZ_PREFIX) for _ in range(3)]
        self.noise = np.random.default_rng(14).integers(0, 256, FUZZ_SIZE, np.uint8).tobytes()
        self.seen: set[grpc.StatusCode] = set()

    def reset(self) -> None:
        """Before each example: a live server (a new one if the last example killed it, so that shrinking
        replays against a server that can answer), no regions, full objects of random bytes."""
        if not self.live():
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.server.proc.wait(5)  # a crashed server's exit, so that it is started again
            self.channel.close()
            self.server = self.servers.get(options={"shm_key_prefixes": [FUZZ_PREFIX]})
            self.channel = grpc.insecure_channel(self.server.url)
            self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.call(self.stub.SystemSharedMemoryUnregister, pb.SystemSharedMemoryUnregisterRequest())
        for o in self.objects:
            o.truncate(FUZZ_SIZE)
            o.write(self.noise)

    def live(self) -> bool:
        """The server process runs and answers ServerLive."""
        try:
            return self.server.alive() and self.stub.ServerLive(pb.ServerLiveRequest(), timeout=CALL_S).live
        except grpc.RpcError:
            return False

    def call(self, method: Any, request: Any) -> None:
        try:
            method(request, timeout=CALL_S)
            code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            code = e.code()
        self.seen.add(code)
        assert code in DOCUMENTED, f"{code} for {type(request).__name__}; {self.server.describe()}"

    def infer(self, region: str, offset: int, size: int, elements: int | None, datatype: str, out: bool) -> None:
        if elements is None:
            elements = min(max(size, 0) // 4, 4096)
        req = pb.ModelInferRequest(model_name="identity_bytes" if datatype == "BYTES" else "identity_fp32")
        t = req.inputs.add(name="INPUT0", datatype=datatype, shape=[1, elements])
        o = req.outputs.add(name="OUTPUT0") if out else None
        target = o if o is not None else t
        target.parameters["shared_memory_region"].string_param = region
        target.parameters["shared_memory_offset"].int64_param = offset
        target.parameters["shared_memory_byte_size"].int64_param = size
        if out:
            req.raw_input_contents.append(bytes(4 * elements))
        self.call(self.stub.ModelInfer, req)

    def play(self, op: tuple[Any, ...]) -> None:
        kind = op[0]
        if kind == "register":
            _, name, key, offset, size = op
            key = self.objects[key].key if isinstance(key, int) else key
            self.call(self.stub.SystemSharedMemoryRegister,
                      pb.SystemSharedMemoryRegisterRequest(name=name, key=key, offset=offset, byte_size=size))
        elif kind == "unregister":
            self.call(self.stub.SystemSharedMemoryUnregister, pb.SystemSharedMemoryUnregisterRequest(name=op[1]))
        elif kind == "status":
            self.call(self.stub.SystemSharedMemoryStatus, pb.SystemSharedMemoryStatusRequest(name=op[1]))
        elif kind == "infer_in":
            self.infer(op[1], op[2], op[3], op[4], op[5], out=False)
        elif kind == "infer_out":
            self.infer(op[1], op[2], op[3], op[4], "FP32", out=True)
        elif kind == "truncate":
            self.objects[op[1]].truncate(op[2])
        elif kind == "replace":  # unlinked and made again under the same key; the old descriptor shrinks it
            old = self.objects[op[1]]
            old.unlink()
            self.objects[op[1]] = ShmObject(FUZZ_SIZE, key=old.key)
            old.truncate(op[2])
            old.close()
        elif kind == "shrink_then_use":
            _, name, i, offset, size, shrink_to, at, use = op
            self.play(("register", name, i, offset, size))
            self.play(("truncate", i, shrink_to))
            self.play((use, name, at, size - at, None, "FP32"))
        elif kind == "cuda":
            self.call(self.stub.CudaSharedMemoryRegister,
                      pb.CudaSharedMemoryRegisterRequest(name=op[1], raw_handle=op[2], device_id=0, byte_size=64))
            self.call(self.stub.CudaSharedMemoryStatus, pb.CudaSharedMemoryStatusRequest(name=op[1]))
            self.call(self.stub.CudaSharedMemoryUnregister, pb.CudaSharedMemoryUnregisterRequest(name=op[1]))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.reset()
        self.channel.close()
        for o in self.objects:
            o.close()


def test_fuzz_shared_memory_calls(servers: _Servers) -> None:
    """Register/status/unregister/infer with random names, keys, offsets and sizes, and truncations and
    replacements of the objects in between: every answer is a documented status, the server lives."""
    fuzzer = _Fuzzer(servers)
    started = time.monotonic()

    # No "explain" phase: after a crash every replay starts a server, and shrinking is explanation enough.
    @settings(max_examples=100, deadline=None, database=None, report_multiple_bugs=False,
              phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(_OPS, min_size=1, max_size=8))
    def run(ops: list[tuple[Any, ...]]) -> None:
        fuzzer.reset()
        for op in ops:
            fuzzer.play(op)
        assert fuzzer.live(), fuzzer.server.describe()

    try:
        run()
        fuzzer.server.assert_serving()
    finally:
        fuzzer.close()
    assert grpc.StatusCode.OK in fuzzer.seen and grpc.StatusCode.INVALID_ARGUMENT in fuzzer.seen
    assert time.monotonic() - started < 60
