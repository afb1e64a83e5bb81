"""The job service over REST (``/v1/jobs``) on a real server on loopback: the same jobs, results and errors as
over gRPC; uploads streamed and resumable with ``Content-Range``, results downloadable by ``Range``, a watch
streamed as NDJSON (issue 17)."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from peregrine.client.jobs import JobClient
from peregrine.proto import jobs_pb2 as pb
from peregrine.proto import jobs_pb2_grpc as pb_grpc
from peregrine.server.app import PeregrineServer
from peregrine.server.codecs.oip_json import message_json
from support import jobs, onnx_models

pytestmark = pytest.mark.timeout(240)

Answer = tuple[int, dict[str, str], bytes]


@pytest.fixture
def served(tmp_path: Path, start_server: Callable[..., PeregrineServer]) -> Callable[..., PeregrineServer]:
    repo = jobs.repository(tmp_path / "models")

    def serve(**options: object) -> PeregrineServer:
        settings: dict[str, object] = {"job_spool": tmp_path / "spool", "http_port": 0, **options}
        return start_server(repo, **settings)

    return serve


def _call(server: PeregrineServer, method: str, path: str, body: Any = None,
          headers: dict[str, str] | None = None) -> Answer:
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=120)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        r = connection.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        connection.close()


def _json(answer: Answer) -> Any:
    return json.loads(answer[2])


def _submit(server: PeregrineServer, payload: bytes, model: str = "cam", **query: str) -> Answer:
    params = "&".join(f"{k}={v}" for k, v in {"model_name": model, "sha256": hashlib.sha256(payload).hexdigest(),
                                               **query}.items())
    return _call(server, "POST", f"/v1/jobs?{params}", payload)


def _spec(server: PeregrineServer, spec: dict[str, Any]) -> Answer:
    return _call(server, "POST", "/v1/jobs", json.dumps(spec), {"Content-Type": "application/json"})


def _wait(server: PeregrineServer, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job = _json(_call(server, "GET", f"/v1/jobs/{job_id}"))
        if job["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            return job  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def _error(answer: Answer, status: int, field: str) -> str:
    """The answer is ``status`` with an error message that starts by naming ``field``."""
    assert answer[0] == status, (answer[0], answer[2][:300])
    message = _json(answer)["error"]
    assert message.startswith(field), (field, message)
    return message  # type: ignore[no-any-return]


def _put(server: PeregrineServer, job_id: str, payload: bytes, start: int, end: int | None = None) -> Answer:
    end = len(payload) - 1 if end is None else end
    return _call(server, "PUT", f"/v1/jobs/{job_id}/payload", payload[start:end + 1],
                 {"Content-Range": f"bytes {start}-{end}/{len(payload)}"})


def _cut(server: PeregrineServer, method: str, path: str, length: int, part: bytes,
         headers: dict[str, str] | None = None) -> None:
    """Send a request that declares ``length`` bytes of body, then only ``part`` of them, and hang up."""
    with socket.create_connection(("127.0.0.1", server.http_port or 0)) as s:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {length}",
                 *(f"{k}: {v}" for k, v in (headers or {}).items())]
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + part)
        time.sleep(0.5)  # the server takes what came before it sees the connection go


def _resume(server: PeregrineServer, job_id: str, payload: bytes) -> dict[str, Any]:
    """Resume an upload as a client does: from the bytes the server has (again while the cut stream is still
    being wound up there, which answers 409)."""
    deadline = time.monotonic() + 60
    while True:
        job = _json(_call(server, "GET", f"/v1/jobs/{job_id}"))
        assert job["state"] == "UPLOADING" and job["received_bytes"] <= len(payload), job
        answer = _put(server, job_id, payload, job["received_bytes"])
        if answer[0] != 409:
            assert answer[0] == 200, answer
            return _json(answer)  # type: ignore[no-any-return]
        assert "another stream" in _json(answer)["error"] and time.monotonic() < deadline
        time.sleep(0.05)


def _result(server: PeregrineServer, job_id: str, headers: dict[str, str] | None = None) -> Answer:
    return _call(server, "GET", f"/v1/jobs/{job_id}/result", headers=headers)


def _tensor_payload(rows: int = 2) -> bytes:
    x = io.BytesIO()
    np.save(x, np.arange(rows * 4, dtype=np.float32).reshape(rows, 4))
    return x.getvalue()


def test_photographs_by_rest_give_the_result_and_job_grpc_gives(served: Callable[..., PeregrineServer]) -> None:
    server = served()
    files = {f"{name}.jpg": jobs.photo(name) for name in jobs.PHOTOS} | {"notes/readme.txt": b"not an image",
                                                                        "broken.png": b"\x89PNG broken"}
    payload = jobs.tar_of(files)
    answer = _submit(server, payload, client_tag="by-rest")
    assert answer[0] == 201, answer
    job = _json(answer)
    assert answer[1]["location"] == f"/v1/jobs/{job['job_id']}" and job["state"] in ("QUEUED", "RUNNING")
    assert (job["total_bytes"], job["received_bytes"], job["client_tag"]) == (len(payload), len(payload), "by-rest")
    done = _wait(server, job["job_id"])
    assert done["state"] == "SUCCEEDED" and done["kind"] == "archive" and done["result_format"] == "jsonl"
    assert (done["items_total"], done["items_failed"]) == (len(jobs.PHOTOS) + 1, 1)
    status, headers, by_rest = _result(server, job["job_id"])
    assert status == 200 and headers["content-type"] == "application/x-ndjson"
    assert int(headers["content-length"]) == len(by_rest) == done["result_bytes"]
    lines = [json.loads(x) for x in by_rest.splitlines()]
    assert [line["source"] for line in lines] == sorted(n for n in files if not n.endswith(".txt"))
    # The same payload by gRPC: the same result, byte for byte; the same job, field for field.
    stub = pb_grpc.JobServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
    with JobClient(f"127.0.0.1:{server.port}") as client:
        other = client.wait(client.submit(payload, "cam").job_id)
        assert b"".join(c.data for c in client.result(other.job_id)) == by_rest
        grpc_summary = json.loads(list(client.result(other.job_id, other.result_bytes))[-1].summary_json)
    assert message_json(stub.GetJob(pb.JobRef(job_id=job["job_id"]))) == _json(
        _call(server, "GET", f"/v1/jobs/{job['job_id']}"))
    summary = _json(_call(server, "GET", f"/v1/jobs/{job['job_id']}/summary"))
    timing = ("seconds", "items_per_s")
    assert {k: v for k, v in summary.items() if k not in timing} == \
        {k: v for k, v in grpc_summary.items() if k not in timing}
    assert summary["items"] == len(jobs.PHOTOS) + 1 and summary["failed"] == 1


def test_the_watch_streams_progress_until_the_job_succeeds(served: Callable[..., PeregrineServer]) -> None:
    server = served(job_items_in_flight=1)
    # Items done move at checkpoints (every 0.5 s): enough photographs for several even on a fast machine.
    copies = 50
    items = copies * len(jobs.PHOTOS)
    answer = _submit(server, jobs.photo_archive(copies=copies))
    job_id = _json(answer)["job_id"]
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=120)
    try:
        connection.request("GET", f"/v1/jobs/{job_id}/watch")
        r = connection.getresponse()
        assert r.status == 200 and r.getheader("content-type") == "application/x-ndjson"
        seen = [json.loads(line) for line in r]  # the stream ends when the job does
    finally:
        connection.close()
    assert seen[-1]["state"] == "SUCCEEDED" and seen[-1]["items_done"] == seen[-1]["items_total"] == items
    assert all(s["job_id"] == job_id for s in seen)
    done = [s["items_done"] for s in seen]
    assert done == sorted(done) and any(0 < d < items for d in done), done  # progress on the way
    # An ended job's watch is one line; an unknown one is 404 before any line.
    status, _, body = _call(server, "GET", f"/v1/jobs/{job_id}/watch")
    assert status == 200 and [json.loads(x)["state"] for x in body.splitlines()] == ["SUCCEEDED"]
    _error(_call(server, "GET", f"/v1/jobs/{'e' * 32}/watch"), 404, "job_id")


def test_uploads_resume_with_content_range(served: Callable[..., PeregrineServer]) -> None:
    server = served()
    payload = jobs.photo_archive()
    digest = hashlib.sha256(payload).hexdigest()
    total, half = len(payload), len(payload) // 2
    reference = _json(_submit(server, payload))["job_id"]
    # An upload in parts: the spec as JSON, then the bytes in two PUTs (the second overlapping the first).
    answer = _spec(server, {"model_name": "cam", "total_bytes": total, "sha256": digest})
    assert answer[0] == 201, answer
    job = _json(answer)
    assert (job["state"], job["received_bytes"]) == ("UPLOADING", 0)
    job_id = job["job_id"]
    job = _json(_put(server, job_id, payload, 0, half - 1))
    assert (job["state"], job["received_bytes"]) == ("UPLOADING", half)
    _error(_put(server, job_id, payload, half + 1), 400, "Content-Range")  # past what arrived: refused
    job = _json(_put(server, job_id, payload, half - 1000))
    assert job["state"] in ("QUEUED", "RUNNING", "SUCCEEDED") and job["received_bytes"] == total
    _error(_put(server, job_id, payload, 0), 409, f"job {job_id}")  # its upload is over
    # A PUT cut in the middle: resumed from what the server has.
    parted = job_id
    job_id = _json(_spec(server, {"model_name": "cam", "total_bytes": total, "sha256": digest}))["job_id"]
    _cut(server, "PUT", f"/v1/jobs/{job_id}/payload", total, payload[:half],
         {"Content-Range": f"bytes 0-{total - 1}/{total}"})
    assert _resume(server, job_id, payload)["received_bytes"] == total
    # A one-shot POST cut in the middle: found among the uploads, resumed the same way.
    _cut(server, "POST", f"/v1/jobs?model_name=cam&sha256={digest}&client_tag=cut", total, payload[:half])
    deadline = time.monotonic() + 30
    while not (found := [j for j in _json(_call(server, "GET", "/v1/jobs?state=UPLOADING"))["jobs"]
                         if j["client_tag"] == "cut"]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cut = found[0]["job_id"]
    assert _resume(server, cut, payload)["received_bytes"] == total
    _wait(server, reference)
    expected = _result(server, reference)[2]
    for resumed in (parted, job_id, cut):
        assert _wait(server, resumed)["state"] == "SUCCEEDED"
        assert _result(server, resumed)[2] == expected
    # The bytes of a PUT are checked against the job before anything is written.
    job_id = _json(_spec(server, {"model_name": "cam", "total_bytes": total, "sha256": digest}))["job_id"]
    path = f"/v1/jobs/{job_id}/payload"
    for header in ("bytes 0-9/5", "bytes 5-2/100", "bytes=0-9", "bytes 0-9/*", "0-9/100", f"bytes 0-8/{total}"):
        _error(_call(server, "PUT", path, b"x" * 10, {"Content-Range": header}), 400, "Content-Range")
    _error(_call(server, "PUT", path, b"x" * 10, {"Content-Range": "bytes 0-9/100"}), 400, "Content-Range")
    _error(_call(server, "PUT", path, payload + b"x"), 400, "Content-Length")  # longer than the payload
    _error(_call(server, "PUT", path, b""), 400, "Content-Length")
    assert _json(_call(server, "GET", f"/v1/jobs/{job_id}"))["received_bytes"] == 0
    # A wrong SHA-256 shows once the last byte is in: the job is removed, nothing ran.
    _error(_put(server, job_id, payload[::-1], 0), 400, "spec.sha256")
    _error(_call(server, "GET", f"/v1/jobs/{job_id}"), 404, "job_id")


def test_results_download_by_range(served: Callable[..., PeregrineServer]) -> None:
    server = served()
    job_id = _json(_submit(server, jobs.photo_archive()))["job_id"]
    _wait(server, job_id)
    status, headers, whole = _result(server, job_id)
    size = len(whole)
    assert status == 200 and headers["accept-ranges"] == "bytes" and size > 1000
    etag = headers["etag"]
    for offset in (0, 1, size // 2, size - 1):  # a download cut at `offset` resumes there
        status, headers, tail = _result(server, job_id, {"Range": f"bytes={offset}-"})
        assert status == 206 and tail == whole[offset:]
        assert headers["content-range"] == f"bytes {offset}-{size - 1}/{size}"
        assert int(headers["content-length"]) == size - offset
    status, headers, part = _result(server, job_id, {"Range": "bytes=10-19"})
    assert (status, part, headers["content-range"]) == (206, whole[10:20], f"bytes 10-19/{size}")
    assert _result(server, job_id, {"Range": "bytes=-100"})[2] == whole[-100:]
    assert _result(server, job_id, {"Range": f"bytes=5-{size * 2}"})[2] == whole[5:]
    assert _result(server, job_id, {"Range": "bytes=7-", "If-Range": etag})[:3:2] == (206, whole[7:])
    assert _result(server, job_id, {"Range": "bytes=7-", "If-Range": '"other"'})[:3:2] == (200, whole)
    assert _result(server, job_id, {"Range": "lines=1-2"})[:3:2] == (200, whole)  # another unit: ignored
    status, headers, body = _call(server, "HEAD", f"/v1/jobs/{job_id}/result", headers={"Range": "bytes=100-"})
    assert (status, body, headers["content-length"]) == (206, b"", str(size - 100))
    for bad in (f"bytes={size}-", "bytes=-0", "bytes=0-1,5-6", "bytes=x-", "bytes=-", "bytes=9-3"):
        status, headers, _ = answer = _result(server, job_id, {"Range": bad})
        _error(answer, 416, "Range")
        assert headers["content-range"] == f"bytes */{size}"
    # Only a job that SUCCEEDED has a result (FAILED_PRECONDITION: 409), and a summary.
    x = io.BytesIO()
    np.save(x, np.ones((2, 4), np.float32))
    failed = _json(_submit(server, x.getvalue(), "two"))["job_id"]  # an unnamed .npy for a model of two inputs
    assert _wait(server, failed)["state"] == "FAILED"
    assert "parameters.input" in _error(_result(server, failed), 409, f"job {failed}")
    _error(_call(server, "GET", f"/v1/jobs/{failed}/summary"), 409, f"job {failed}")
    summary = _json(_call(server, "GET", f"/v1/jobs/{job_id}/summary"))
    assert summary["items"] == len(jobs.PHOTOS) and summary["detections"] == sum(
        len(json.loads(x)["boxes"]) for x in whole.splitlines())


def test_list_pages_newest_first_with_filters(served: Callable[..., PeregrineServer]) -> None:
    server = served()
    ids = [_json(_submit(server, _tensor_payload(), "id", client_tag=str(i)))["job_id"] for i in range(5)]
    for job_id in ids:
        _wait(server, job_id)
    pages, token = [], ""
    while True:
        page = _json(_call(server, "GET", f"/v1/jobs?page_size=2{'&page_token=' + token if token else ''}"))
        pages.append([j["job_id"] for j in page["jobs"]])
        token = page["next_page_token"]
        if not token:
            break
    assert pages == [ids[4:2:-1], ids[2:0:-1], ids[:1]]
    listed = _json(_call(server, "GET", "/v1/jobs?model_name=id&state=SUCCEEDED"))
    assert [j["job_id"] for j in listed["jobs"]] == ids[::-1] and listed["next_page_token"] == ""
    assert [j["client_tag"] for j in listed["jobs"]] == ["4", "3", "2", "1", "0"]
    assert _json(_call(server, "GET", "/v1/jobs?model_name=cam"))["jobs"] == []
    assert _json(_call(server, "GET", "/v1/jobs?state=RUNNING"))["jobs"] == []
    _error(_call(server, "GET", "/v1/jobs?page_size=5000"), 400, "page_size")
    _error(_call(server, "GET", "/v1/jobs?page_size=ten"), 400, "page_size")
    _error(_call(server, "GET", "/v1/jobs?page_token=garbage"), 400, "page_token")
    _error(_call(server, "GET", "/v1/jobs?state=DONE"), 400, "state")
    _error(_call(server, "GET", "/v1/jobs?model=id"), 400, "query parameter 'model'")
    _error(_call(server, "GET", "/v1/jobs?state=QUEUED&state=RUNNING"), 400, "query parameter 'state'")


def test_cancel_and_delete(served: Callable[..., PeregrineServer]) -> None:
    server = served(job_workers=1, job_items_in_flight=1)
    big = jobs.photo_archive(copies=20)  # 120 images, a job of several seconds
    running = _json(_submit(server, big))["job_id"]
    queued = _json(_submit(server, big))["job_id"]
    deadline = time.monotonic() + 60
    while _json(_call(server, "GET", f"/v1/jobs/{running}"))["items_done"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert _json(_call(server, "GET", f"/v1/jobs/{queued}"))["state"] == "QUEUED"
    for job_id in (queued, running):  # neither may be deleted before it ends
        assert "cancel it" in _error(_call(server, "DELETE", f"/v1/jobs/{job_id}"), 409, f"job {job_id}")
    for job_id in (queued, running):
        status, _, body = _call(server, "POST", f"/v1/jobs/{job_id}/cancel")
        job = json.loads(body)
        assert status == 200 and job["state"] == "CANCELLED" and job["error"] == "cancelled by the client"
    time.sleep(1.0)
    after = _json(_call(server, "GET", f"/v1/jobs/{running}"))
    assert after["state"] == "CANCELLED" and after["items_done"] < after["items_total"]  # it stopped
    for job_id in (queued, running):
        assert "already ended" in _error(_call(server, "POST", f"/v1/jobs/{job_id}/cancel"), 409, f"job {job_id}")
        _error(_result(server, job_id), 409, f"job {job_id}")
        status, _, body = _call(server, "DELETE", f"/v1/jobs/{job_id}")
        assert (status, body) == (204, b"")
        for method, path in (("GET", ""), ("DELETE", ""), ("POST", "/cancel"), ("GET", "/result"),
                             ("GET", "/summary"), ("GET", "/watch")):
            _error(_call(server, method, f"/v1/jobs/{job_id}{path}"), 404, "job_id")
        _error(_call(server, "PUT", f"/v1/jobs/{job_id}/payload", b"x"), 404, "job_id")
    assert _json(_call(server, "GET", "/v1/jobs"))["jobs"] == []
    _error(_call(server, "GET", "/v1/jobs/ZZZ"), 400, "job_id")
    _error(_call(server, "POST", "/v1/jobs/not-an-id/cancel"), 400, "job_id")


def test_bad_submissions_name_the_field_and_queue_nothing(tmp_path: Path,
                                                          served: Callable[..., PeregrineServer]) -> None:
    payload = jobs.photo_archive()
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "photos.tar").write_bytes(payload)
    server = served(job_max_payload_bytes=2 << 20, job_quota_bytes=len(payload) + 1000, job_input_roots=(inputs,))
    digest = hashlib.sha256(payload).hexdigest()
    # The spec in the query, field by field.
    for query, status, field in [
            (f"sha256={digest}", 400, "spec.model_name"),
            (f"model_name=nope&sha256={digest}", 404, "spec.model_name"),
            ("model_name=cam", 400, "spec.sha256"),
            ("model_name=cam&sha256=xyz", 400, "spec.sha256"),
            (f"model_name=cam&sha256={digest}&kind=video3d", 400, "spec.kind"),
            (f"model_name=cam&sha256={digest}&time_limit_s=1000000", 400, "spec.time_limit_s"),
            (f"model_name=cam&sha256={digest}&time_limit_s=soon", 400, "time_limit_s"),
            (f"model_name=cam&sha256={digest}&notify_url=http://example.com/", 400, "spec.notify_url"),
            (f"model_name=cam&sha256={digest}&modle=cam", 400, "query parameter 'modle'"),
            (f"model_name=cam&sha256={digest}&model_name=id", 400, "query parameter 'model_name'"),
            (f"model_name=cam&sha256={digest}&total_bytes=5", 400, "query parameter 'total_bytes'"),
            (f"model_name=cam&sha256={digest}&" + "&".join(f"parameters.p{i}=1" for i in range(33)), 400,
             "spec.parameters")]:
        _error(_call(server, "POST", f"/v1/jobs?{query}", payload), status, field)
    # The body: its length, its coding, its checksum.
    query = f"/v1/jobs?model_name=cam&sha256={digest}"
    _error(_call(server, "POST", query, b""), 400, "Content-Length")
    _error(_call(server, "POST", query, iter([payload])), 411, "Content-Length")  # sent chunked
    _error(_call(server, "POST", query, payload, {"Content-Encoding": "gzip"}), 415, "Content-Encoding")
    _error(_call(server, "POST", query, b"x" * (3 << 20)), 413, "Content-Length")
    _error(_call(server, "POST", query, payload[:-1] + b"x"), 400, "spec.sha256")
    assert _json(_call(server, "GET", "/v1/jobs"))["jobs"] == []
    assert [p.name for p in (server.config.job_spool or Path()).iterdir() if len(p.name) == 32] == []
    # The spec as JSON.
    for body, status, field in [
            ("[1]", 400, "request body"), ("{", 400, "request body"),
            ('{"model_name": 7}', 400, "model_name"),
            ('{"model_name": "cam", "total_bytes": -1}', 400, "total_bytes"),
            ('{"model_name": "cam", "total_bytes": true}', 400, "total_bytes"),
            ('{"model_name": "cam", "parameters": {"a": 1}}', 400, "parameters"),
            ('{"model_name": "cam", "job_id": "x"}', 400, "'job_id'"),
            ('{"model_name": "cam", "sha256": "' + digest + '"}', 400, "total_bytes"),
            ('{"model_name": "cam", "total_bytes": 3000000, "sha256": "' + digest + '"}', 413, "total_bytes"),
            ('{"model_name": "cam", "input_location": "/etc/passwd"}', 400, "spec.input_location"),
            ('{"model_name": "cam", "input_location": "' + str(inputs / "nope.tar") + '"}', 404,
             "spec.input_location"),
            ('{"model_name": "cam", "input_location": "x", "total_bytes": 5}', 400, "total_bytes"),
            ('{"client_tag": "' + "x" * (1 << 20) + '"}', 413, "request body")]:
        _error(_call(server, "POST", "/v1/jobs", body, {"Content-Type": "application/json"}), status, field)
    _error(_call(server, "POST", "/v1/jobs?model_name=cam", '{"model_name": "cam"}',
                 {"Content-Type": "application/json"}), 400, "query parameters")
    assert _json(_call(server, "GET", "/v1/jobs"))["jobs"] == []
    # An input location under an allowed root is read where it is.
    answer = _spec(server, {"model_name": "cam", "input_location": f"file://{inputs / 'photos.tar'}",
                            "sha256": digest, "client_tag": "in place"})
    assert answer[0] == 201 and _json(answer)["state"] == "QUEUED" and _json(answer)["total_bytes"] == len(payload)
    located = _wait(server, _json(answer)["job_id"])
    assert located["state"] == "SUCCEEDED" and located["items_done"] == len(jobs.PHOTOS)
    assert _call(server, "DELETE", f"/v1/jobs/{located['job_id']}")[0] == 204  # its result leaves the spool
    # The spool's quota: the first payload fits, a second does not until the first is deleted.
    first = _submit(server, payload)
    assert first[0] == 201
    assert "quota" in _error(_submit(server, payload), 429, "job spool")
    assert "quota" in _error(_spec(server, {"model_name": "cam", "total_bytes": len(payload), "sha256": digest}),
                             429, "job spool")
    _wait(server, _json(first)["job_id"])
    assert _call(server, "DELETE", f"/v1/jobs/{_json(first)['job_id']}")[0] == 204
    assert _submit(server, payload)[0] == 201


def test_job_routes_need_a_jobs_token_and_a_spool(tmp_path: Path, served: Callable[..., PeregrineServer],
                                                   start_server: Callable[..., PeregrineServer]) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("jobs-token jobs\nreader-token metadata\n")
    server = served(auth_token_file=tokens)
    for headers, status in ((None, 401), ({"Authorization": "Bearer wrong"}, 401),
                            ({"Authorization": "Bearer reader-token"}, 403)):
        for method, path in (("GET", "/v1/jobs"), ("POST", "/v1/jobs?model_name=id"),
                             ("GET", f"/v1/jobs/{'a' * 32}/result")):
            assert _call(server, method, path, headers=headers)[0] == status, (method, path, headers)
    allowed = {"Authorization": "Bearer jobs-token"}
    assert _call(server, "GET", "/v1/jobs", headers=allowed)[0] == 200
    payload = _tensor_payload()
    answer = _call(server, "POST", f"/v1/jobs?model_name=id&sha256={hashlib.sha256(payload).hexdigest()}", payload,
                   allowed)
    assert answer[0] == 201
    # Without --job-spool the routes are there, and say how to turn jobs on.
    onnx_models.write(tmp_path / "plain", "id", onnx_models.identity("FP32", ["N", 4]))
    plain = start_server(tmp_path / "plain", http_port=0)
    for method, path in (("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", f"/v1/jobs/{'a' * 32}"),
                         ("PUT", f"/v1/jobs/{'a' * 32}/payload")):
        status, _, body = _call(plain, method, path, b"" if method in ("POST", "PUT") else None)
        assert status == 501 and "--job-spool" in json.loads(body)["error"], (method, path)


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_1_gib_upload_by_rest_leaves_the_servers_memory_alone(tmp_path: Path) -> None:
    if shutil.disk_usage(tmp_path).free < 6 << 30:
        pytest.skip("needs 6 GiB of free disk (payload, spool, result and the downloaded copy)")
    rows, row = 255, 1 << 20  # float32 rows of 4 MiB: 1020 MiB, under the default 1 GiB payload limit
    payload = tmp_path / "rows.npy"
    array = np.lib.format.open_memmap(payload, mode="w+", dtype=np.float32, shape=(rows, row))
    for i in range(rows):  # each row its own values, so that a row out of place shows
        array[i] = np.arange(row, dtype=np.float32) + i
    array.flush()
    del array
    digest = hashlib.sha256()
    with payload.open("rb") as f:
        while chunk := f.read(4 << 20):
            digest.update(chunk)
    http_port = jobs.free_port()
    server = jobs.ServerProcess(jobs.repository(tmp_path / "models"), tmp_path / "spool", tmp_path / "server.log",
                                "--http-port", str(http_port)).start()
    assert server.proc is not None
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss(server.proc.pid))  # type: ignore[union-attr]
            time.sleep(0.02)

    def call(method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
             into: Any = None) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=600, blocksize=1 << 20)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            answer = connection.getresponse()
            if into is None:
                return answer.status, answer.read()
            while chunk := answer.read(4 << 20):  # streamed to the file
                into.write(chunk)
            return answer.status, b""
        finally:
            connection.close()

    try:
        with JobClient(server.address) as client:
            client.wait(client.submit(jobs.photo_archive(), "cam").job_id)  # every code path warm
        before = _rss(server.proc.pid)
        sampler = threading.Thread(target=sample)
        sampler.start()
        out = tmp_path / "result.npz"
        try:
            with payload.open("rb") as f:
                status, body = call("POST", f"/v1/jobs?model_name=wide&sha256={digest.hexdigest()}", f,
                                    {"Content-Length": str(payload.stat().st_size)})
                assert status == 201, body
                job_id = json.loads(body)["job_id"]
            deadline = time.monotonic() + 600
            while (job := json.loads(call("GET", f"/v1/jobs/{job_id}")[1]))["state"] not in (
                    "SUCCEEDED", "FAILED", "CANCELLED"):
                assert time.monotonic() < deadline
                time.sleep(0.5)
            assert job["state"] == "SUCCEEDED", job["error"]
            assert job["items_done"] == rows and job["result_format"] == "npz"
            half = job["result_bytes"] // 2
            with out.open("wb") as f:  # a download in two ranges, as a resumed one
                for headers in ({"Range": f"bytes=0-{half - 1}"}, {"Range": f"bytes={half}-"}):
                    assert call("GET", f"/v1/jobs/{job_id}/result", headers=headers, into=f)[0] == 206
        finally:
            stop.set()
            sampler.join()
        grown = peak[0] - before
        assert grown < 200 << 20, f"the server's RSS grew by {grown >> 20} MiB"
        assert out.stat().st_size == job["result_bytes"]
        with np.load(out, mmap_mode="r") as result:  # type: ignore[no-untyped-call]
            outputs = result["OUTPUT0"]
            assert outputs.shape == (rows, row)
            for i in (0, 1, rows // 2, rows - 1):
                np.testing.assert_array_equal(outputs[i], np.arange(row, dtype=np.float32) + i)
    finally:
        server.stop()
