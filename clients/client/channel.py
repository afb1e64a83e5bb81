"""How a client reaches the server: channel options, TLS, bearer token, deadlines and retries.

Retries are gRPC's own (a ``retryPolicy`` in the channel's service config): exponential backoff with jitter,
on ``UNAVAILABLE`` only, and only for the calls listed in :data:`RETRIED_METHODS`. OIP inference, load and
unload are never retried: an OIP model may keep state (sequence batching) so a retried infer could change it
twice, and a load/unload changes the repository. ``peregrine.v1.DetectionService/Detect`` is retried: a
detection pipeline is stateless and changes nothing, so a second attempt can only cost compute, and every
attempt stays within the call's deadline. ``DetectStream`` is never retried (a stream cannot be replayed).
``RetryPolicy(retry_inference=True)`` retries ``ModelInfer`` too, for models that keep no state (most): with
several replicas, a call cut off by a replica's death goes to another.

**Several replicas.** A client may name several servers: a list of addresses (``["10.0.0.5:8001",
"10.0.0.6:8001"]``, or the same comma-separated) or a ``dns:///name:port`` target whose name resolves to
several addresses (a Kubernetes headless Service). Calls are then spread over them round-robin (gRPC's
``round_robin`` policy, on the client: no proxy in the path), a replica that goes away is skipped, and one
that comes back is used again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

OIP_SERVICE = "inference.GRPCInferenceService"
DETECTION_SERVICE = "peregrine.v1.DetectionService"
MAX_MESSAGE_BYTES = 512 * 1024 * 1024
DEFAULT_DEADLINE_S = 30.0
# gRPC keeps a call's request for a retry only up to this size (its default is 256 KiB, less than one camera
# frame): a larger request is sent once. 64 MiB covers raw 4K frames; the copy lives until the call ends.
RETRY_BUFFER_BYTES = 64 * 1024 * 1024

# Calls that read state and change nothing: safe to send again after UNAVAILABLE. (Not CudaSharedMemoryStatus:
# a server without a GPU answers it UNAVAILABLE for good, and retrying would only add the backoff.)
IDEMPOTENT_METHODS = (
    "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelConfig",
    "ModelStatistics", "RepositoryIndex", "SystemSharedMemoryStatus",
)
# Every call retried on UNAVAILABLE, by service: the OIP reads above and the stateless Detect.
RETRIED_METHODS: dict[str, tuple[str, ...]] = {
    OIP_SERVICE: IDEMPOTENT_METHODS,
    DETECTION_SERVICE: ("Detect",),
}


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of idempotent calls on UNAVAILABLE.

    The n-th retry waits a random time in [0, min(initial_backoff_s * multiplier**(n-1), max_backoff_s)]
    seconds (gRPC's jittered exponential backoff). ``max_attempts`` counts the first try; gRPC allows 2..5,
    1 disables retries. All attempts together stay within the call's deadline."""

    max_attempts: int = 5
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    backoff_multiplier: float = 2.0
    retry_inference: bool = False  # ModelInfer too: only for models that keep no state between requests

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 5:
            raise ValueError(f"max_attempts: gRPC allows 1 (no retries) to 5, got {self.max_attempts}")
        if self.initial_backoff_s <= 0 or self.max_backoff_s <= 0 or self.backoff_multiplier <= 0:
            raise ValueError("initial_backoff_s, max_backoff_s and backoff_multiplier must be positive")


NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass(frozen=True)
class TlsOptions:
    """TLS for the channel, PEM bytes. ``root_certificates`` None uses the system's roots; give
    ``private_key`` and ``certificate_chain`` together for mutual TLS. ``server_name_override`` checks the
    server's certificate against that name instead of the target's host (tests, IP targets)."""

    root_certificates: bytes | None = None
    private_key: bytes | None = None
    certificate_chain: bytes | None = None
    server_name_override: str | None = None

    def __post_init__(self) -> None:
        if (self.private_key is None) != (self.certificate_chain is None):
            raise ValueError("TLS client authentication needs both private_key and certificate_chain")

    @classmethod
    def from_files(cls, ca: str | Path | None = None, cert: str | Path | None = None,
                   key: str | Path | None = None, server_name_override: str | None = None) -> TlsOptions:
        """Read PEM files. Raises OSError when a file cannot be read."""

        def read(p: str | Path | None) -> bytes | None:
            return None if p is None else Path(p).read_bytes()

        return cls(read(ca), read(key), read(cert), server_name_override)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.root_certificates, self.private_key, self.certificate_chain)


