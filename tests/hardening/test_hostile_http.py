"""Hostile clients against the HTTP port's connections and bodies (the second hostile-client audit): half-sent
request heads, huge headers, more connections than descriptors, compressed-body bombs, bodies sent in part
and never finished, header values that are digits only to Unicode. A real server on real sockets; each test
bounded in time."""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from peregrine.proto import grpc_service_pb2 as pb
from peregrine.proto import grpc_service_pb2_grpc as pb_grpc
from peregrine.server.app import PeregrineServer
from support import onnx_models

pytestmark = pytest.mark.timeout(120)

MIB = 1 << 20
INFER = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


@pytest.fixture
def server(tmp_path: Path, start_server: Callable[..., PeregrineServer]) -> Iterator[PeregrineServer]:
    onnx_models.write(tmp_path, "id", onnx_models.identity("FP32", ["N", 4]))
    # small bounds, so that the bombs and the budget are reached in a few MiB
    yield start_server(tmp_path, http_port=0, max_message_bytes=8 * MIB, max_inflight_bytes=6 * MIB,
                       max_inflight_bytes_per_connection=6 * MIB)


def _post(server: PeregrineServer, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}{path}", data=body,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _serves(server: PeregrineServer) -> bool:
    status, body = _post(server, "/v2/models/id/infer", json.dumps(INFER).encode())
    grpc_live = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}")).ServerLive(
        pb.ServerLiveRequest(), timeout=10).live
    return status == 200 and json.loads(body)["outputs"][0]["data"] == [1, 2, 3, 4] and grpc_live


def _connect(server: PeregrineServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.http_port), timeout=10)


def _response(sock: socket.socket) -> bytes:
    """One response: its head, then as many body bytes as its content-length says."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length and (chunk := sock.recv(65536)):
        body += chunk
    return head + b"\r\n\r\n" + body


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_request_head_never_finished_is_answered_408_and_closed(server: PeregrineServer) -> None:
    server.http.protocol.head_timeout_s = 0.5
    stalled = [_connect(server) for _ in range(3)]
    for s in stalled:
        s.sendall(b"POST /v2/models/id/infer HTTP/1.1\r\nHost: x\r\nContent-Le")  # and nothing more
    time.sleep(1.0)
    for s in stalled:
        answer = _read_all(s)  # the server closed it
        assert answer.startswith(b"HTTP/1.1 408 ") and b"not complete within 0.5 s" in answer
        s.close()
    assert _serves(server)


def test_a_kept_alive_connection_answers_then_its_next_head_is_timed_too(server: PeregrineServer) -> None:
    server.http.protocol.head_timeout_s = 0.5
    s = _connect(server)
    body = json.dumps(INFER).encode()
    s.sendall(b"POST /v2/models/id/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    time.sleep(1.0)  # longer than the head timeout: the first request's head was complete, it is answered
    s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHo")
    answers = _read_all(s)
    s.close()
    assert answers.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 408 " in answers


def test_a_head_over_its_bound_is_431(server: PeregrineServer) -> None:
    s = _connect(server)
    s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 * MIB))
    answer = _read_all(s)
    s.close()
    assert answer.startswith(b"HTTP/1.1 431 ") and b"65536 bytes" in answer
    assert _serves(server)


def test_connections_over_the_bound_are_closed_at_once_and_the_others_served(server: PeregrineServer) -> None:
    server.http.protocol.max_connections = 8
    held = [_connect(server) for _ in range(8)]
    for s in held:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")  # answered, kept alive
    for s in held:
        assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
    extra = _connect(server)
    with contextlib.suppress(ConnectionError):  # reset or closed: at once either way
        extra.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert extra.recv(65536) == b""
    extra.close()
    assert server.http.protocol.refused >= 1
    for s in held:
        s.close()
    time.sleep(0.2)
    assert _serves(server)  # room again
    # gRPC kept its descriptors all along
    assert pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}")).ServerReady(
        pb.ServerReadyRequest(), timeout=10).ready


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_bomb_stops_at_the_message_bound(server: PeregrineServer, encoding: str) -> None:
    """A 64 KiB body that would inflate to 64 MiB (whitespace, then a valid request): refused 413 when the
    inflated bytes pass the 8 MiB bound, inflated a piece at a time off the event loop."""
    plain = b" " * (64 * MIB) + json.dumps(INFER).encode()
    data = gzip.compress(plain, 9) if encoding == "gzip" else zlib.compress(plain, 9)
    assert len(data) < MIB
    status, body = _post(server, "/v2/models/id/infer", data, {"Content-Encoding": encoding})
    assert status == 413 and b"inflates past the 8388608 bytes" in body
    ok = gzip.compress(json.dumps(INFER).encode()) if encoding == "gzip" else zlib.compress(json.dumps(INFER).encode())
    assert _post(server, "/v2/models/id/infer", ok, {"Content-Encoding": encoding})[0] == 200
    status, body = _post(server, "/v2/models/id/infer", ok + b"junk", {"Content-Encoding": encoding})
    assert status == 400 and b"4 bytes after the end" in body
    assert _serves(server)


def test_bodies_being_read_count_against_the_bytes_in_flight(server: PeregrineServer) -> None:
    """Two clients each send 4 MiB of a 7 MiB body and stop: the second passes the 6 MiB budget while it
    reads, and is refused 429 there, instead of the server holding whatever unfinished bodies come."""
    first, second = _connect(server), _connect(server)
    head = (b"POST /v2/models/id/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (7 * MIB))
    try:
        first.sendall(head + b" " * (4 * MIB))
        time.sleep(0.3)
        second.sendall(head)
        with contextlib.suppress(ConnectionError):  # the server may answer before all of it is sent
            second.sendall(b" " * (4 * MIB))
        answer = _response(second)
        assert answer.startswith(b"HTTP/1.1 429 ") and b"--max-inflight-mb" in answer
    finally:
        second.close()
        first.close()
    time.sleep(0.3)
    assert _serves(server)  # the first's bytes were let go with it


def test_header_numbers_are_ascii_digits(server: PeregrineServer) -> None:
    """"²".isdigit() is true in Python and int("²") fails: a header of such digits is 400 naming it, not 500."""
    body = json.dumps(INFER).encode()
    s = _connect(server)
    s.sendall(b"POST /v2/models/id/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Inference-Header-Content-Length: \xc2\xb2\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    answer = _response(s)
    s.close()
    assert answer.startswith(b"HTTP/1.1 400 ") and b"Inference-Header-Content-Length" in answer
