"""The gRPC server: OIP and detection services over the data plane, health, reflection, TLS and tokens."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import _async as reflection_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from peregrine.proto import (
    _pool,
    detection_pb2,
    detection_pb2_grpc,
    grpc_service_pb2,
    grpc_service_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
)

from ...config.server import ServerConfig, connections_per_port
from ...dataplane.dataplane import DataPlane
from ...jobs.service import JobService
from ...security.tokens import TokenStore
from .detection import DetectionServicer
from .inference import InferenceServicer
from .jobs import JobServicer
from .security import TlsFiles, TokenAuthInterceptor
from .status import CALL_METADATA, Malformed, tolerant

if TYPE_CHECKING:
    from ...scheduling.loop import EventLoopThread

log = logging.getLogger(__name__)

OIP_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
DETECTION_SERVICE = detection_pb2.DESCRIPTOR.services_by_name["DetectionService"].full_name
JOB_SERVICE = jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name
SERVICES = ("", OIP_SERVICE, DETECTION_SERVICE)


def _reflection_pool() -> descriptor_pool.DescriptorPool:
    """Peregrine's protocol lives in a private descriptor pool (see proto/generate.py); reflection serves
    from that pool, so the standard health and reflection services are added to it."""
    from grpc_reflection.v1alpha import reflection_pb2

    for module in (health_pb2, reflection_pb2):
        try:
            _pool.POOL.FindFileByName(module.DESCRIPTOR.name)
        except KeyError:
            proto = descriptor_pb2.FileDescriptorProto()
            module.DESCRIPTOR.CopyToProto(proto)
            _pool.POOL.Add(proto)
    return _pool.POOL


class _Capture:
    """Stands in for a server to the generated ``add_..._to_server`` functions: keeps their handlers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}
        self.service = ""

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.service, self.handlers = service, handlers


def _serialize(message: Any) -> bytes:
    """Every response's serializer: a protobuf message, or what the codecs pre-encode with the same method
    (:class:`~peregrine.server.codecs.oip.EncodedInferResponse`)."""
    return message.SerializeToString()  # type: ignore[no-any-return]