@dataclass(frozen=True)
class ChannelSettings:
    """Everything a client needs to open a channel and make calls.

    ``deadline_s``: the deadline of a call that names none, in seconds (None: no deadline);
    ``token``: sent as ``authorization: Bearer <token>`` on every call; ``headers``: more call metadata;
    ``max_message_bytes``: largest message either way; ``channel_options``: extra gRPC channel arguments."""

    target: str = "127.0.0.1:8001"
    tls: TlsOptions | None = None
    token: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    deadline_s: float | None = DEFAULT_DEADLINE_S
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_message_bytes: int = MAX_MESSAGE_BYTES
    channel_options: Sequence[tuple[str, Any]] = ()

    @classmethod
    def of(cls, url: str | Sequence[str], tls: TlsOptions | None, token: str | None, headers: Mapping[str, str] | None,
           deadline_s: float | None, retry: RetryPolicy | None, max_message_bytes: int,
           channel_options: Sequence[tuple[str, Any]]) -> ChannelSettings:
        """Settings from the clients' constructor arguments (None headers and retry: the defaults)."""
        return cls(grpc_target(url), tls, token, dict(headers or {}), deadline_s, retry or RetryPolicy(),
                   max_message_bytes, tuple(channel_options))

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", grpc_target(self.target))  # "a:1,b:2" as gRPC spells it
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ValueError(f"deadline_s: expected a positive number of seconds or None, got {self.deadline_s}")

    def options(self) -> list[tuple[str, Any]]:
        opts: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.enable_retries", 1),
            ("grpc.per_rpc_retry_buffer_size", RETRY_BUFFER_BYTES),
            ("grpc.service_config", service_config(self.retry, balanced=balanced(self.target))),
        ]
        if self.tls is not None and self.tls.server_name_override:
            opts.append(("grpc.ssl_target_name_override", self.tls.server_name_override))
        opts.extend(self.channel_options)
        return opts

    def metadata(self) -> tuple[tuple[str, str], ...]:
        md = [(k.lower(), v) for k, v in self.headers.items()]
        if self.token:
            md.append(("authorization", f"Bearer {self.token}"))
        return tuple(md)

    def timeout(self, deadline_s: float | None) -> float | None:
        """The gRPC ``timeout`` of one call: ``deadline_s`` if given (``math.inf``: none), else the default.

        Raises ValueError for a deadline that is not positive."""
        d = self.deadline_s if deadline_s is None else deadline_s
        if d is None or math.isinf(d):
            return None
        if not d > 0:
            raise ValueError(f"deadline_s: expected a positive number of seconds, got {d}")
        return d

    def channel(self) -> grpc.Channel:
        if self.tls is None:
            return grpc.insecure_channel(self.target, options=self.options())
        return grpc.secure_channel(self.target, self.tls.credentials(), options=self.options())

    def aio_channel(self) -> grpc.aio.Channel:
        if self.tls is None:
            return grpc.aio.insecure_channel(self.target, options=self.options())
        return grpc.aio.secure_channel(self.target, self.tls.credentials(), options=self.options())


# gRPC's target schemes (its naming docs); a target with one of them is the user's to spell.
SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:")


def grpc_target(url: str | Sequence[str]) -> str:
    """The gRPC target of one address, a list of them (or a comma-separated string), or a ``scheme:`` target
    as it is. Several addresses must be IP literals (``ipv4:``/``ipv6:`` lists); names go in ``dns:///``."""
    if isinstance(url, str) and url.strip().startswith(SCHEMES):
        return url.strip()
    addresses = [a.strip() for a in (url.split(",") if isinstance(url, str) else url) if a.strip()]
    if not addresses:
        raise ValueError("url: expected a server address, got none")
    if len(addresses) == 1:
        return addresses[0]
    if any(a.startswith("[") for a in addresses):
        return "ipv6:" + ",".join(addresses)
    for a in addresses:
        host = a.rsplit(":", 1)[0]
        if not host.replace(".", "").isdigit():
            raise ValueError(f"url: several addresses must be IP:port ({a!r} is not); for a name that resolves to "
                             "several servers use dns:///name:port")
    return "ipv4:" + ",".join(addresses)


def balanced(target: str) -> bool:
    """Whether a target may resolve to several servers (calls are then spread round-robin)."""
    return target.startswith(("ipv4:", "ipv6:", "dns:"))


def service_config(retry: RetryPolicy, balanced: bool = False) -> str:
    """The channel's service config (JSON): the retry policy on the methods of :data:`RETRIED_METHODS` (and
    ModelInfer when ``retry.retry_inference``); round-robin over the addresses when ``balanced``."""
    config: dict[str, Any] = {"methodConfig": []}
    if balanced:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
    if retry.max_attempts > 1:
        retried = {service: methods + (("ModelInfer",) if service == OIP_SERVICE and retry.retry_inference else ())
                   for service, methods in RETRIED_METHODS.items()}
        config["methodConfig"].append({
            "name": [{"service": service, "method": m} for service, methods in retried.items() for m in methods],
            "retryPolicy": {
                "maxAttempts": retry.max_attempts,
                "initialBackoff": f"{retry.initial_backoff_s:.6f}s",
                "maxBackoff": f"{retry.max_backoff_s:.6f}s",
                "backoffMultiplier": retry.backoff_multiplier,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        })
    return json.dumps(config)
