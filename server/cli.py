"""``peregrine-server``: start a server on a model repository."""

from __future__ import annotations

import argparse
import contextlib
import logging
import resource
import signal
import sys
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .config.server import ServerConfig
from .observability import logs

MIB = 1024 * 1024
EXIT_USAGE = 2


def _version() -> str:
    try:
        return version("peregrine")
    except PackageNotFoundError:
        return "unknown"


def missing_runtime() -> str | None:
    """What to print when ONNX Runtime cannot be imported: it comes with an extra, ``[cpu]`` or ``[gpu]``,
    which a plain ``pip install peregrine`` leaves out. None when it imports."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return (f"peregrine-server: ONNX Runtime is not installed ({e}); install the server with its runtime: "
                "pip install 'peregrine[cpu]', or 'peregrine[gpu]' on an NVIDIA GPU")
    return None


def _boolean(text: str) -> bool:
    """A Triton-style boolean option value: ``--allow-metrics=false``."""
    value = {"true": True, "1": True, "on": True, "yes": True,
             "false": False, "0": False, "off": False, "no": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")
    return value


def _key_value(text: str) -> tuple[str, str]:
    """``--metrics-config key=value``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got '{text}'")
    return key.strip(), value.strip().strip('"')


def _parser() -> argparse.ArgumentParser:
    d = ServerConfig()
    p = argparse.ArgumentParser(prog="peregrine-server", description=__doc__)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    p.add_argument("--model-repository", type=Path, default=d.model_repository, help="models directory")
    p.add_argument("--host", default=d.host, help="address to bind (default %(default)s)")
    p.add_argument("--grpc-port", type=int, default=d.grpc_port, help="gRPC port; 0 picks one (default %(default)s)")
    p.add_argument("--http-port", type=int, default=d.http_port,
                   help="HTTP port: OIP REST (KServe v2, Triton's HTTP API), /v1/detect and Prometheus "
                        "/metrics; 0 picks one, -1 disables (default %(default)s)")
    p.add_argument("--max-message-mb", type=int, default=d.max_message_bytes // (1024 * 1024),
                   help="largest gRPC message in MiB, both directions, and largest HTTP request body "
                        "(default %(default)s)")
    p.add_argument("--http-max-input-size", type=int, default=d.http_max_input_bytes, metavar="BYTES",
                   help="largest HTTP request body in bytes, before and after Content-Encoding (Triton's "
                        "option; at most --max-message-mb) (default %(default)s)")
    p.add_argument("--max-decoded-mb-in-flight", type=int, default=d.max_decoded_bytes_in_flight // (1024 * 1024),
                   help="MiB of decoded frames that detection requests hold at once; more answer "
                        "RESOURCE_EXHAUSTED (default %(default)s)")
    p.add_argument("--repository-poll-secs", type=float, default=d.repository_poll_s, metavar="SECONDS",
                   help="poll mode: how often the repository is rescanned (default %(default)s)")
    p.add_argument("--model-memory-budget-mb", type=int, default=d.model_memory_budget_bytes // MIB, metavar="MB",
                   help="model weights held at once; loading past it unloads the least recently used idle "
                        "models first (docs/LIFECYCLE.md); 0: no budget (default %(default)s)")
    p.add_argument("--model-control-mode", choices=["all", "explicit", "poll"], default=d.model_control_mode,
                   help="'all' loads every model at start-up; 'explicit' only those given by --load-model")
    p.add_argument("--load-model", action="append", default=[], help="model to load at start-up (explicit mode)")
    p.add_argument("--no-shared-memory", dest="shared_memory", action="store_false",
                   help="turn off the shared-memory extension (its calls answer UNIMPLEMENTED)")
    p.add_argument("--shm-key-prefix", action="append", default=[], metavar="PREFIX",
                   help="accept only system shared-memory keys starting with PREFIX (repeatable; "
                        "default: any key; see docs/SHARED_MEMORY.md)")
    p.add_argument("--max-shm-regions", type=int, default=d.max_shm_regions, metavar="N",
                   help="most shared-memory regions registered at once; more answer RESOURCE_EXHAUSTED "
                        "(default %(default)s, and at most half the open-file limit)")
    p.add_argument("--response-cache-mb", type=int, default=d.response_cache_bytes // MIB, metavar="MB",
                   help="response cache for models with response_cache on (docs/CACHE.md); 0 turns it off "
                        "(default %(default)s)")
    lim = p.add_argument_group("limits (docs/SECURITY.md)")
    lim.add_argument("--max-inflight-mb", type=int, default=d.max_inflight_bytes // MIB,
                     help="bytes of requests read and not yet answered, all clients (default %(default)s)")
    lim.add_argument("--max-inflight-mb-per-connection", type=int, default=d.max_inflight_bytes_per_connection // MIB,
                     help="the same, per connection (default %(default)s)")
    lim.add_argument("--max-stream-mb", type=int, default=d.max_stream_bytes // MIB,
                     help="bytes one stream holds: messages read and their results until answered "
                          "(default %(default)s)")
    lim.add_argument("--max-streams", type=int, default=d.max_streams, help="streams open (default %(default)s)")
    lim.add_argument("--max-streams-per-connection", type=int, default=d.max_streams_per_connection,
                     help="streams open per connection (default %(default)s)")
    lim.add_argument("--max-calls-per-connection", type=int, default=d.max_calls_per_connection,
                     help="calls at once per connection, HTTP/2 MAX_CONCURRENT_STREAMS (default %(default)s)")
    lim.add_argument("--max-connections", type=int, default=d.max_connections,
                     help="connections open at once on each port; 0: a third of the descriptor limit, at most 4096 "
                          "(default)")
    lim.add_argument("--rate-limit", type=float, default=d.rate_limit, metavar="RPS",
                     help="requests a second per client (bearer token, else address); 0: none (default)")
    lim.add_argument("--rate-burst", type=int, default=d.rate_burst,
                     help="requests at once above the rate (default: one second's worth)")
    lim.add_argument("--decode-threads", type=int, default=d.decode_threads,
                     help="threads decoding images (default: one per core, at least 2)")
    p.add_argument("--shutdown-grace", type=float, default=d.shutdown_grace_s, metavar="SECONDS",
                   help="on SIGTERM/SIGINT, let running calls and streams finish this long (default %(default)s)")
    sec = p.add_argument_group("security (docs/SECURITY.md)")
    sec.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve gRPC over TLS")
    sec.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    sec.add_argument("--tls-client-ca", type=Path,
                     help="PEM CA bundle: require client certificates signed by it (mutual TLS)")
    sec.add_argument("--auth-token-file", type=Path,
                     help="bearer tokens, one per line: calls must send 'authorization: Bearer <token>'")
    sec.add_argument("--auth-open", action="append", metavar="CATEGORY",
                     help="call category that needs no token (repeatable; default: health); one of "
                          "health, metadata, inference, shared-memory, model-config, model-repository, "
                          "statistics, trace, logging")
    tr = p.add_argument_group("tracing (Triton's trace extension; settings change at run time over TraceSetting)")
    tr.add_argument("--trace-file", type=Path, help="write sampled request traces (Triton's JSON) to this file")
    tr.add_argument("--trace-level", choices=["OFF", "TIMESTAMPS"], default=d.trace_level,
                    help="OFF or TIMESTAMPS (default %(default)s)")
    tr.add_argument("--trace-rate", type=int, default=d.trace_rate, help="trace one request in N (default %(default)s)")
    tr.add_argument("--trace-count", type=int, default=d.trace_count,
                    help="stop after N traces; -1: no limit (default %(default)s)")
    tr.add_argument("--trace-log-frequency", type=int, default=d.trace_log_frequency,
                    help="write every N traces to FILE.<k>; 0: all to FILE at shutdown (default %(default)s)")
    ot = p.add_argument_group("OpenTelemetry (docs/OBSERVABILITY.md)")
    ot.add_argument("--otel-exporter", choices=["off", "otlp-http", "otlp-grpc", "console"], default=d.otel_exporter,
                    help="export a span per request and per stage (default %(default)s)")
    ot.add_argument("--otel-endpoint", default=d.otel_endpoint, metavar="URL",
                    help="the collector (default: the exporter's own, e.g. http://localhost:4318/v1/traces)")
    ot.add_argument("--otel-sample-ratio", type=float, default=d.otel_sample_ratio, metavar="R",
                    help="share of requests traced when the client sends no trace context (default %(default)s)")
    ot.add_argument("--otel-service-name", default=d.otel_service_name, help="service.name (default %(default)s)")
    me = p.add_argument_group("metrics (Prometheus /metrics on the HTTP port; docs/METRICS.md)")
    me.add_argument("--allow-metrics", type=_boolean, nargs="?", const=True, default=d.allow_metrics,
                    metavar="BOOL", help="serve /metrics; false: it answers 404 (default true)")
    me.add_argument("--allow-gpu-metrics", type=_boolean, nargs="?", const=True, default=d.allow_gpu_metrics,
                    metavar="BOOL", help="Triton's GPU families, read through NVML (nvidia-ml-py) when a GPU is "
                                         "present (default true)")
    me.add_argument("--metrics-config", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                    help="Triton's metric settings (repeatable): summary_latencies=true (latency summaries), "
                         "histogram_latencies=true (first-response histogram), counter_latencies=false, "
                         "summary_quantiles=0.5:0.05,0.99:0.001")
    dr = p.add_argument_group("drift of inputs and outputs (docs/OBSERVABILITY.md)")
    dr.add_argument("--drift-sample-rate", type=float, default=d.drift_sample_rate, metavar="SHARE",
                    help="share of detection frames sketched for drift, 0..1 (default %(default)s: off)")
    dr.add_argument("--drift-window", type=int, default=d.drift_window, metavar="FRAMES",
                    help="sampled frames per window compared with the reference (default %(default)s)")
    dr.add_argument("--drift-threshold", type=float, default=d.drift_threshold, metavar="PSI",
                    help="a feature's PSI over this logs a warning (default %(default)s)")
    dr.add_argument("--drift-baseline", action="append", default=[], metavar="MODEL=FILE",
                    help="a model's reference sketch (peregrine drift baseline); default: its first window")
    dr.add_argument("--drift-dir", type=Path, default=d.drift_dir, metavar="DIR",
                    help="write each window's sketch there, for peregrine drift report")
    jb = p.add_argument_group("asynchronous jobs (docs/JOBS.md)")
    jb.add_argument("--job-spool", type=Path, default=d.job_spool, metavar="DIR",
                    help="serve peregrine.v1.JobService, keeping job records, payloads and results in DIR "
                         "(default: off)")
    jb.add_argument("--job-input-root", action="append", default=[], metavar="DIR|URL",
                    help="a directory whose files jobs may name as input_location or in an image list, or an "
                         "s3://bucket/prefix whose objects they may name as input_location (repeat)")
    jb.add_argument("--job-max-payload-mb", type=int, default=d.job_max_payload_bytes // MIB,
                    help="largest payload (default %(default)s)")
    jb.add_argument("--job-quota-mb", type=int, default=d.job_quota_bytes // MIB,
                    help="payloads and results in the spool, all jobs (default %(default)s)")
    jb.add_argument("--job-result-ttl", type=float, default=d.job_result_ttl_s, metavar="SECONDS",
                    help="how long an ended job and its result are kept (default %(default)s)")
    jb.add_argument("--job-time-limit", type=int, default=d.job_time_limit_s, metavar="SECONDS",
                    help="a job's default time limit (default %(default)s)")
    jb.add_argument("--job-workers", type=int, default=d.job_workers, help="jobs run at once (default %(default)s)")
    jb.add_argument("--job-items-in-flight", type=int, default=d.job_items_in_flight,
                    help="items of one job queued at once (default %(default)s)")
    jb.add_argument("--job-store", default=d.job_store, metavar="URL",
                    help="job records in PostgreSQL (postgresql://...), shared by several servers with one spool "
                         "(default: SQLite in the spool, one server)")
    jb.add_argument("--job-objects", default=d.job_objects, metavar="URL",
                    help="payloads and results in this object store, file:///dir or s3://bucket/prefix (S3 "
                         "credentials from the AWS_* environment variables), shared by the servers of one "
                         "--job-store; the spool keeps only working files (default: the spool)")
    jb.add_argument("--job-s3-endpoint", default=d.job_s3_endpoint, metavar="URL",
                    help="an S3-compatible server's endpoint, e.g. http://minio:9000, for --job-objects and s3:// "
                         "input roots (default: AWS, or AWS_ENDPOINT_URL)")
    jb.add_argument("--job-object-part-mb", type=int, default=d.job_object_part_bytes // MIB,
                    help="an upload goes to the object store in parts of this size (default %(default)s)")
    jb.add_argument("--job-webhook-secret-file", type=Path, default=d.job_webhook_secret_file, metavar="FILE",
                    help="sign job webhooks (HMAC-SHA256) with the secret in FILE; needed for notify_url")
    jb.add_argument("--job-webhook-allow", action="append", default=[], metavar="URL_PREFIX",
                    help="a URL prefix jobs may send their webhook to, e.g. https://hooks.example.com/ (repeat)")
    jb.add_argument("--job-lease", type=float, default=d.job_lease_s, metavar="SECONDS",
                    help="a running job's lease: another server takes over a job whose lease ran out "
                         "(default %(default)s)")
    p.add_argument("--strict-readiness", action=argparse.BooleanOptionalAction, default=d.strict_readiness,
                   help="ready only while every model asked for is ready, as Triton (default: on)")
    p.add_argument("--exit-on-error", action=argparse.BooleanOptionalAction, default=d.exit_on_error,
                   help="stop (exit 1) when a model fails to load at start-up (default: off: it is served "
                        "UNAVAILABLE with its reason)")
    p.add_argument("--strict-model-config", action=argparse.BooleanOptionalAction, default=d.strict_model_config,
                   help="a config.pbtxt field with no Peregrine equivalent is a load error naming it (default: "
                        "off: such fields are listed in one WARNING line and the model loads)")
    p.add_argument("--check-repository", type=Path, metavar="DIR",
                   help="check every model directory of DIR (configuration, versions, model files, ONNX graphs) "
                        "without serving; one line per directory; exit 0 when all pass, 1 otherwise")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-format", default="text", choices=["text", "json"],
                   help="text lines, or one JSON object per line (docs/OBSERVABILITY.md) (default %(default)s)")
    return p


