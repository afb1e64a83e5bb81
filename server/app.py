"""Assembles a Peregrine server: repository, engine, gRPC transport, health, reflection, metrics."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError, version

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from peregrine.proto import _pool, detection_pb2, detection_pb2_grpc, grpc_service_pb2, grpc_service_pb2_grpc

from .config import ServerConfig
from .engine import Engine
from .metrics import Metrics
from .repository import ModelRepository
from .security import TlsFiles, TokenAuthInterceptor, TokenStore
from .shm import SharedMemoryRegistry
from .tracing import Tracer
from .transport.detection_service import DetectionServicer
from .transport.inference_service import InferenceServicer

log = logging.getLogger(__name__)

OIP_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
DETECTION_SERVICE = detection_pb2.DESCRIPTOR.services_by_name["DetectionService"].full_name


def peregrine_version() -> str:
    try:
        return version("peregrine")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


def kernel_tier() -> str:
    try:
        from peregrine import kernels

        tier = getattr(kernels, "active_tier", None)
        return str(tier()) if callable(tier) else "native-cpu"
    except Exception as e:  # the server runs without kernels; say which tier is missing
        return f"unavailable ({e})"


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


class PeregrineServer:
    """A running server. ``start()`` binds and returns the gRPC port; ``stop()`` drains and closes."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.engine = Engine()
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self.repository = ModelRepository(config.model_repository, self.engine, on_change=self._model_changed)
        self.metrics = Metrics(self.repository.ready_models)
        self.shared_memory = SharedMemoryRegistry(config.shm_key_prefixes, enabled=config.shared_memory)
        self.tracer = Tracer(config.trace_file, config.trace_level, config.trace_rate, config.trace_count,
                             config.trace_log_frequency)
        self.servicer = InferenceServicer(self.repository, self.engine, self.metrics, peregrine_version(),
                                          name=config.server_name, kernel_tier=kernel_tier(),
                                          shared_memory=self.shared_memory, tracer=self.tracer)
        options = [
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        self._pool = ThreadPoolExecutor(config.grpc_workers, thread_name_prefix="grpc")
        interceptors = []
        if config.auth_token_file is not None:
            interceptors.append(TokenAuthInterceptor(TokenStore(config.auth_token_file), config.auth_open))
        self.grpc = grpc.server(self._pool, options=options, maximum_concurrent_rpcs=None,
                                interceptors=interceptors)
        self.detection = DetectionServicer(self.repository, self.engine, self.metrics, self.tracer)
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, self.grpc)
        detection_pb2_grpc.add_DetectionServiceServicer_to_server(self.detection, self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            [OIP_SERVICE, DETECTION_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME],
            self.grpc,
            pool=_reflection_pool(),
        )
        self.port: int | None = None
        self.http_port: int | None = None

    def _model_changed(self, name: str, ready: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        self.health.set(name, status)

    def start(self) -> int:
        cfg = self.config
        self.engine.start()
        address = f"{cfg.host}:{cfg.grpc_port}"
        if cfg.tls_cert is not None and cfg.tls_key is not None:
            tls = TlsFiles(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
            self.port = self.grpc.add_secure_port(address, tls.credentials())
        else:
            self.port = self.grpc.add_insecure_port(address)
            if cfg.host not in ("127.0.0.1", "localhost", "::1"):
                log.warning("gRPC on %s is plain text%s: use --tls-cert/--tls-key off a trusted network",
                            address, "" if cfg.auth_token_file else " and needs no token")
        if self.port == 0:
            raise OSError(f"could not bind gRPC to {cfg.host}:{cfg.grpc_port}")
        if cfg.http_port is not None:
            self.http_port = self.metrics.serve(cfg.host, cfg.http_port)
        for svc in ("", OIP_SERVICE, DETECTION_SERVICE):
            self.health.set(svc, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.grpc.start()
        if cfg.model_control_mode == "all":
            self.repository.load_all()
        else:
            self.repository.load_all(cfg.load_models)
        self.servicer.ready = True
        for svc in ("", OIP_SERVICE, DETECTION_SERVICE):
            self.health.set(svc, health_pb2.HealthCheckResponse.SERVING)
        log.info("Peregrine %s serving gRPC%s on %s:%d%s%s", peregrine_version(),
                 " (mutual TLS)" if cfg.tls_client_ca else " (TLS)" if cfg.tls_cert else "", cfg.host, self.port,
                 ", bearer tokens required" if cfg.auth_token_file else "",
                 f", metrics on :{self.http_port}" if self.http_port else "")
        return self.port

    def stop(self, grace: float = 5.0) -> None:
        """Stop taking calls, let running ones finish within ``grace`` seconds, unload models, unmap the
        clients' shared-memory regions."""
        self.servicer.ready = False
        self.health.enter_graceful_shutdown()
        self.grpc.stop(grace).wait()
        self.repository.unload_all()
        self.metrics.close()
        self.engine.stop()
        self.shared_memory.close()
        self.tracer.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def wait(self) -> None:
        self.grpc.wait_for_termination()
