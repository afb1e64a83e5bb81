"""Hostile clients against request decoding, model names and versions, and load overrides (issue 14,
findings 4 and 9): a real server on loopback, real sockets, one test per finding item, each bounded in time.

Only what the server offered before the fixes is used here (``PeregrineServer``, ``ServerConfig``, the protos,
tritonclient, and for the logging item the batcher's public class), so that each test can be run against the
old code and seen to fail there:
``PYTHONPATH=/tmp/origsite .venv/bin/python -m pytest tests/hardening/test_hostile_decoding.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.utils.shared_memory as shm
from peregrine.proto import grpc_service_pb2 as pb
from peregrine.proto import grpc_service_pb2_grpc as pb_grpc
from peregrine.server.app import PeregrineServer
from peregrine.server.config import ServerConfig
from support import onnx_models

INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
REFUSED = {INVALID, NOT_FOUND}
PAGE = os.sysconf("SC_PAGE_SIZE")

# The memory bomb: a BYTES input of 2^29 elements in a request of a few dozen bytes. Before the fix the
# server allocated 2^29 object pointers (4 GiB) before looking at the bytes. Bounds for the fixed server:
RSS_BOUND = 64 << 20  # its resident set may grow by less than this while answering
ANSWER_BOUND_S = 2.0  # and it answers within this


def _statm_resident() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE


@contextlib.contextmanager
def _peak_rss_growth() -> Iterator[list[int]]:
    """Samples this process's resident set (the server runs in it) every millisecond while the block runs;
    yields a list that holds the peak growth in bytes afterwards."""
    base = _statm_resident()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _statm_resident())
            done.wait(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    growth = [0]
    try:
        yield growth
    finally:
        done.set()
        sampler.join()
        growth[0] = max(peak[0], _statm_resident()) - base


# -- the server ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    onnx_models.write(root, "identity_bytes", onnx_models.identity("BYTES", ["N", None]))
    onnx_models.write(root, "identity_int32", onnx_models.identity("INT32", ["N", None]))
    onnx_models.write(root, "simple", onnx_models.add_sub(["N", 16]),
                      "max_batch_size = 8\n\n[dynamic_batching]\nmax_queue_delay_us = 100\n")
    # A version directory in the repository root itself: RepositoryModelLoad("") must not serve it.
    onnx_models.write(root, "", onnx_models.identity("INT32", ["N", None]))  # root/1/model.onnx
    return root


@pytest.fixture(scope="module")
def served(repo: Path) -> Iterator[PeregrineServer]:
    server = PeregrineServer(ServerConfig(model_repository=repo, grpc_port=0, http_port=None))
    server.start()
    yield server
    server.stop(grace=1.0)


@pytest.fixture(scope="module")
def stub(served: PeregrineServer) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _status(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def _infer(stub: Any, req: pb.ModelInferRequest) -> tuple[grpc.StatusCode, str]:
    return _status(lambda: stub.ModelInfer(req, timeout=30))


def _request(model: str, datatype: str, shape: list[int], raw: bytes | None = None) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="INPUT0", datatype=datatype, shape=shape)
    if raw is not None:
        req.raw_input_contents.append(raw)
    return req


def _load(stub: Any, name: str, config: str | None = None) -> tuple[grpc.StatusCode, str]:
    req = pb.RepositoryModelLoadRequest(model_name=name)
    if config is not None:
        req.parameters["config"].string_param = config
    return _status(lambda: stub.RepositoryModelLoad(req, timeout=30))


def _assert_still_serving(stub: Any) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    req = pb.ModelInferRequest(model_name="simple")
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    for name in ("INPUT0", "INPUT1"):
        req.inputs.add(name=name, datatype="INT32", shape=[2, 16])
        req.raw_input_contents.append(a.tobytes())
    out = stub.ModelInfer(req, timeout=30)
    np.testing.assert_array_equal(np.frombuffer(out.raw_output_contents[0], np.int32).reshape(2, 16), 2 * a)


# -- finding 4: sizes checked against the bytes present before anything is allocated --------------------
def _stream_infer(stub: Any, req: pb.ModelInferRequest) -> tuple[grpc.StatusCode, str]:
    """ModelStreamInfer answers an error in the response; map it back to a status for the assertions."""
    answers = list(stub.ModelStreamInfer(iter([req]), timeout=30))
    assert len(answers) == 1
    return (grpc.StatusCode.OK, "") if not answers[0].error_message else (INVALID, answers[0].error_message)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["raw, empty", "raw, one element", "stream", "typed contents", "shared memory"])
def test_a_34_byte_bytes_request_allocates_nothing(stub: Any, served: PeregrineServer, how: str) -> None:
    """Finding 4: BYTES of shape [2^29] with (almost) no bytes is refused at once, and the server's
    resident set grows by less than RSS_BOUND while it answers (it took 9-13 s and 4 GiB before)."""
    count = 1 << 29
    req = _request("identity_bytes", "BYTES", [count])
    region = key = None
    if how == "raw, empty" or how == "stream":
        req.raw_input_contents.append(b"")
    elif how == "raw, one element":
        req.raw_input_contents.append(b"\x01\x00\x00\x00a")
    elif how == "typed contents":
        req.inputs[0].contents.bytes_contents.append(b"a")
    else:
        region, key = f"bomb-{uuid.uuid4().hex[:8]}", f"/pg_hostile_{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(region, key, 64, create_only=True)
        stub.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(name=region, key=key, byte_size=64),
                                        timeout=10)
        params = req.inputs[0].parameters
        params["shared_memory_region"].string_param = region
        params["shared_memory_byte_size"].int64_param = 64
    assert req.ByteSize() < 200
    try:
        started = time.monotonic()
        with _peak_rss_growth() as growth:
            code, details = _stream_infer(stub, req) if how == "stream" else _infer(stub, req)
        elapsed = time.monotonic() - started
    finally:
        if region is not None:
            stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name=region), timeout=10)
            shm.destroy_shared_memory_region(handle)
    assert code == INVALID, details
    assert elapsed < ANSWER_BOUND_S, f"answered in {elapsed:.1f} s"
    assert growth[0] < RSS_BOUND, f"resident set grew by {growth[0] >> 20} MiB"
    _assert_still_serving(stub)


# -- finding 9: hostile shapes, overrides, names and versions are INVALID_ARGUMENT or NOT_FOUND ---------
SHAPES = {
    "typed [0, 2^63-1]": ("INT32", [0, (1 << 63) - 1], None),
    "raw [0, 2^63-1]": ("INT32", [0, (1 << 63) - 1], b""),
    "BYTES [2^40]": ("BYTES", [1 << 40], b""),
    "BYTES [2^40] with one element": ("BYTES", [1 << 40], b"\x00\x00\x00\x00"),
    "65 dimensions": ("INT32", [1] * 65, b"\x00" * 4),
    "[0, 2^62, 2^62]": ("INT32", [0, 1 << 62, 1 << 62], None),
    "[2^32, 2^32] raw": ("INT32", [1 << 32, 1 << 32], b""),
    "negative": ("INT32", [-1, 4], b""),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", sorted(SHAPES))
def test_hostile_shapes_are_invalid_argument(stub: Any, case: str) -> None:
    """Finding 9: shapes whose element count overflows int64 or NumPy, or that a few bytes cannot hold,
    answer INVALID_ARGUMENT naming the input (INTERNAL before)."""
    datatype, shape, raw = SHAPES[case]
    model = "identity_bytes" if datatype == "BYTES" else "identity_int32"
    started = time.monotonic()
    code, details = _infer(stub, _request(model, datatype, shape, raw))
    assert code == INVALID, (case, code, details)
    assert "INPUT0" in details
    assert time.monotonic() - started < ANSWER_BOUND_S
    _assert_still_serving(stub)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("config", ["[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000,
                                    '{"parameters": ' * 40 + "{}" + "}" * 40],
                         ids=["arrays 100,000 deep", "objects 100,000 deep", "objects 40 deep"])
def test_a_deeply_nested_override_is_invalid_argument(stub: Any, config: str) -> None:
    """Finding 9: a load override nested 100,000 deep (a RecursionError, INTERNAL, before)."""
    code, details = _load(stub, "simple", config)
    assert code == INVALID, details
    assert "parameters.config" in details
    _assert_still_serving(stub)


OUT_OF_RANGE = {
    "max_batch_size 10^12": ({"max_batch_size": 10**12}, "max_batch_size"),
    "max_batch_size as a float": ({"max_batch_size": 1e300}, "max_batch_size"),
    "max_batch_size infinite": ('{"max_batch_size": Infinity}', "max_batch_size"),
    "max_batch_size of 5000 digits": ('{"max_batch_size": ' + "9" * 5000 + "}", "parameters.config"),
    "max_batch_size ' 8 '": ({"max_batch_size": " 8 "}, "max_batch_size"),
    "queue delay 10^30": ({"dynamic_batching": {"max_queue_delay_microseconds": str(10**30)}}, "max_queue_delay"),
    "priority levels 10^12": ({"dynamic_batching": {"priority_levels": 10**12, "default_priority_level": 1}},
                              "priority_levels"),
    "preferred size 10^12": ({"dynamic_batching": {"preferred_batch_size": [10**12]}}, "preferred_batch_size"),
    "queue policy size 10^12": ({"dynamic_batching": {"default_queue_policy": {"max_queue_size": 10**12}}},
                                "max_queue_size"),
    "queue timeout 10^30": ({"dynamic_batching": {"default_queue_policy": {
        "default_timeout_microseconds": str(10**30)}}}, "default_timeout"),
    "priority policy level 10^30": ({"dynamic_batching": {"priority_levels": 2, "default_priority_level": 1,
                                                          "priority_queue_policy": {str(10**30): {}}}},
                                    "priority_queue_policy"),
    "gpu 10^12": ({"instance_group": [{"kind": "KIND_CPU", "gpus": [10**12]}]}, "gpus"),
    "latest 10^12 versions": ({"version_policy": {"latest": {"num_versions": 10**12}}}, "version_policy"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", sorted(OUT_OF_RANGE))
def test_out_of_range_override_numbers_are_invalid_argument(stub: Any, case: str) -> None:
    """Finding 9: a max_batch_size override of 10^12 loaded (and ModelConfig then failed INTERNAL); every
    number past its documented bound is INVALID_ARGUMENT naming the key, and the model keeps serving with
    its configuration."""
    override, key = OUT_OF_RANGE[case]
    code, details = _load(stub, "simple", override if isinstance(override, str) else json.dumps(override))
    assert code == INVALID, (case, code, details)
    assert key in details, details
    config = stub.ModelConfig(pb.ModelConfigRequest(name="simple"), timeout=10).config
    assert config.max_batch_size == 8
    _assert_still_serving(stub)


@pytest.mark.timeout(60)
def test_loading_the_empty_name_does_not_load_the_repository_root(stub: Any) -> None:
    """Finding 9: RepositoryModelLoad("") loaded the repository root (which holds a version directory
    here) as a model named ''."""
    code, details = _load(stub, "")
    assert code in REFUSED, (code, details)
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
    assert "" not in {m.name for m in index.models}
    assert not stub.ModelReady(pb.ModelReadyRequest(name=""), timeout=10).ready


@pytest.mark.timeout(60)
@pytest.mark.parametrize("version", ["0_1", "\u0661", " 1 ", "1 ", "+1", "1\x00", "\u0663", "¹", "9" * 5000])
def test_versions_are_ascii_decimal_digits(stub: Any, version: str) -> None:
    """Finding 9: "0_1", "\\u0661" (Arabic-Indic one) and " 1 " were read as version 1 (int() accepts them)."""
    code, details = _status(lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="simple", version=version),
                                                       timeout=10))
    assert code in REFUSED, (version, code, details)
    assert not stub.ModelReady(pb.ModelReadyRequest(name="simple", version=version), timeout=10).ready
    req = pb.ModelInferRequest(model_name="simple", model_version=version)
    for name in ("INPUT0", "INPUT1"):
        req.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        req.raw_input_contents.append(bytes(64))
    assert _infer(stub, req)[0] in REFUSED
    assert stub.ModelMetadata(pb.ModelMetadataRequest(name="simple", version="1"), timeout=10).name == "simple"


BAD_NAMES = ["a/b", "../outside", "/etc", "a\\b", "..", ".", "a\x00b", "x" * 256, "é" * 128, "a\nb"]


@pytest.mark.timeout(60)
def test_model_names_that_are_not_one_directory_never_reach_the_file_system(
        stub: Any, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 9: names with '/', '\\', '..', NUL or over 255 bytes are NOT_FOUND or INVALID_ARGUMENT for
    every call that takes a model name, and no path built from them is looked at (a name over 255 bytes
    was INTERNAL: the file system refused it)."""
    (repo.parent / "outside" / "1").mkdir(parents=True, exist_ok=True)  # what "../outside" would reach
    touched: list[str] = []
    real = {name: getattr(os, name) for name in ("stat", "lstat", "listdir", "scandir", "open")}

    def recording(name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if args and isinstance(args[0], str | bytes | os.PathLike):
                touched.append(os.fsdecode(args[0]))
            return real[name](*args, **kwargs)
        return call

    for name in real:
        monkeypatch.setattr(os, name, recording(name))
    codes = {}
    for name in BAD_NAMES:
        codes[name, "load"] = _load(stub, name)[0]
        codes[name, "unload"] = _status(lambda n=name: stub.RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name=n), timeout=10))[0]
        codes[name, "metadata"] = _status(lambda n=name: stub.ModelMetadata(pb.ModelMetadataRequest(name=n),
                                                                            timeout=10))[0]
        codes[name, "infer"] = _infer(stub, _request(name, "INT32", [1, 1], bytes(4)))[0]
        assert not stub.ModelReady(pb.ModelReadyRequest(name=name), timeout=10).ready
    monkeypatch.undo()
    assert all(code in REFUSED for code in codes.values()), {k: v for k, v in codes.items() if v not in REFUSED}
    root = os.fsdecode(repo)
    reached = [p for p in touched if p.startswith(root) and p != root
               and not any(p == f"{root}/{m}" or p.startswith(f"{root}/{m}/") for m in os.listdir(repo))]
    assert not reached, reached[:5]
    _assert_still_serving(stub)


