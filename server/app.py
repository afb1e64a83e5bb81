"""Assembles a Peregrine server: event loop, model repository, shared memory, tracing, metrics, the data
plane over them, and the transports over the data plane."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .config.server import ServerConfig
from .dataplane.admission import Limits
from .dataplane.cache import ResponseCache
from .dataplane.dataplane import DataPlane
from .dataplane.lifecycle import Lifecycle
from .dataplane.repository import ModelRepository
from .dataplane.shm import SharedMemoryRegistry
from .jobs.service import JobService, JobSettings
from .jobs.store import JobStore, PostgresJobStore, SqliteJobStore
from .jobs.webhooks import Webhooks
from .observability import drift
from .observability.drift import DriftCollector, DriftMonitor, DriftSettings
from .observability.gpu_metrics import open_gpus
from .observability.lifecycle_metrics import LifecycleCollector
from .observability.metrics import Metrics, ModelSample
from .observability.otel import OtelTracing
from .observability.tracing import Tracer
from .observability.triton_metrics import MetricsSettings
from .pipeline import images
from .scheduling.loop import EventLoopThread
from .transport.grpc.server import GrpcTransport
from .transport.http.server import HttpTransport

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The server could not start as configured (a model failed to load under --exit-on-error)."""


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


def limits_of(config: ServerConfig) -> Limits:
    return Limits(max_inflight_bytes=config.max_inflight_bytes,
                  max_inflight_bytes_per_connection=config.max_inflight_bytes_per_connection,
                  max_stream_bytes=config.max_stream_bytes, max_streams=config.max_streams,
                  max_streams_per_connection=config.max_streams_per_connection, rate=config.rate_limit,
                  burst=config.rate_burst)


class PeregrineServer:
    """A running server. ``start()`` binds and returns the gRPC port; ``stop()`` drains and closes."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        metrics_settings = MetricsSettings.parse(config.metrics_config)  # ValueError before anything starts
        hooks = webhooks(config)  # likewise
        drift_settings = drift_settings_of(config)  # likewise
        # One budget per process for decoded frames held by requests (docs/DETECTION.md, Limits).
        images.set_max_decoded_bytes_in_flight(config.max_decoded_bytes_in_flight)
        self.loop = EventLoopThread()
        self.repository = ModelRepository(config.model_repository, self.loop, on_change=self._model_changed,
                                          strict_model_config=config.strict_model_config)
        self.lifecycle = Lifecycle(self.repository, budget_bytes=config.model_memory_budget_bytes,
                                   poll_s=config.repository_poll_s if config.model_control_mode == "poll" else 0.0)
        self.metrics = Metrics(lambda: [ModelSample(m.name, m.version, m.stats, m.queue_depth,
                                                    m.config.response_cache and self.dataplane.cache.enabled)
                                        for m in self.repository.ready_models()],
                               known=self.repository.knows, settings=metrics_settings,
                               gpus=open_gpus() if config.allow_metrics and config.allow_gpu_metrics else None,
                               enabled=config.allow_metrics)
        self.shared_memory = SharedMemoryRegistry(config.shm_key_prefixes, enabled=config.shared_memory,
                                                  max_regions=config.max_shm_regions)
        self.tracer = Tracer(config.trace_file, config.trace_level, config.trace_rate, config.trace_count,
                             config.trace_log_frequency)
        self.drift = DriftMonitor(drift_settings) if drift_settings.sample_rate > 0 else None
        self.dataplane = DataPlane(self.repository, self.loop, self.shared_memory, self.tracer, self.metrics,
                                   name=config.server_name, version=peregrine_version(), kernel_tier=kernel_tier(),
                                   strict_readiness=config.strict_readiness, limits=limits_of(config),
                                   decode_threads=config.decode_threads,
                                   cache=ResponseCache(config.response_cache_bytes), lifecycle=self.lifecycle,
                                   otel=otel_tracing(config), drift_monitor=self.drift)
        self.metrics.admission = self.dataplane.admission
        if self.drift is not None:
            self.metrics.registry.register(DriftCollector(self.drift))
            drift.install(self.drift)
        self.metrics.registry.register(LifecycleCollector(self.lifecycle, self.repository.ready_models,
                                                          self.dataplane.cache, self.dataplane.ladders))
        self.jobs = job_service(config, self.dataplane, hooks)
        self.grpc = GrpcTransport(config, self.dataplane, self.loop, self.jobs)
        self.http = (HttpTransport(config, self.dataplane, self.loop, self.jobs) if config.http_port is not None
                     else None)
        self.port: int | None = None
        self.http_port: int | None = None

    def _model_changed(self, name: str, ready: bool) -> None:
        self.dataplane.cache.drop_model(name)  # answers of a version that is gone, or reloaded, are stale
        if ready:  # its latency summaries start now, not at the next scrape (when they are on)
            for m in self.repository.ready_models():
                if m.name == name:
                    self.metrics.track(m.stats)
        self.grpc.model_changed(name, ready)
        if self.dataplane.started:
            self.grpc.set_serving(self.dataplane.ready)  # the server's own health follows its readiness

    def start(self) -> int:
        cfg = self.config
        self.loop.start()
        try:
            self.port = self.grpc.bind()
            if self.http is not None:
                try:
                    self.http_port = self.http.bind()
                except OSError as e:
                    raise OSError(f"cannot listen for HTTP on {cfg.host}:{cfg.http_port}: {e.strerror or e} "
                                  "(--http-port; -1 turns the HTTP port off)") from None
        except OSError:
            self.stop(grace=0)
            raise
        self.grpc.start()
        if self.http is not None:
            self.http.start()
        failed = self.repository.load_all(cfg.load_models if cfg.model_control_mode == "explicit" else None)
        if failed and cfg.exit_on_error:
            self.stop(grace=0)
            raise StartupError(f"model(s) {', '.join(failed)} failed to load (--exit-on-error); see the log")
        self.loop.run(_started(self.lifecycle))
        if self.jobs is not None:
            self.loop.run(self.jobs.start())  # jobs a previous process left queued or running go on
        self.dataplane.started = True
        self.grpc.set_serving(self.dataplane.ready)
        log.info("Peregrine %s serving gRPC%s on %s:%d%s%s", peregrine_version(),
                 " (mutual TLS)" if cfg.tls_client_ca else " (TLS)" if cfg.tls_cert else "", cfg.host, self.port,
                 ", bearer tokens required" if cfg.auth_token_file else "",
                 f", HTTP (OIP REST, /metrics) on :{self.http_port}" if self.http_port else "")
        return self.port

    def start_offline(self) -> None:
        """Load the models and run the data plane without listening on any port: for tools that run models
        in-process (``peregrine batch``). Stopped with :meth:`stop`."""
        self.loop.start()
        failed = self.repository.load_all(self.config.load_models if self.config.model_control_mode == "explicit"
                                          else None)
        if failed:
            self.stop(grace=0)
            raise StartupError(f"model(s) {', '.join(failed)} failed to load; see the log")
        self.loop.run(_started(self.lifecycle))
        self.dataplane.started = True

    def stop(self, grace: float = 5.0) -> None:
        """Drain and close: stop taking calls; let running calls, and the frames streams have read, finish
        within ``grace`` seconds (streams stop reading and end once answered), then cancel what is left;
        unload models, unmap the clients' shared-memory regions."""
        self.dataplane.started = False
        if self.loop.running:
            self.grpc.drain()
            if self.http is not None:  # both transports stop taking calls, then both finish theirs
                self.http.drain(grace)
            self.grpc.stop(grace)
            if self.http is not None:
                self.http.stop(grace)
        self.dataplane.close()  # decoding still running finishes while the loop can take its answer
        if self.loop.running:
            if self.jobs is not None:
                self.loop.run(self.jobs.stop())  # running jobs stop at their checkpoint; the next start resumes
            self.loop.run(self.lifecycle.stop())
        self.repository.unload_all()
        self.loop.stop()
        self.shared_memory.close()
        self.tracer.close()
        self.metrics.close()
        if self.drift is not None:
            drift.uninstall(self.drift)
            self.drift.close()
        if self.dataplane.otel is not None:
            self.dataplane.otel.shutdown()
        self.grpc.close()
        if self.http is not None:
            self.http.close()

    def wait(self) -> None:
        """Block until :meth:`stop` is called from another thread."""
        self.loop.join()