class _Service(grpc.GenericRpcHandler):
    """One service's handlers, found by the call's method, handing the call's metadata to its handler.

    grpc.aio builds a call's metadata (a tuple of namedtuples) to look its handler up, and builds it again at
    each ``context.invocation_metadata()``: 1.2 us a time in a loop, several times that run once between two
    requests of a busy event loop, where with OpenTelemetry on every request's ``traceparent`` is looked up
    (docs/BENCHMARKS.md, "Observability on vs off"). The look-up runs in the call's own task, so the tuple
    it was given is kept in :data:`~.status.CALL_METADATA` for :class:`~.status.GrpcCall` to read.
    Registered methods (``add_registered_method_handlers``) would be matched before any generic handler and
    never pass through here, so the services are added as generic handlers only."""

    def __init__(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self._handlers = {f"/{service}/{name}": h for name, h in handlers.items()}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._handlers.get(handler_call_details.method)
        if handler is not None:
            CALL_METADATA.set(handler_call_details.invocation_metadata)
        return handler


def _add_tolerant(add: Any, servicer: Any, server: grpc.aio.Server) -> None:
    """Add a service whose request deserializers never raise: malformed bytes reach the handler as
    :class:`~.status.Malformed` and are answered INVALID_ARGUMENT (grpc itself would answer UNKNOWN)."""
    capture = _Capture()
    add(servicer, capture)
    handlers = {name: h._replace(request_deserializer=tolerant(h.request_deserializer, f"{capture.service}.{name}"),
                                 response_serializer=_serialize)
                for name, h in capture.handlers.items()}
    server.add_generic_rpc_handlers((_Service(capture.service, handlers),))


class _Health(health.aio.HealthServicer):
    """grpc's health service, answering a request that does not parse INVALID_ARGUMENT (it raised on it,
    UNKNOWN with a traceback in the log), as the server's own services do."""

    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await _refuse_malformed(request, context)
        return await super().Check(request, context)

    async def Watch(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await _refuse_malformed(request, context)
        return await super().Watch(request, context)


class _Reflection(reflection_aio.ReflectionServicer):
    """grpc's reflection service, with the same answer to a message that does not parse."""

    async def ServerReflectionInfo(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        async def parsed() -> Any:
            async for request in request_iterator:
                await _refuse_malformed(request, context)
                yield request

        async for response in super().ServerReflectionInfo(parsed(), context):
            yield response


async def _refuse_malformed(request: Any, context: grpc.aio.ServicerContext) -> None:
    if isinstance(request, Malformed):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.error().message)


class GrpcTransport:
    """A ``grpc.aio`` server serving the data plane on the server's event loop: a call, unary or stream,
    holds no thread while it waits. :meth:`bind`, :meth:`start`, :meth:`stop` are called from any thread
    but the loop's; they run on ``loop``."""

    def __init__(self, config: ServerConfig, dataplane: DataPlane, loop: EventLoopThread,
                 jobs: JobService | None = None) -> None:
        self.config = config
        self.dataplane = dataplane
        self.loop = loop
        self.jobs = jobs  # peregrine.v1.JobService, when the server keeps jobs
        self.health = _Health()
        self.server: grpc.aio.Server | None = None
        self.port: int | None = None

    def _options(self) -> list[tuple[str, Any]]:
        cfg = self.config
        return [
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.so_reuseport", 0),
            # HTTP/2 streams (calls of any kind) at once per connection: a backstop behind the data plane's
            # own bounds on streams and bytes per connection.
            ("grpc.max_concurrent_streams", cfg.max_calls_per_connection),
            # Connections at once (past it, gRPC closes a new one at once): with the calls per connection and
            # the message size, the bound on what partly received messages hold (docs/SECURITY.md).
            ("grpc.max_allowed_incoming_connections", connections_per_port(cfg)),
            # Connections: keepalive pings find dead peers; clients may ping no more than every 10 s without
            # calls (more is a flood, answered with GOAWAY); idle connections close after max_connection_idle.
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.http2.max_ping_strikes", 2),
            ("grpc.max_connection_idle_ms", cfg.max_connection_idle_s * 1000),
        ]

    async def _bind(self) -> int:
        cfg = self.config
        interceptors = []
        if cfg.auth_token_file is not None:
            interceptors.append(TokenAuthInterceptor(TokenStore(cfg.auth_token_file), cfg.auth_open))
        server = grpc.aio.server(options=self._options(), interceptors=interceptors, maximum_concurrent_rpcs=None)
        _add_tolerant(grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
                      InferenceServicer(self.dataplane), server)
        _add_tolerant(detection_pb2_grpc.add_DetectionServiceServicer_to_server,
                      DetectionServicer(self.dataplane), server)
        if self.jobs is not None:
            _add_tolerant(jobs_pb2_grpc.add_JobServiceServicer_to_server, JobServicer(self.jobs), server)
        _add_tolerant(health_pb2_grpc.add_HealthServicer_to_server, self.health, server)
        reflected = [OIP_SERVICE, DETECTION_SERVICE, *([JOB_SERVICE] if self.jobs is not None else []),
                     health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
        _add_tolerant(reflection_pb2_grpc.add_ServerReflectionServicer_to_server,
                      _Reflection(reflected, pool=_reflection_pool()), server)
        address = f"{cfg.host}:{cfg.grpc_port}"
        try:
            if cfg.tls_cert is not None and cfg.tls_key is not None:
                tls = TlsFiles(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
                port = server.add_secure_port(address, tls.credentials())
            else:
                port = server.add_insecure_port(address)
                if cfg.host not in ("127.0.0.1", "localhost", "::1"):
                    log.warning("gRPC on %s is plain text%s: use --tls-cert/--tls-key off a trusted network",
                                address, "" if cfg.auth_token_file else " and needs no token")
        except RuntimeError:  # grpc's "Failed to bind": in use, or no such address
            port = 0
        if port == 0:
            raise OSError(f"cannot listen for gRPC on {cfg.host}:{cfg.grpc_port}: the port is in use or the address "
                          "is not this machine's (--host, --grpc-port)")
        self.server = server
        return int(port)

    def bind(self) -> int:
        """Bind the port (0 picks one) and return it; calls are taken once :meth:`start` runs."""
        self.port = self.loop.run(self._bind())
        return self.port

    def model_changed(self, name: str, ready: bool) -> None:
        """A model became ready or stopped being: its health service name follows."""
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        self.loop.submit(self.health.set(name, status))

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for svc in SERVICES:
            self.loop.submit(self.health.set(svc, status))

    def start(self) -> None:
        """Start taking calls; health says NOT_SERVING until :meth:`set_serving`."""
        assert self.server is not None
        self.set_serving(False)
        self.loop.run(self.server.start())

    def drain(self) -> None:
        """Shutdown begins: health says NOT_SERVING, streams stop reading and end once answered."""
        if self.server is None:
            return

        async def begin() -> None:
            await self.health.enter_graceful_shutdown()
            self.dataplane.draining.set()

        self.loop.run(begin())

    def stop(self, grace: float) -> None:
        """Stop taking calls and let running ones finish within ``grace`` seconds, then cancel them."""
        if self.server is not None:
            self.loop.run(self.server.stop(grace))

    def close(self) -> None:
        self.server = None
