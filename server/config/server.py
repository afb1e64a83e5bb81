"""Settings of one server process: what ``peregrine-server``'s options set."""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..security.tokens import check_categories


@dataclass
class ServerConfig:
    """Settings of one server process (see ``peregrine-server --help``)."""

    model_repository: Path = Path("models")
    host: str = "127.0.0.1"
    grpc_port: int = 8001  # 0 picks a free port; the server reports the one it bound
    http_port: int | None = 8002  # OIP REST, /v1/detect and Prometheus /metrics (docs/HTTP.md); None disables
    max_message_bytes: int = 512 * 1024 * 1024  # gRPC messages, and the ceiling of HTTP request bodies
    # HTTP request bodies (before and after Content-Encoding), as Triton's --http-max-input-size (its default):
    # a JSON body is parsed holding the interpreter, about 1 s a 500 MB, so every call of both ports waits.
    http_max_input_bytes: int = 64 * 1024 * 1024
    # Bytes of decoded frames that detection requests hold at once, from decoding until answered (with the
    # working memory of the images being decoded): a request that does not fit is RESOURCE_EXHAUSTED at once.
    max_decoded_bytes_in_flight: int = 2 * 1024 * 1024 * 1024
    # Admission (docs/SECURITY.md, "Limits"): bytes of requests read and not yet answered, all together and
    # per connection (a unary request over them is RESOURCE_EXHAUSTED at once; a stream stops reading), per
    # stream; streams open, in total and per connection; calls at once per connection (HTTP/2).
    max_inflight_bytes: int = 2048 * 1024 * 1024
    max_inflight_bytes_per_connection: int = 1024 * 1024 * 1024
    max_stream_bytes: int = 64 * 1024 * 1024
    max_streams: int = 8192
    max_streams_per_connection: int = 1024
    max_calls_per_connection: int = 4096
    # Connections open at once on each port; 0: a third of the process's descriptors, at most 4096 (see
    # connections_per_port). Past it a new connection is closed at once.
    max_connections: int = 0
    # Requests a second per client (its bearer token, else its address), token bucket; 0: no limit.
    rate_limit: float = 0.0
    rate_burst: int = 0
    # Connections with no call for this long are closed (seconds).
    max_connection_idle_s: int = 3600
    # Threads that decode images (0: one per core, at least 2).
    decode_threads: int = 0
    # On shutdown (SIGTERM): stop taking calls, let running ones and streams' read frames finish within this
    # many seconds, then cancel what is left.
    shutdown_grace_s: float = 30.0
    # "all": load every model at start-up; "explicit": load only `load_models` (and on request).
    # "all": load every model at start-up; "explicit": only `load_models`; "poll": as "all", then rescan the
    # repository every `repository_poll_s` seconds (new models load, changed ones reload, removed ones unload).
    model_control_mode: Literal["all", "explicit", "poll"] = "all"
    repository_poll_s: float = 15.0
    # Bytes of model weights held at once (estimated: model file times instances); 0: no budget. Loading past it
    # first unloads the least recently used idle models (docs/LIFECYCLE.md).
    model_memory_budget_bytes: int = 0
    load_models: list[str] = field(default_factory=list)
    server_name: str = "peregrine"
    strict_model_config: bool = False
    # Triton's --strict-readiness: the server is ready only while every model it was asked to load is ready.
    strict_readiness: bool = True
    # Triton's --exit-on-error: a model that fails to load at start-up stops the server (else it is UNAVAILABLE
    # with its reason and the others are served).
    exit_on_error: bool = False
    # Triton's shared-memory extension (docs/SHARED_MEMORY.md). Off: its calls answer UNIMPLEMENTED.
    shared_memory: bool = True
    # When not empty, clients may register only POSIX shared-memory keys whose name starts with one of these.
    shm_key_prefixes: tuple[str, ...] = ()
    # The most shared-memory regions (system and CUDA) held at once; RESOURCE_EXHAUSTED beyond. Each system
    # region holds a file descriptor, so the server also keeps it under half the open-file limit.
    max_shm_regions: int = 1024
    # The response cache (Triton's --cache-config local,size=N): bytes of answers kept for models that opt in
    # (response_cache); 0 turns it off for every model.
    response_cache_bytes: int = 64 * 1024 * 1024
    # TLS for the gRPC port (docs/SECURITY.md): PEM certificate chain and key; with `tls_client_ca`,
    # clients must present a certificate signed by that CA (mutual TLS). None: plain text.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # Bearer tokens, one per line; None: no token needed. Calls of the `auth_open` categories need none.
    auth_token_file: Path | None = None
    auth_open: tuple[str, ...] = ("health",)
    # Triton's trace extension (observability/tracing.py): where traces go, and the initial global settings.
    trace_file: Path | None = None
    trace_level: str = "OFF"
    trace_rate: int = 1000
    trace_count: int = -1
    trace_log_frequency: int = 0
    # OpenTelemetry (observability/otel.py): "off", "otlp-http", "otlp-grpc" or "console"; the collector's
    # endpoint (default: the exporter's, e.g. http://localhost:4318/v1/traces); the share of traces sampled
    # when the client's call carries none (a client's sampled trace is always continued).
    otel_exporter: str = "off"
    otel_endpoint: str | None = None
    otel_sample_ratio: float = 1.0
    otel_service_name: str = "peregrine"
    # Prometheus /metrics (docs/METRICS.md), with Triton's options: --allow-metrics (off: /metrics answers 404),
    # --allow-gpu-metrics (Triton's GPU families, through NVML), --metrics-config key=value (counter_latencies,
    # summary_latencies, histogram_latencies, summary_quantiles; checked when the server is built).
    allow_metrics: bool = True
    allow_gpu_metrics: bool = True
    metrics_config: dict[str, str] = field(default_factory=dict)
    # Drift (docs/OBSERVABILITY.md, "Drift"): the share of detection frames sampled (0: off), frames per window,
    # the PSI that logs a warning, baseline sketches per model ("model=path"), where window sketches are written.
    drift_sample_rate: float = 0.0
    drift_window: int = 500
    drift_threshold: float = 0.25
    drift_baselines: tuple[str, ...] = ()
    drift_dir: Path | None = None
    # Asynchronous jobs (docs/JOBS.md): on when `job_spool` names a directory (records, payloads, results).
    job_spool: Path | None = None
    job_input_roots: tuple[Path, ...] = ()  # where input_location paths and "images" lists may point
    job_input_prefixes: tuple[str, ...] = ()  # s3://bucket/prefix URLs whose objects input_location may name
    job_max_payload_bytes: int = 1024 ** 3
    job_quota_bytes: int = 16 * 1024 ** 3
    job_result_ttl_s: float = 24 * 3600
    job_time_limit_s: int = 3600  # a job's default time limit (a job may ask for up to 6 h)
    job_workers: int = 1
    job_items_in_flight: int = 8
    # Where job records live: "" for SQLite in the spool (one process), or a PostgreSQL URL
    # (postgresql://user@host/db) for several processes sharing one queue and a spool they all mount.
    job_store: str = ""
    job_lease_s: float = 10.0
    # Payloads and results in an object store instead of the spool (file:///dir or s3://bucket/prefix; the
    # [objectstore] extra), which several servers sharing a PostgreSQL store reach; the spool then keeps only
    # each server's working files. S3 credentials come from the AWS environment variables; the endpoint of an
    # S3-compatible server (MinIO, SeaweedFS, ...) from job_s3_endpoint (or AWS_ENDPOINT_URL). An upload goes
    # to the store in parts of job_object_part_bytes.
    job_objects: str = ""
    job_s3_endpoint: str = ""
    job_object_part_bytes: int = 8 * 1024 ** 2
    # Webhooks when jobs end: signed with the secret in this file, sent only to URLs under these prefixes.
    job_webhook_secret_file: Path | None = None
    job_webhook_allow: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate (--tls-cert) and its key (--tls-key); one was given")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        self.auth_open = check_categories(self.auth_open)
        for name in ("http_max_input_bytes", "max_inflight_bytes", "max_inflight_bytes_per_connection",
                     "max_stream_bytes", "max_streams",
                     "max_streams_per_connection", "max_calls_per_connection", "max_connection_idle_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive number, got {getattr(self, name)}")
        if self.max_connections < 0:
            raise ValueError(f"max_connections: expected 0 (the default) or more, got {self.max_connections}")
        if self.repository_poll_s <= 0 or self.model_memory_budget_bytes < 0:
            raise ValueError("repository_poll_s must be positive and model_memory_budget_bytes not negative")
        if self.response_cache_bytes < 0:
            raise ValueError(f"response_cache_bytes: expected 0 (off) or more, got {self.response_cache_bytes}")
        if self.rate_limit < 0 or self.rate_burst < 0 or self.decode_threads < 0 or self.shutdown_grace_s < 0:
            raise ValueError("rate_limit, rate_burst, decode_threads and shutdown_grace_s must not be negative")


CONNECTIONS_CEILING = 4096


def connections_per_port(config: ServerConfig) -> int:
    """Connections each port (gRPC, HTTP) keeps open at once: ``config.max_connections``, or by default a third
    of the process's descriptors (a third left for the models, the job spool and the rest), at most
    :data:`CONNECTIONS_CEILING`, at least 16."""
    if config.max_connections:
        return config.max_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return CONNECTIONS_CEILING
    return max(16, min(CONNECTIONS_CEILING, soft // 3))
