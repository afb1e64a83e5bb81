"""``/v1/jobs``: the job service (``peregrine.v1.JobService``) over REST, a thin edge over :mod:`...jobs.service`.

Routes (docs/JOBS.md, "Over REST"), all of the ``jobs`` token category:

- ``POST /v1/jobs?model_name=M&sha256=H[&...]``: the body is the payload, its size ``Content-Length``; 201.
- ``POST /v1/jobs`` with ``Content-Type: application/json``: the spec as JSON, with ``input_location`` (the
  job is queued) or ``total_bytes`` (an upload in parts: the job waits UPLOADING for its bytes); 201.
- ``PUT /v1/jobs/{id}/payload`` with ``Content-Range: bytes START-END/TOTAL``: bytes of the payload from
  ``START`` at most the job's ``received_bytes`` (what follows is replaced): a cut upload resumes so.
- ``GET /v1/jobs`` (``state``, ``model_name``, ``page_size``, ``page_token``), ``GET``/``DELETE /v1/jobs/{id}``,
  ``POST /v1/jobs/{id}/cancel``.
- ``GET /v1/jobs/{id}/watch``: NDJSON, the job now and one line per change until it ends.
- ``GET /v1/jobs/{id}/result``: the result streamed from the spool, one ``Range`` served (206);
  ``GET /v1/jobs/{id}/summary``: its summary.

A job is answered as the fields of jobs.proto's ``Job`` by the same names, written here from the record
(state by name, sizes and times as JSON numbers). Errors are ``{"error": ...}`` with the statuses of
:mod:`.status`, except where HTTP has a closer word: FAILED_PRECONDITION (a job in the wrong state) and
CANCELLED are 409, a payload over the limit 413, a missing ``Content-Length`` 411, an unsatisfiable ``Range``
416. The body of an upload is streamed into the spool in pieces of about a MiB, never held whole.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from ...core.errors import FailedPrecondition, InvalidArgument, OutOfRange, PeregrineError, clipped, json_type
from ...jobs.service import JobService, JobSpec
from ...jobs.store import SUCCEEDED, UPLOADING, JobRecord
from .status import status_of

JSON = "application/json"
NDJSON = "application/x-ndjson"
Handler = Callable[[Request], Awaitable[Response]]

SPEC_BODY_LIMIT = 1 << 20  # bytes of a JSON job spec
UPLOAD_PIECE = 1 << 20  # the body goes to the spool in pieces of about this many bytes
JOB_STATUS = {"FAILED_PRECONDITION": 409, "CANCELLED": 409, "OUT_OF_RANGE": 416}
JOBS_OFF = "jobs are off on this server; start it with --job-spool DIR (docs/JOBS.md)"

_SPEC_TEXT = ("model_name", "model_version", "kind", "sha256", "input_location", "client_tag", "notify_url")
_SPEC_COUNTS = ("total_bytes", "time_limit_s")
_QUERY_SPEC = ("model_name", "model_version", "kind", "sha256", "client_tag", "notify_url", "time_limit_s")
_PARAMETER = "parameters."  # a query parameter "parameters.topic=/cam" is the spec's parameters["topic"]
_COUNT = re.compile(r"[0-9]{1,19}")
_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19})")
_RANGE = re.compile(r"([0-9]{0,19})-([0-9]{0,19})")


class LengthRequired(InvalidArgument):
    """An upload without ``Content-Length`` (411)."""

    http_status = 411


class PayloadTooLarge(InvalidArgument):
    """A payload (or a JSON spec) over its limit (413)."""

    http_status = 413


class UnsupportedEncoding(InvalidArgument):
    """A payload sent with a ``Content-Encoding`` (415): it is taken as sent, and its SHA-256 is of those bytes."""

    http_status = 415


class RangeNotSatisfiable(OutOfRange):
    """A ``Range`` outside the result, or not one range of bytes (416, with ``Content-Range: bytes */SIZE``)."""

    http_status = 416

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.headers = {"Content-Range": f"bytes */{size}"}


def job_json(record: JobRecord) -> dict[str, Any]:
    """A job as REST answers it: jobs.proto's ``Job``, field by field (the gRPC edge's ``job_message``)."""
    return {
        "job_id": record.job_id, "state": record.state, "model_name": record.model_name,
        "model_version": record.model_version, "kind": record.kind, "total_bytes": record.total_bytes,
        "received_bytes": record.received_bytes, "items_total": record.items_total,
        "items_done": record.items_done, "items_failed": record.items_failed, "eta_s": JobService.eta_s(record),
        "error": record.error, "created_unix_ms": record.created_ms, "started_unix_ms": record.started_ms,
        "ended_unix_ms": record.ended_ms, "expires_unix_ms": record.expires_ms,
        "result_bytes": record.result_bytes if record.state == SUCCEEDED else 0,
        "result_format": record.result_format, "client_tag": record.client_tag,
    }


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(_dumps({"error": message}), status, headers=headers, media_type=JSON)


def _reply(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_dumps(value), status, headers=headers, media_type=JSON)


def _count(text: str, what: str) -> int:
    if not _COUNT.fullmatch(text):
        raise InvalidArgument(f"{what}: expected a non-negative integer, got '{clipped(text)}'")
    return int(text)


def _query(request: Request, allowed: tuple[str, ...], prefix: str = "") -> dict[str, str]:
    """The query parameters, each at most once, each one of ``allowed`` (or starting with ``prefix``)."""
    found: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key not in allowed and not (prefix and key.startswith(prefix) and len(key) > len(prefix)):
            names = ", ".join(allowed) + (f", {prefix}<name>" if prefix else "")
            raise InvalidArgument(f"query parameter '{clipped(key)}': expected one of {names}")
        if key in found:
            raise InvalidArgument(f"query parameter '{clipped(key)}': expected once, got it twice or more")
        found[key] = value
    return found


def _content_length(request: Request) -> int:
    length = request.headers.get("content-length")
    if length is None:
        raise LengthRequired("Content-Length: expected the size of the payload in the body (a body sent "
                             "chunked, without Content-Length, is not taken), got none")
    return _count(length, "Content-Length")


class JobRoutes:
    """The ``/v1/jobs`` routes over ``jobs`` (None: the server runs no jobs, and every route says so, 501)."""

    def __init__(self, jobs: JobService | None) -> None:
        self.jobs = jobs

    def table(self) -> list[tuple[str, list[str], str, Handler]]:
        """(path, methods, token category, handler) for the HTTP API's table; all are the ``jobs`` category."""
        rows: list[tuple[str, list[str], Handler]] = [
            ("/v1/jobs", ["POST"], self.submit),
            ("/v1/jobs", ["GET"], self.list_jobs),
            ("/v1/jobs/{job_id}", ["GET"], self.get_job),
            ("/v1/jobs/{job_id}", ["DELETE"], self.delete_job),
            ("/v1/jobs/{job_id}/payload", ["PUT"], self.put_payload),
            ("/v1/jobs/{job_id}/watch", ["GET"], self.watch),
            ("/v1/jobs/{job_id}/result", ["GET"], self.result),
            ("/v1/jobs/{job_id}/summary", ["GET"], self.summary),
            ("/v1/jobs/{job_id}/cancel", ["POST"], self.cancel),
        ]
        return [(path, methods, "jobs", self._answered(handler)) for path, methods, handler in rows]

    @property
    def service(self) -> JobService:
        assert self.jobs is not None  # _answered answers 501 before a handler runs without it
        return self.jobs

    def _answered(self, handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def handle(request: Request) -> Response:
            if self.jobs is None:
                return _error(501, f"{request.method} {clipped(request.url.path)}: {JOBS_OFF}")
            try:
                return await handler(request)
            except PeregrineError as e:
                status = getattr(e, "http_status", None) or JOB_STATUS.get(e.code) or status_of(e)[0]
                return _error(status, e.message, getattr(e, "headers", None))

        return handle

    # -- submit and upload ------------------------------------------------------------------------
    async def submit(self, request: Request) -> Response:
        """POST /v1/jobs: the payload as the body (the spec in the query), or a JSON spec."""
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media == JSON:
            spec = await self._json_spec(request)
            record = await self._upload(spec, None, partial=not spec.input_location)
        else:
            spec = self._query_spec(request)
            spec.total_bytes = _content_length(request)
            if not spec.total_bytes:
                raise InvalidArgument("Content-Length: expected the payload as the body (or a JSON spec with "
                                      "Content-Type: application/json), got an empty body")
            self._check_size(spec.total_bytes, "Content-Length")
            _check_encoding(request)
            record = await self._upload(spec, request, partial=False)
        return _reply(job_json(record), 201, {"Location": f"/v1/jobs/{record.job_id}"})

    def _query_spec(self, request: Request) -> JobSpec:
        if "total_bytes" in request.query_params:
            raise InvalidArgument("query parameter 'total_bytes': the payload's size is the body's Content-Length "
                                  "(to upload in parts, POST the spec as JSON, then PUT the parts)")
        query = _query(request, _QUERY_SPEC, _PARAMETER)
        spec = JobSpec(parameters={k[len(_PARAMETER):]: v for k, v in query.items() if k.startswith(_PARAMETER)})
        for name in _QUERY_SPEC:
            if name in query:
                setattr(spec, name, _count(query[name], name) if name in _SPEC_COUNTS else query[name])
        return spec

    async def _json_spec(self, request: Request) -> JobSpec:
        if request.query_params:
            raise InvalidArgument("query parameters: with a JSON spec, every field is in the JSON, got "
                                  f"'{clipped(str(request.query_params))}'")
        length = request.headers.get("content-length")
        if length is not None and _count(length, "Content-Length") > SPEC_BODY_LIMIT:
            raise PayloadTooLarge(f"request body: a JSON job spec is at most {SPEC_BODY_LIMIT} bytes, got {length}")
        pieces, size = [], 0
        async for piece in request.stream():
            size += len(piece)
            if size > SPEC_BODY_LIMIT:
                raise PayloadTooLarge(f"request body: a JSON job spec is at most {SPEC_BODY_LIMIT} bytes")
            pieces.append(piece)
        try:
            body = json.loads(b"".join(pieces))
        except (ValueError, RecursionError) as e:
            raise InvalidArgument(f"request body: not valid JSON ({clipped(str(e))})") from None
        if not isinstance(body, dict):
            raise InvalidArgument(f"request body: expected a JSON object (a job spec), got {json_type(body)}")
        spec = JobSpec()
        for key, value in body.items():
            if key in _SPEC_TEXT:
                if not isinstance(value, str):
                    raise InvalidArgument(f"{key}: expected a string, got {clipped(repr(value))}")
            elif key in _SPEC_COUNTS:
                if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 63:
                    raise InvalidArgument(f"{key}: expected a non-negative integer, got {clipped(repr(value))}")
            elif key == "parameters":
                if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                    raise InvalidArgument(f"parameters: expected an object of strings, got {clipped(repr(value))}")
                value = dict(value)
            else:
                raise InvalidArgument(f"'{clipped(key)}': not a job spec field; expected some of "
                                      f"{', '.join((*_SPEC_TEXT, *_SPEC_COUNTS, 'parameters'))}")
            setattr(spec, key, value)
        if spec.input_location and spec.total_bytes:
            raise InvalidArgument("total_bytes: the payload is read from input_location; leave total_bytes out")
        if not spec.input_location:
            if not spec.total_bytes:
                raise InvalidArgument("total_bytes: expected the size of the payload to PUT to "
                                      "/v1/jobs/{id}/payload (or an input_location), got none")
            self._check_size(spec.total_bytes, "total_bytes")
        return spec

    def _check_size(self, size: int, what: str) -> None:
        limit = self.service.settings.max_payload_bytes
        if size > limit:
            raise PayloadTooLarge(f"{what}: a payload is at most {limit} bytes (--job-max-payload-mb), got {size}")

    async def put_payload(self, request: Request) -> Response:
        """PUT /v1/jobs/{id}/payload: bytes of an upload from an offset at most what the server has."""
        job_id = request.path_params["job_id"]
        record = await self.service.get(job_id)
        length = _content_length(request)
        _check_encoding(request)
        header = request.headers.get("content-range")
        total = record.total_bytes
        if header is None:  # the payload from its first byte
            start, end = 0, length - 1
            if not 0 < length <= total:
                raise InvalidArgument(f"Content-Length: expected 1..{total} bytes (job {job_id}'s payload is "
                                      f"{total} bytes; from elsewhere than its start, send Content-Range), got "
                                      f"{length}")
        else:
            m = _CONTENT_RANGE.fullmatch(header.strip())
            start, end, declared = (int(m[1]), int(m[2]), int(m[3])) if m else (0, -1, 0)
            if not start <= end < declared or end - start + 1 != length:
                raise InvalidArgument(f"Content-Range: expected 'bytes START-END/TOTAL' with START <= END < TOTAL "
                                      f"and END - START + 1 = Content-Length ({length}), got '{clipped(header)}'")
            if declared != total:
                raise InvalidArgument(f"Content-Range: job {job_id}'s payload is {total} bytes, got TOTAL {declared}")
        if record.state == UPLOADING and start > record.received_bytes:
            raise InvalidArgument(f"Content-Range: job {job_id} has {record.received_bytes} bytes; send from there "
                                  f"or before, got START {start}")
        spec = JobSpec(job_id=job_id, resume_offset=start, total_bytes=total)
        return _reply(job_json(await self._upload(spec, request, partial=end + 1 < total)))

    async def _upload(self, spec: JobSpec, request: Request | None, partial: bool) -> JobRecord:
        """Submit ``spec`` with the body of ``request`` (None: no bytes). ``partial``: the bytes end before the
        payload does, so the job stays UPLOADING, for the next part (the service calls that an upload cut
        short)."""
        body = _Body(spec, request)
        job_id = spec.job_id

        async def created(new_id: str) -> None:
            nonlocal job_id
            job_id = new_id

        try:
            return await self.service.submit(body.chunks(), created)
        except FailedPrecondition:
            if not (partial and body.finished and job_id):
                raise
        return await self.service.get(job_id)  # UPLOADING, its received_bytes committed

    # -- queries ----------------------------------------------------------------------------------
    async def get_job(self, request: Request) -> Response:
        return _reply(job_json(await self.service.get(request.path_params["job_id"])))

    async def list_jobs(self, request: Request) -> Response:
        query = _query(request, ("state", "model_name", "page_size", "page_token"))
        page_size = _count(query.get("page_size", "0"), "page_size")
        records, token = await self.service.list(query.get("state", ""), query.get("model_name", ""), page_size,
                                                 query.get("page_token", ""))
        return _reply({"jobs": [job_json(r) for r in records], "next_page_token": token})

    async def watch(self, request: Request) -> Response:
        """NDJSON, one job per line: now, then every change until it ends. A job removed meanwhile ends the
        stream with a line ``{"error": ..., "status": 404}`` (a line with no ``job_id``)."""
        records = self.service.watch(request.path_params["job_id"])
        first = await records.__anext__()  # an unknown or malformed id: answered with its status
        if request.method == "HEAD":  # no stream to hold open for a body nobody reads
            await records.aclose()
            return Response(b"", media_type=NDJSON, headers={"Cache-Control": "no-cache"})

        async def lines() -> AsyncIterator[bytes]:
            try:
                yield _dumps(job_json(first)) + b"\n"
                async for record in records:
                    yield _dumps(job_json(record)) + b"\n"
            except PeregrineError as e:
                status = JOB_STATUS.get(e.code) or status_of(e)[0]
                yield _dumps({"error": e.message, "status": status}) + b"\n"
            finally:
                await records.aclose()

        return StreamingResponse(lines(), media_type=NDJSON, headers={"Cache-Control": "no-cache"})

    # -- results ----------------------------------------------------------------------------------
    async def result(self, request: Request) -> Response:
        """The result's bytes, streamed from the spool; one ``Range`` of bytes (206), ``If-Range`` with the ETag."""
        job_id = request.path_params["job_id"]
        record = await self.service.get(job_id)
        size = record.result_bytes
        etag = f'"{job_id}-{record.ended_ms}-{size}"'
        span = None
        if record.state == SUCCEEDED:
            header = request.headers.get("range")
            if_range = request.headers.get("if-range")
            if header is not None and (if_range is None or if_range.strip() == etag):
                span = _byte_range(header, size)
        start, end = span if span else (0, size - 1)
        chunks = self.service.result(job_id, start)
        first = await chunks.__anext__()  # the service's own checks: SUCCEEDED, the offset
        suffix = "jsonl" if record.result_format == "jsonl" else "npz"
        headers = {"Accept-Ranges": "bytes", "ETag": etag, "Content-Length": str(end - start + 1),
                   "Content-Disposition": f'attachment; filename="{job_id}.{suffix}"'}
        if span:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        media = NDJSON if suffix == "jsonl" else "application/octet-stream"
        status = 206 if span else 200
        if request.method == "HEAD":
            await chunks.aclose()
            return Response(b"", status, headers=headers, media_type=media)

        async def body() -> AsyncIterator[bytes]:
            left = end - start + 1
            data = first[1]
            try:
                while left > 0 and data:
                    piece = data[:left]
                    left -= len(piece)
                    yield piece
                    if left > 0:
                        data = (await chunks.__anext__())[1]
            except StopAsyncIteration:
                pass
            finally:
                await chunks.aclose()

        return StreamingResponse(body(), status, headers=headers, media_type=media)

    async def summary(self, request: Request) -> Response:
        """The result's summary (the JSON the last GetResult message carries)."""
        job_id = request.path_params["job_id"]
        record = await self.service.get(job_id)
        chunks = self.service.result(job_id, record.result_bytes if record.state == SUCCEEDED else 0)
        try:
            summary = ""
            async for _, _, summary in chunks:  # from the end: one empty chunk, with the summary
                if summary:
                    break
        finally:
            await chunks.aclose()
        return Response(summary.encode(), media_type=JSON)

    # -- cancel and delete ------------------------------------------------------------------------
    async def cancel(self, request: Request) -> Response:
        return _reply(job_json(await self.service.cancel(request.path_params["job_id"])))

    async def delete_job(self, request: Request) -> Response:
        await self.service.delete(request.path_params["job_id"])
        return Response(status_code=204)


class _Body:
    """An upload as the job service takes it: the spec, then the request's body in pieces of about
    UPLOAD_PIECE bytes (what arrived before the client went still counts: the upload resumes from it)."""

    def __init__(self, spec: JobSpec, request: Request | None) -> None:
        self.spec = spec
        self.request = request
        self.finished = False  # every byte was handed over (the service saw the end of the upload)

    async def chunks(self) -> AsyncIterator[tuple[JobSpec | None, bytes]]:
        yield self.spec, b""
        if self.request is not None:
            pieces: list[bytes] = []
            size = 0
            try:
                async for data in self.request.stream():
                    pieces.append(data)
                    size += len(data)
                    if size >= UPLOAD_PIECE:
                        yield None, b"".join(pieces)
                        pieces, size = [], 0
            except ClientDisconnect:
                if pieces:
                    yield None, b"".join(pieces)
                raise
            if pieces:
                yield None, b"".join(pieces)
        self.finished = True


def _check_encoding(request: Request) -> None:
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedEncoding(f"Content-Encoding: a payload is taken as sent (its SHA-256 is of those bytes); "
                                  f"send it without a content coding, got '{clipped(encoding)}'")


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a ``Range: bytes=...`` header over ``size`` bytes; None for a unit other than
    bytes (RFC 9110: ignored). One range only; several, or one not in the result: RangeNotSatisfiable."""
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes":
        return None
    if "," in spec:
        raise RangeNotSatisfiable(f"Range: one range per request, got '{clipped(header)}'", size)
    m = _RANGE.fullmatch(spec.strip())
    if not m or not (m.group(1) or m.group(2)):
        raise RangeNotSatisfiable(f"Range: expected bytes=FIRST-LAST, bytes=FIRST- or bytes=-LENGTH, got "
                                  f"'{clipped(header)}'", size)
    first, last = m.groups()
    if not first:  # the last LENGTH bytes
        length = int(last)
        if not length or not size:
            raise RangeNotSatisfiable(f"Range: the result is {size} bytes, got '{clipped(header)}'", size)
        return max(size - length, 0), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        raise RangeNotSatisfiable(f"Range: the result is {size} bytes (0..{size - 1}), got '{clipped(header)}'",
                                  size)
    return start, end
