"""The HTTP routes: KServe v2 / Triton REST, ``/v1/detect`` and ``/metrics``.

Each handler reads the body (bounded by the server's message limit), converts it with a codec
(:mod:`peregrine.server.codecs.oip_json`, :mod:`~peregrine.server.codecs.detection_json`), calls the same
data plane as gRPC and converts its answer back; errors leave as ``{"error": "..."}`` with the status
:mod:`.status` gives. Every route belongs to one of the token categories gRPC uses.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import gzip
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from ...codecs import detection_json, kserve_v1, metadata, oip_json
from ...core.errors import InvalidArgument, NotReady, ResourceExhausted, Unavailable, Unimplemented, clipped
from ...dataplane.dataplane import DataPlane
from ...dataplane.model_files import PREFIX as FILE_PREFIX
from ...jobs.service import JobService
from .jobs import JobRoutes
from .security import TokenCheck
from .status import HttpCall, status_of

JSON = "application/json"
Handler = Callable[[Request], Awaitable[Response]]


class BodyTooLarge(ResourceExhausted):
    """A request body over the server's message limit (413)."""

    http_status = 413


INFLATE_PIECE = 1 << 20  # bytes inflated at a time


def _decimal(text: str) -> bool:
    """Whether a header's value is ASCII decimal digits (``str.isdigit`` also takes "²" and "٣")."""
    return text.isascii() and text.isdigit()


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """``body`` inflated, a piece at a time: 413 past ``limit`` bytes (stopping there), 400 for data that is
    not ``encoding``, cut short, or followed by more."""
    inflater = zlib.decompressobj(31 if encoding == "gzip" else 15)
    pieces, size, data = [], 0, body
    try:
        while data:
            piece = inflater.decompress(data, INFLATE_PIECE)
            size += len(piece)
            if size > limit:
                raise BodyTooLarge(f"request body: inflates past the {limit} bytes the server takes "
                                   "(--http-max-input-size)")
            pieces.append(piece)
            data = inflater.unconsumed_tail
            if inflater.eof:
                break
    except zlib.error as e:
        raise InvalidArgument(f"request body: not valid {encoding} data ({e})") from None
    if not inflater.eof:
        raise InvalidArgument(f"request body: the {encoding} data is cut short")
    if inflater.unused_data:
        raise InvalidArgument(f"request body: {len(inflater.unused_data)} bytes after the end of the {encoding} data")
    return b"".join(pieces)


def error(status: int, message: str) -> Response:
    return Response(oip_json.dumps({"error": message}), status, media_type=JSON)


def reply(value: Any, status: int = 200) -> Response:
    return Response(oip_json.dumps(value), status, media_type=JSON)