@pytest.mark.timeout(60)
def test_internal_errors_are_logged_once(stub: Any) -> None:
    """Finding 9: every INTERNAL traceback was logged twice. Requests that were INTERNAL before are answered
    without any traceback now; none is ever logged more than once."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.ERROR)
    logger = logging.getLogger("peregrine")
    logger.addHandler(handler)
    try:
        for datatype, shape, raw in (SHAPES["BYTES [2^40]"], SHAPES["65 dimensions"], SHAPES["raw [0, 2^63-1]"]):
            before = len(records)
            model = "identity_bytes" if datatype == "BYTES" else "identity_int32"
            _infer(stub, _request(model, datatype, shape, raw))
            tracebacks = [r for r in records[before:] if r.exc_info]
            assert len(tracebacks) <= 1, [r.getMessage() for r in tracebacks]
    finally:
        logger.removeHandler(handler)


@pytest.mark.timeout(60)
def test_a_failed_batch_logs_its_traceback_once() -> None:
    """Finding 9, the batcher's side: a batch failing with an unexpected exception logs its traceback once,
    and the transport, mapping each request's error to INTERNAL, does not log it again (the batcher
    logged it and then the status mapping once per request before)."""
    from peregrine.server.scheduling.batcher import DynamicBatcher, QueueConfig
    from peregrine.server.scheduling.policy import BatchPolicy, PolicyConfig
    try:
        from peregrine.server.transport.grpc.status import status_of
    except ImportError:  # the old layout
        from peregrine.server.transport.status import status_of  # type: ignore[no-redef]

    class Failing:
        def execute(self, instance: int, requests: Any) -> list[Any]:
            raise ZeroDivisionError("a bug in the executor")

    async def run(instance: int, fn: Callable[[], Any]) -> Any:
        return fn()

    async def body() -> list[BaseException]:
        batcher = DynamicBatcher(BatchPolicy(PolicyConfig(max_batch_size=4, max_queue_delay=0.05)), Failing(), 1,
                                 QueueConfig(), shape_key=lambda r: (), size=lambda r: 1, run_in_thread=run)
        batcher.start()
        requests = [types.SimpleNamespace(model_name="m", id=str(i), priority=0, parameters={}, deadline=None,
                                          ordering_key="", queue_ns=0,
                                              background=False) for i in range(3)]
        errors = await asyncio.gather(*(batcher.submit(r) for r in requests), return_exceptions=True)
        await batcher.close()
        return list(errors)

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.ERROR)
    logger = logging.getLogger("peregrine")
    logger.addHandler(handler)
    try:
        errors = asyncio.run(asyncio.wait_for(body(), 30))
        codes = [status_of(e)[0] for e in errors]
    finally:
        logger.removeHandler(handler)
    assert codes == [grpc.StatusCode.INTERNAL] * 3
    tracebacks = [r for r in records if r.exc_info]
    assert len(tracebacks) == 1, [r.getMessage() for r in records]


@pytest.mark.timeout(60)
def test_client_strings_echoed_in_errors_are_capped(stub: Any) -> None:
    """Finding 9 (and 6): a client string echoed in an error is cut to 256 characters plus its length, so
    a 64 KiB name gives a short message (it came back whole before, past gRPC's metadata limits)."""
    long = "n" * 65_536
    calls = {
        "model name": lambda: _infer(stub, _request(long, "INT32", [1, 1], bytes(4))),
        "unload": lambda: _status(lambda: stub.RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name=long), timeout=10)),
        "tensor name": lambda: _infer(stub, _tensor_named(long)),
        "datatype": lambda: _infer(stub, _request("identity_int32", long, [1, 1], bytes(4))),
        "version": lambda: _status(lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="simple", version=long),
                                                              timeout=10)),
        "override key": lambda: _load(stub, "simple", json.dumps({long: 1})),
        "override parameter": lambda: _load(stub, "simple", json.dumps({"parameters": {long: 1}})),
        "override value": lambda: _load(stub, "simple", json.dumps({"max_batch_size": long})),
        "priority": lambda: _infer(stub, _with_priority(long)),
        "unexpected input": lambda: _infer(stub, _with_extra_input(long)),
        "requested output": lambda: _infer(stub, _with_output(long)),
        "load parameter": lambda: _status(lambda: stub.RepositoryModelLoad(
            pb.RepositoryModelLoadRequest(model_name="simple", parameters={long: pb.ModelRepositoryParameter(
                string_param="x")}), timeout=10)),
        "log setting": lambda: _status(lambda: stub.LogSettings(pb.LogSettingsRequest(
            settings={long: pb.LogSettingsRequest.SettingValue(bool_param=True)}), timeout=10)),
        "log setting value": lambda: _status(lambda: stub.LogSettings(pb.LogSettingsRequest(
            settings={"log_info": pb.LogSettingsRequest.SettingValue(string_param=long)}), timeout=10)),
        "trace setting": lambda: _status(lambda: stub.TraceSetting(pb.TraceSettingRequest(
            settings={long: pb.TraceSettingRequest.SettingValue(value=["1"])}), timeout=10)),
        "trace setting value": lambda: _status(lambda: stub.TraceSetting(pb.TraceSettingRequest(
            settings={"trace_rate": pb.TraceSettingRequest.SettingValue(value=[long])}), timeout=10)),
    }
    for what, call in calls.items():
        code, details = call()
        assert code in REFUSED, (what, code, details[:300])
        assert len(details) < 1024, (what, len(details))
        assert "65536" in details or "65538" in details, (what, details)  # the original length is said
    _assert_still_serving(stub)


def _tensor_named(name: str) -> pb.ModelInferRequest:
    req = _request("identity_int32", "INT32", [1, 1], bytes(4))
    req.inputs[0].name = name
    req.inputs.add(name=name, datatype="INT32", shape=[1, 1])  # a duplicate: refused while decoding
    req.raw_input_contents.append(bytes(4))
    return req


def _with_extra_input(name: str) -> pb.ModelInferRequest:
    req = _request("identity_int32", "INT32", [1, 1], bytes(4))
    req.inputs.add(name=name, datatype="INT32", shape=[1, 1])
    req.raw_input_contents.append(bytes(4))
    return req


def _with_output(name: str) -> pb.ModelInferRequest:
    req = _request("identity_int32", "INT32", [1, 1], bytes(4))
    req.outputs.add(name=name)
    return req


def _with_priority(text: str) -> pb.ModelInferRequest:
    req = _request("identity_int32", "INT32", [1, 1], bytes(4))
    req.parameters["priority"].string_param = text
    return req