def parse_args(argv: list[str] | None = None) -> ServerConfig:
    return _config(_parser().parse_args(argv))


def _config(a: argparse.Namespace) -> ServerConfig:
    logs.configure(a.log_level, a.log_format)
    return ServerConfig(
        model_repository=a.model_repository,
        host=a.host,
        grpc_port=a.grpc_port,
        http_port=None if a.http_port < 0 else a.http_port,
        max_message_bytes=a.max_message_mb * 1024 * 1024,
        http_max_input_bytes=a.http_max_input_size,
        max_decoded_bytes_in_flight=a.max_decoded_mb_in_flight * 1024 * 1024,
        max_inflight_bytes=a.max_inflight_mb * MIB,
        max_inflight_bytes_per_connection=a.max_inflight_mb_per_connection * MIB,
        max_stream_bytes=a.max_stream_mb * MIB,
        max_streams=a.max_streams,
        max_streams_per_connection=a.max_streams_per_connection,
        max_calls_per_connection=a.max_calls_per_connection,
        max_connections=a.max_connections,
        rate_limit=a.rate_limit,
        rate_burst=a.rate_burst,
        decode_threads=a.decode_threads,
        shutdown_grace_s=a.shutdown_grace,
        model_control_mode=a.model_control_mode,
        repository_poll_s=a.repository_poll_secs,
        model_memory_budget_bytes=a.model_memory_budget_mb * MIB,
        strict_readiness=a.strict_readiness,
        exit_on_error=a.exit_on_error,
        strict_model_config=a.strict_model_config,
        load_models=a.load_model,
        shared_memory=a.shared_memory,
        shm_key_prefixes=tuple(a.shm_key_prefix),
        max_shm_regions=a.max_shm_regions,
        response_cache_bytes=a.response_cache_mb * MIB,
        otel_exporter=a.otel_exporter,
        otel_endpoint=a.otel_endpoint,
        otel_sample_ratio=a.otel_sample_ratio,
        otel_service_name=a.otel_service_name,
        allow_metrics=a.allow_metrics,
        allow_gpu_metrics=a.allow_gpu_metrics,
        metrics_config=dict(a.metrics_config),
        tls_cert=a.tls_cert,
        tls_key=a.tls_key,
        tls_client_ca=a.tls_client_ca,
        auth_token_file=a.auth_token_file,
        auth_open=tuple(a.auth_open) if a.auth_open is not None else ("health",),
        trace_file=a.trace_file,
        trace_level=a.trace_level,
        trace_rate=a.trace_rate,
        trace_count=a.trace_count,
        trace_log_frequency=a.trace_log_frequency,
        drift_sample_rate=a.drift_sample_rate,
        drift_window=a.drift_window,
        drift_threshold=a.drift_threshold,
        drift_baselines=tuple(a.drift_baseline),
        drift_dir=a.drift_dir,
        job_spool=a.job_spool,
        job_input_roots=tuple(Path(r) for r in a.job_input_root if not r.startswith("s3://")),
        job_input_prefixes=tuple(r for r in a.job_input_root if r.startswith("s3://")),
        job_max_payload_bytes=a.job_max_payload_mb * MIB,
        job_quota_bytes=a.job_quota_mb * MIB,
        job_result_ttl_s=a.job_result_ttl,
        job_time_limit_s=a.job_time_limit,
        job_workers=a.job_workers,
        job_items_in_flight=a.job_items_in_flight,
        job_store=a.job_store,
        job_lease_s=a.job_lease,
        job_objects=a.job_objects,
        job_s3_endpoint=a.job_s3_endpoint,
        job_object_part_bytes=a.job_object_part_mb * MIB,
        job_webhook_secret_file=a.job_webhook_secret_file,
        job_webhook_allow=tuple(a.job_webhook_allow),
    )


