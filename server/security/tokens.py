"""Bearer tokens by call category, and files re-read when they change (tokens and certificates rotate
without a restart).

Tokens guard calls by category, the categories Triton's ``--grpc-restricted-protocol`` uses; a category
named as open needs no token (by default ``health``, so that liveness probes work). Off by default, which
suits a server bound to loopback on the robot's own computer; see docs/SECURITY.md.
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

OIP = "/inference.GRPCInferenceService/"
DETECTION = "/peregrine.v1.DetectionService/"
JOBS = "/peregrine.v1.JobService/"

# Method → category, after Triton's restricted-protocol categories.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "health": (f"{OIP}ServerLive", f"{OIP}ServerReady", f"{OIP}ModelReady", "/grpc.health.v1.Health/"),
    "metadata": (f"{OIP}ServerMetadata", f"{OIP}ModelMetadata", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/"),
    "inference": (f"{OIP}ModelInfer", f"{OIP}ModelStreamInfer", DETECTION),
    "shared-memory": (f"{OIP}SystemSharedMemory", f"{OIP}CudaSharedMemory"),
    "model-config": (f"{OIP}ModelConfig",),
    "model-repository": (f"{OIP}Repository",),
    "statistics": (f"{OIP}ModelStatistics",),
    "trace": (f"{OIP}TraceSetting",),
    "logging": (f"{OIP}LogSettings",),
    "jobs": (JOBS,),  # Peregrine's own: asynchronous jobs (docs/JOBS.md)
    "observability": (),  # Peregrine's own, HTTP only: /v1/observability (docs/OBSERVABILITY.md)
}
UNKNOWN = "other"  # a method of no category (none today) always needs a token when tokens are on


@functools.lru_cache(maxsize=256)  # a server has a few dozen methods; every guarded call asks
def category_of(method: str) -> str:
    """The category of a full gRPC method name such as ``/inference.GRPCInferenceService/ModelInfer``."""
    best, length = UNKNOWN, 0
    for category, prefixes in CATEGORIES.items():
        for prefix in prefixes:
            if method.startswith(prefix) and len(prefix) > length:  # the longest prefix wins
                best, length = category, len(prefix)
    return best


def check_categories(names: Iterable[str]) -> tuple[str, ...]:
    names = tuple(names)
    unknown = [n for n in names if n not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown call category {', '.join(map(repr, unknown))}; "
                         f"expected some of {', '.join(CATEGORIES)}")
    return names


class WatchedFile:
    """A file re-read when its modification time or size changes, checked at most once per ``interval``."""

    def __init__(self, path: Path, interval: float = 1.0) -> None:
        self.path = path
        self.interval = interval
        self._stamp = self._stat()
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def _stat(self) -> tuple[int, int]:
        st = os.stat(self.path)
        return st.st_mtime_ns, st.st_size

    def changed(self) -> bool:
        now = time.monotonic()
        if now - self._checked < self.interval:
            return False
        with self._lock:
            self._checked = now
            try:
                stamp = self._stat()
            except OSError as e:  # mid-rotation or removed: keep what we have
                log.warning("cannot stat %s (%s); keeping the loaded version", self.path, e)
                return False
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            return True


class TokenStore:
    """Bearer tokens from a file, one per line: ``<token>`` (every category) or ``<token> <category>,...``
    (only those categories: a scoped token). Blank lines and lines starting with ``#`` are skipped."""

    def __init__(self, path: Path, reload_interval: float = 1.0) -> None:
        self.path = Path(path)
        self._tokens = self._read()
        self._watch = WatchedFile(self.path, reload_interval)

    def _read(self) -> tuple[tuple[bytes, frozenset[str] | None], ...]:
        tokens = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            token, _, scope = line.partition(" ")
            categories = None
            if scope.strip():
                names = [c.strip() for c in scope.replace(" ", ",").split(",") if c.strip()]
                try:
                    categories = frozenset(check_categories(names))
                except ValueError as e:
                    raise ValueError(f"token file {self.path}, line {number}: {e}") from None
            tokens.append((token.encode(), categories))
        if not tokens:
            raise ValueError(f"token file {self.path} holds no token (one per line, '#' starts a comment)")
        return tuple(tokens)

    def _current(self) -> tuple[tuple[bytes, frozenset[str] | None], ...]:
        if self._watch.changed():
            try:
                self._tokens = self._read()
                log.info("reloaded %d bearer token(s) from %s", len(self._tokens), self.path)
            except (OSError, ValueError) as e:
                log.error("keeping the previous tokens: %s", e)
        return self._tokens

    def scope(self, token: str) -> frozenset[str] | Literal[False] | None:
        """False for a token the file does not hold; else its categories (None: all of them). Every
        token is compared, each in constant time."""
        given = token.encode()
        found: frozenset[str] | Literal[False] | None = False
        for known, categories in self._current():
            if hmac.compare_digest(given, known):
                found = categories
        return found

    def accepts(self, token: str, category: str | None = None) -> bool:
        scope = self.scope(token)
        return scope is not False and (scope is None or category is None or category in scope)