async def _started(lifecycle: Lifecycle) -> None:
    lifecycle.start()  # on the loop: its background task lives there


def drift_settings_of(config: ServerConfig) -> DriftSettings:
    baselines = {}
    for entry in config.drift_baselines:
        model, sep, path = entry.partition("=")
        if not sep or not model or not Path(path).is_file():
            raise ValueError(f"--drift-baseline: expected MODEL=FILE naming an existing file, got '{entry}'")
        baselines[model] = Path(path)
    return DriftSettings(config.drift_sample_rate, config.drift_window, config.drift_threshold, baselines,
                         config.drift_dir)


def webhooks(config: ServerConfig) -> Webhooks | None:
    """Job webhooks, when a secret and at least one allowed prefix are configured."""
    if config.job_webhook_secret_file is None:
        if config.job_webhook_allow:
            raise ValueError("--job-webhook-allow needs --job-webhook-secret-file (webhooks are always signed)")
        return None
    secret = config.job_webhook_secret_file.read_bytes().strip()
    if len(secret) < 16:
        raise ValueError(f"--job-webhook-secret-file: expected a secret of at least 16 bytes, got {len(secret)}")
    if not config.job_webhook_allow:
        raise ValueError("--job-webhook-secret-file: name where webhooks may go with --job-webhook-allow URL_PREFIX")
    return Webhooks(secret, config.job_webhook_allow)


def job_service(config: ServerConfig, dataplane: DataPlane, hooks: Webhooks | None) -> JobService | None:
    """The asynchronous job service, when the configuration names a spool directory."""
    if config.job_spool is None:
        if config.job_objects:
            raise ValueError("--job-objects needs --job-spool (each server's records or working files)")
        return None
    settings = JobSettings(spool=config.job_spool, max_payload_bytes=config.job_max_payload_bytes,
                           quota_bytes=config.job_quota_bytes, result_ttl_s=config.job_result_ttl_s,
                           default_time_limit_s=config.job_time_limit_s, workers=config.job_workers,
                           items_in_flight=config.job_items_in_flight, input_roots=config.job_input_roots,
                           lease_s=config.job_lease_s, webhooks=hooks, input_prefixes=config.job_input_prefixes,
                           objects_url=config.job_objects, s3_endpoint=config.job_s3_endpoint,
                           object_part_bytes=config.job_object_part_bytes)
    if config.job_store.startswith(("postgresql://", "postgres://")):
        store: JobStore = PostgresJobStore(config.job_store, config.job_spool)
    elif config.job_store:
        raise ValueError(f"--job-store: expected a postgresql:// URL (or nothing, for SQLite in the spool), got "
                         f"'{config.job_store}'")
    else:
        store = SqliteJobStore(config.job_spool)
    return JobService(dataplane, store, settings)


def otel_tracing(config: ServerConfig) -> OtelTracing | None:
    if config.otel_exporter == "off":
        return None
    return OtelTracing(config.otel_exporter, config.otel_endpoint, config.otel_service_name, config.otel_sample_ratio)