def check_repository(root: Path, strict: bool) -> int:
    """Print one line per directory of the repository at ``root``; 0 when every one passes, else 1."""
    from .dataplane.check import check_repository as check

    if not root.is_dir():
        print(f"peregrine-server: model repository {root} is not a directory", file=sys.stderr)
        return 2
    results = check(root, strict)
    for r in results:
        print(r.line())
    failed = sum(r.status == "FAIL" for r in results)
    print(f"{len(results)} director{'y' if len(results) == 1 else 'ies'} checked, {failed} failed")
    return 1 if failed else 0


def raise_open_file_limit() -> None:
    """Raise the soft open-file limit to the hard one, as nginx and Envoy deployments do: every connection,
    stream and shared-memory region holds a descriptor, and the bounds on them (docs/SECURITY.md) are meant
    to be reached before the limit is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    missing = missing_runtime()
    if missing is not None:
        print(missing, file=sys.stderr)
        return EXIT_USAGE
    # Imported here, after the check: the server's modules import ONNX Runtime as they load.
    from .app import PeregrineServer, StartupError

    if a.check_repository is not None:
        logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
        return check_repository(a.check_repository, a.strict_model_config)
    try:
        config = _config(a)
    except ValueError as e:
        print(f"peregrine-server: {e}", file=sys.stderr)
        return 2
    if not config.model_repository.is_dir():
        print(f"peregrine-server: model repository {config.model_repository} is not a directory", file=sys.stderr)
        return 2
    raise_open_file_limit()
    try:
        server = PeregrineServer(config)
    except (ValueError, OSError) as e:
        print(f"peregrine-server: {e}", file=sys.stderr)
        return 2
    try:
        server.start()
    except OSError as e:  # a port in use, an address not this machine's
        print(f"peregrine-server: {e}", file=sys.stderr)
        return 2
    except StartupError as e:
        print(f"peregrine-server: {e}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=config.shutdown_grace_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