class HttpApi:
    """The routes over ``dataplane``; bodies larger than ``max_body`` bytes (before or after
    ``Content-Encoding``) are refused with 413."""

    def __init__(self, dataplane: DataPlane, max_body: int, tokens: TokenCheck,
                 jobs: JobService | None = None) -> None:
        self.dataplane = dataplane
        self.max_body = max_body
        self._reading = 0  # bytes of the bodies being read now, all connections (on the loop: no lock)
        self._inflating = asyncio.Semaphore(2)  # compressed bodies inflating at once
        self.tokens = tokens
        self.jobs = JobRoutes(jobs)  # /v1/jobs (jobs.py)

    # -- plumbing -----------------------------------------------------------------------------------
    def _guard(self, category: str, method: Handler) -> Handler:
        @functools.wraps(method)
        async def handle(request: Request) -> Response:
            try:
                self.tokens.check(category, request.headers.get("authorization"),
                                  f"{request.method} {clipped(request.url.path)}")
                return await method(request)
            except ClientDisconnect:  # the client left while sending its body: nobody to answer
                return Response(status_code=400)
            except Exception as e:
                status, message = status_of(e)
                return error(getattr(e, "http_status", status), message)

        return handle

    async def _body(self, request: Request) -> bytes:
        """The request's body, read whole and inflated (``Content-Encoding`` gzip or deflate). Bounded as it
        is read: at most ``max_body`` bytes, before and after inflating (413); the bodies all connections are
        reading at once, at most the server's bytes-in-flight budget (RESOURCE_EXHAUSTED 429, as a request
        over it once read): a client that sends most of a large body and never the rest holds what it
        sent, not more. A compressed body is inflated in a worker thread, a piece at a time, two at once at
        most: a small body that inflates to the limit costs neither the event loop nor more than two limits."""
        limit = self.max_body
        length = request.headers.get("content-length")
        if length is not None and _decimal(length) and int(length) > limit:
            raise BodyTooLarge(f"request body: {length} bytes is more than the server takes ({limit}; "
                               "--http-max-input-size)")
        budget = self.dataplane.admission.limits.max_inflight_bytes
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                self._reading += len(chunk)
                if size > limit:
                    raise BodyTooLarge(f"request body: more than the {limit} bytes the server takes "
                                       "(--http-max-input-size)")
                if self._reading > budget:
                    raise ResourceExhausted(f"request body: the bodies being read reach the server's {budget} "
                                            "bytes in flight (--max-inflight-mb); try again")
                chunks.append(chunk)
        finally:
            self._reading -= size
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        encoding = request.headers.get("content-encoding", "").strip().lower()
        if encoding in ("", "identity"):
            return body
        if encoding not in ("gzip", "deflate"):
            raise InvalidArgument(f"Content-Encoding: '{clipped(encoding)}' is not served; expected gzip or deflate")
        async with self._inflating:
            return await asyncio.to_thread(_inflate, body, encoding, limit)

    async def _json(self, request: Request) -> dict[str, Any]:
        return oip_json.parse_object(await self._body(request))

    @staticmethod
    def _model(request: Request) -> tuple[str, str]:
        return request.path_params.get("model", ""), request.path_params.get("version", "")

    # -- health and metadata --------------------------------------------------------------------
    async def live(self, request: Request) -> Response:
        return Response(status_code=200)

    async def ready(self, request: Request) -> Response:
        return Response(status_code=200 if self.dataplane.ready else 400)

    async def model_ready(self, request: Request) -> Response:
        return Response(status_code=200 if self.dataplane.model_ready(*self._model(request)) else 400)

    async def server_metadata(self, request: Request) -> Response:
        m = self.dataplane.server_metadata()
        return reply({"name": m.name, "version": m.version, "extensions": m.extensions})

    async def model_metadata(self, request: Request) -> Response:
        model = self.dataplane.model(*self._model(request))
        msg = metadata.model_metadata(model, self.dataplane.ready_versions(model.name))
        return reply(oip_json.message_json(msg))

    async def model_config(self, request: Request) -> Response:
        model = self.dataplane.model(*self._model(request))
        return reply(oip_json.message_json(metadata.model_config(model, self.dataplane.kernel_tier)))

    async def model_statistics(self, request: Request) -> Response:
        stats = self.dataplane.model_statistics(*self._model(request))
        return reply({"model_stats": [oip_json.message_json(metadata.model_statistics(m, s)) for m, s in stats]})

    async def metrics(self, request: Request) -> Response:
        if not self.dataplane.metrics.enabled:  # as Triton with --allow-metrics=false: nothing is served there
            return error(404, "metrics are off on this server (--allow-metrics=false)")
        text, content_type = self.dataplane.metrics.exposition()
        return Response(text, media_type=content_type)

    # -- inference ---------------------------------------------------------------------------------
    async def infer(self, request: Request) -> Response:
        name, version = self._model(request)
        body = await self._body(request)
        call = HttpCall(request.scope, request.headers.get("authorization"))
        with self.dataplane.scope(call, name, nbytes=len(body)) as scope:
            view = memoryview(body)
            header_length = request.headers.get(oip_json.HEADER_LENGTH)
            split = len(view)
            if header_length is not None:
                if not _decimal(header_length) or int(header_length) > len(view):
                    raise InvalidArgument(f"Inference-Header-Content-Length: expected the JSON's length, at most "
                                          f"the body's {len(view)} bytes, got {clipped(header_length)}")
                split = int(header_length)
            t = time.perf_counter_ns()
            # parsed on the loop: json holds the interpreter as it parses, in any thread (the body's bound,
            # --http-max-input-size, bounds the wait)
            header = oip_json.parse_object(view[:split], "request JSON")
            decoded = oip_json.decode_infer_request(name, version, header, view[split:], scope.deadline,
                                                    scope.regions)
            scope.decode_ns = time.perf_counter_ns() - t
            result = await scope.infer(decoded)
            t = time.perf_counter_ns()
            out, json_length = oip_json.encode_infer_response(result, header, scope.regions)
            scope.encode_ns = time.perf_counter_ns() - t
        headers = {} if json_length is None else {"Inference-Header-Content-Length": str(json_length)}
        accepted = request.headers.get("accept-encoding", "").lower()
        if "gzip" in accepted:
            out, headers["Content-Encoding"] = gzip.compress(out, 6), "gzip"
        elif "deflate" in accepted:
            out, headers["Content-Encoding"] = zlib.compress(out), "deflate"
        return Response(out, headers=headers, media_type=JSON if json_length is None else "application/octet-stream")

    async def detect(self, request: Request) -> Response:
        body = await self._body(request)
        call = HttpCall(request.scope, request.headers.get("authorization"))
        with self.dataplane.scope(call, "", nbytes=len(body)) as scope:
            content_type = request.headers.get("content-type", "").lower()
            t = time.perf_counter_ns()
            if content_type.startswith("multipart/form-data"):
                decoded = await self._form(request, body, scope.deadline)  # the multipart parse included
            else:
                decoded = detection_json.decode_json(oip_json.parse_object(body), scope.deadline)
            scope.decode_ns = time.perf_counter_ns() - t
            result = await scope.detect(decoded)
            t = time.perf_counter_ns()
            out = oip_json.dumps(detection_json.encode_result(decoded, result))
            scope.encode_ns = time.perf_counter_ns() - t
            return Response(out, media_type=JSON)

    async def _form(self, request: Request, body: bytes, deadline: float | None) -> Any:
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        parsed = Request(request.scope, replay)
        try:
            form = await parsed.form(max_files=256, max_fields=64, max_part_size=self.max_body)
        except HTTPException as e:
            raise InvalidArgument(f"multipart body: {e.detail}") from None
        fields: dict[str, str] = {}
        images: list[bytes] = []
        try:
            for key, value in form.multi_items():
                if isinstance(value, str):
                    fields[key] = value
                elif key == "image":
                    images.append(await value.read())
                else:
                    raise InvalidArgument(f"form part '{clipped(key)}': files go in parts named 'image'")
        finally:
            await form.close()
        return detection_json.decode_form(fields, images, deadline)

    # -- repository ------------------------------------------------------------------------------
    async def repository_index(self, request: Request) -> Response:
        body = await self._json(request)
        ready = body.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidArgument("ready: expected true or false")
        rows = self.dataplane.repository_index("", ready)
        return reply([{"name": n, "version": v, "state": s, "reason": r} for n, v, s, r in rows])

    async def load(self, request: Request) -> Response:
        body = await self._json(request)
        params = body.get("parameters", {})
        if not isinstance(params, dict):
            raise InvalidArgument("parameters: expected an object")
        config_json = None
        files: dict[str, bytes] = {}
        for key, value in params.items():
            if key.startswith(FILE_PREFIX):
                files[key] = _base64(value, f"parameters.{clipped(key)}")
                continue
            if key != "config":
                raise InvalidArgument(f"parameters.{clipped(key)}: not a load parameter; a load takes 'config' (a "
                                      "model configuration in JSON) and 'file:<version>/<path>' (model files, "
                                      "base64)")
            if not isinstance(value, str):
                raise InvalidArgument("parameters.config: expected a string holding JSON")
            config_json = value
        await asyncio.to_thread(self.dataplane.load_model, self._model(request)[0], config_json, files)
        return Response(status_code=200)

    async def unload(self, request: Request) -> Response:
        await self._json(request)  # parameters.unload_dependents: there are no ensembles to unload with it
        await asyncio.to_thread(self.dataplane.unload_model, self._model(request)[0])
        return Response(status_code=200)

    # -- shared memory ------------------------------------------------------------------------------
    async def shm_status(self, request: Request) -> Response:
        kind = "cuda" if "cudasharedmemory" in request.url.path else "system"
        regions = self.dataplane.shared_memory.status(kind, request.path_params.get("region", ""))
        if kind == "system":
            return reply([{"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}
                          for r in regions])
        return reply([{"name": r.name, "device_id": r.device_id, "byte_size": r.byte_size} for r in regions])

    async def shm_register(self, request: Request) -> Response:
        body = await self._json(request)
        region = request.path_params["region"]
        shm = self.dataplane.shared_memory
        if "cudasharedmemory" in request.url.path:
            handle = body.get("raw_handle")
            text = handle.get("b64") if isinstance(handle, dict) else None
            if not isinstance(text, str):
                raise InvalidArgument('raw_handle: expected {"b64": <the CUDA IPC handle in base64>}')
            raw = _base64(text, "raw_handle.b64")
            await asyncio.to_thread(shm.register_cuda, region, raw, _count(body, "device_id", 0),
                                    _count(body, "byte_size"))
        else:
            key = body.get("key")
            if not isinstance(key, str):
                raise InvalidArgument("key: expected the shared-memory key, a string")
            await asyncio.to_thread(shm.register_system, region, key, _count(body, "offset", 0),
                                    _count(body, "byte_size"))
        return Response(status_code=200)

    async def shm_unregister(self, request: Request) -> Response:
        kind = "cuda" if "cudasharedmemory" in request.url.path else "system"
        await asyncio.to_thread(self.dataplane.shared_memory.unregister, kind, request.path_params.get("region", ""))
        return Response(status_code=200)

    # -- KServe's V1 data plane (TensorFlow Serving's REST predict API; codecs/kserve_v1.py) ------------------
    async def v1_models(self, request: Request) -> Response:
        return reply({"models": sorted({m.name for m in self.dataplane.repository.ready_models()})})

    async def v1_model(self, request: Request) -> Response:
        name = self._model(request)[0]
        try:
            self.dataplane.model(name)  # NOT_FOUND (404): a model the server does not have
        except NotReady as e:  # KServe's answer for one it has that is not ready: 503
            raise Unavailable(e.message) from None
        return reply({"name": name, "ready": True})

    async def v1_predict(self, request: Request) -> Response:
        name = self._model(request)[0]
        body = await self._body(request)
        call = HttpCall(request.scope, request.headers.get("authorization"))
        with self.dataplane.scope(call, name, nbytes=len(body)) as scope:
            t = time.perf_counter_ns()
            model = self.dataplane.model(name)
            decoded, fmt = kserve_v1.decode_predict(name, "", oip_json.parse_object(body, "request JSON"),
                                                    model.inputs, model.max_batch_size, scope.deadline)
            scope.decode_ns = time.perf_counter_ns() - t
            result = await scope.infer(decoded)
            t = time.perf_counter_ns()
            ragged = kserve_v1.DETECTION_ROWS if model.platform == "peregrine_detection" else None
            out = oip_json.dumps(kserve_v1.encode_predict(result, fmt, ragged))
            scope.encode_ns = time.perf_counter_ns() - t
        return Response(out, media_type=JSON)

    async def v1_explain(self, request: Request) -> Response:
        raise Unimplemented(f"POST {clipped(request.url.path)}: explanations are not served; :predict is")

    # -- trace and log settings ------------------------------------------------------------------
    async def trace(self, request: Request) -> Response:
        changes = oip_json.trace_changes(await self._json(request)) if request.method == "POST" else {}
        settings = self.dataplane.trace_settings(self._model(request)[0], changes)
        return reply(oip_json.trace_settings(settings))

    async def logging(self, request: Request) -> Response:
        changes = await self._json(request) if request.method == "POST" else {}
        return reply(self.dataplane.update_log_settings(changes))

    async def observability(self, request: Request) -> Response:
        changes = await self._json(request) if request.method == "POST" else None
        return reply(self.dataplane.observability(changes))

    # -- the table -------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        model = "/v2/models/{model}"
        versioned = "/v2/models/{model}/versions/{version}"
        table: list[tuple[str, list[str], str, Handler]] = [
            ("/v2/health/live", ["GET"], "health", self.live),
            ("/v2/health/ready", ["GET"], "health", self.ready),
            ("/metrics", ["GET"], "health", self.metrics),
            ("/v2", ["GET"], "metadata", self.server_metadata),
            ("/v2/models/stats", ["GET"], "statistics", self.model_statistics),
            ("/v2/repository/index", ["POST"], "model-repository", self.repository_index),
            ("/v2/repository/models/{model}/load", ["POST"], "model-repository", self.load),
            ("/v2/repository/models/{model}/unload", ["POST"], "model-repository", self.unload),
            ("/v2/trace/setting", ["GET", "POST"], "trace", self.trace),
            ("/v2/logging", ["GET", "POST"], "logging", self.logging),
            ("/v1/observability", ["GET", "POST"], "observability", self.observability),
            ("/v1/detect", ["POST"], "inference", self.detect),
            ("/v1/models", ["GET"], "metadata", self.v1_models),
            ("/v1/models/{model}", ["GET"], "health", self.v1_model),
            ("/v1/models/{model}:predict", ["POST"], "inference", self.v1_predict),
            ("/v1/models/{model}:explain", ["POST"], "inference", self.v1_explain),
        ]
        for kind in ("systemsharedmemory", "cudasharedmemory"):
            table += [
                (f"/v2/{kind}/status", ["GET"], "shared-memory", self.shm_status),
                (f"/v2/{kind}/region/{{region}}/status", ["GET"], "shared-memory", self.shm_status),
                (f"/v2/{kind}/region/{{region}}/register", ["POST"], "shared-memory", self.shm_register),
                (f"/v2/{kind}/unregister", ["POST"], "shared-memory", self.shm_unregister),
                (f"/v2/{kind}/region/{{region}}/unregister", ["POST"], "shared-memory", self.shm_unregister),
            ]
        for base in (versioned, model):
            table += [
                (base, ["GET"], "metadata", self.model_metadata),
                (f"{base}/ready", ["GET"], "health", self.model_ready),
                (f"{base}/config", ["GET"], "model-config", self.model_config),
                (f"{base}/stats", ["GET"], "statistics", self.model_statistics),
                (f"{base}/infer", ["POST"], "inference", self.infer),
            ]
        table.append((f"{model}/trace/setting", ["GET", "POST"], "trace", self.trace))
        table += self.jobs.table()
        return [Route(path, self._guard(category, handler), methods=methods, include_in_schema=False)
                for path, methods, category, handler in table]

    def app(self) -> Starlette:
        async def refused(request: Request, exc: Exception) -> Response:
            status = getattr(exc, "status_code", 500)
            what = "no such route" if status == 404 else "method not allowed" if status == 405 else "refused"
            return error(status, f"{request.method} {clipped(request.url.path)}: {what}")

        return Starlette(routes=self.routes(), exception_handlers={HTTPException: refused})


def _count(body: dict[str, Any], key: str, default: int | None = None) -> int:
    value = body.get(key, default)
    if value is None:
        raise InvalidArgument(f"{key}: expected a non-negative integer, got none")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidArgument(f"{key}: expected a non-negative integer, got {clipped(repr(value))}")
    return value


def _base64(value: Any, field: str) -> bytes:
    """Bytes sent as base64 in a JSON string (a load's ``file:`` parameter, a CUDA IPC handle)."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{field}: expected the file's contents in base64 (a string), got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"{field}: not valid base64") from None
