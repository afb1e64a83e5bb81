"""The gRPC server: OIP and detection services over the data plane, health, reflection, TLS and tokens."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from peregrine.proto import _pool, detection_pb2, detection_pb2_grpc, grpc_service_pb2, grpc_service_pb2_grpc

from ...config.server import ServerConfig
from ...dataplane.dataplane import DataPlane
from ...security.tokens import TokenStore
from .detection import DetectionServicer
from .inference import InferenceServicer
from .security import TlsFiles, TokenAuthInterceptor

log = logging.getLogger(__name__)

OIP_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
DETECTION_SERVICE = detection_pb2.DESCRIPTOR.services_by_name["DetectionService"].full_name
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


class GrpcTransport:
    """A threaded ``grpc.server`` serving the data plane. ``start()`` binds and returns the port."""

    def __init__(self, config: ServerConfig, dataplane: DataPlane) -> None:
        self.config = config
        self.health = health.HealthServicer(experimental_non_blocking=True)
        options = [
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        self._pool = ThreadPoolExecutor(config.grpc_workers, thread_name_prefix="grpc")
        interceptors = []
        if config.auth_token_file is not None:
            interceptors.append(TokenAuthInterceptor(TokenStore(config.auth_token_file), config.auth_open))
        self.server = grpc.server(self._pool, options=options, maximum_concurrent_rpcs=None,
                                  interceptors=interceptors)
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(dataplane), self.server)
        detection_pb2_grpc.add_DetectionServiceServicer_to_server(DetectionServicer(dataplane), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [OIP_SERVICE, DETECTION_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME],
            self.server,
            pool=_reflection_pool(),
        )
        self.port: int | None = None

    def model_changed(self, name: str, ready: bool) -> None:
        """A model became ready or stopped being: its health service name follows."""
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        self.health.set(name, status)

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for svc in SERVICES:
            self.health.set(svc, status)

    def bind(self) -> int:
        """Bind the port (0 picks one) and return it; calls are taken once :meth:`start` runs."""
        cfg = self.config
        address = f"{cfg.host}:{cfg.grpc_port}"
        try:
            if cfg.tls_cert is not None and cfg.tls_key is not None:
                tls = TlsFiles(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
                self.port = self.server.add_secure_port(address, tls.credentials())
            else:
                self.port = self.server.add_insecure_port(address)
        except RuntimeError:  # grpc's "Failed to bind": in use, or no such address
            self.port = 0
            if cfg.host not in ("127.0.0.1", "localhost", "::1"):
                log.warning("gRPC on %s is plain text%s: use --tls-cert/--tls-key off a trusted network",
                            address, "" if cfg.auth_token_file else " and needs no token")
        if self.port == 0:
            raise OSError(f"cannot listen for gRPC on {cfg.host}:{cfg.grpc_port}: the port is in use or the address "
                          "is not this machine's (--host, --grpc-port)")
        return self.port

    def start(self) -> None:
        """Start taking calls; health says NOT_SERVING until :meth:`set_serving`."""
        self.set_serving(False)
        self.server.start()

    def drain(self) -> None:
        self.health.enter_graceful_shutdown()

    def stop(self, grace: float) -> None:
        """Stop taking calls and let running ones finish within ``grace`` seconds."""
        self.server.stop(grace).wait()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def wait(self) -> None:
        self.server.wait_for_termination()
