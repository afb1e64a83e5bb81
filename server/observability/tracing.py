"""Triton's trace extension: per-request timelines, sampled, written as Triton's JSON trace files.

Settings (Triton's keys, all strings over the API): ``trace_level`` (``OFF`` or ``TIMESTAMPS``),
``trace_rate`` (trace one request in N), ``trace_count`` (traces left to collect; -1: no limit),
``log_frequency`` (write a file every N traces, as ``<trace_file>.<k>``; 0: one file, at shutdown) and
``trace_file`` (set with ``--trace-file`` at start-up; read-only over the API, so that no client chooses
a path the server writes). Settings are global, and a model may override any of them; an empty value
list clears a model's override (it follows the global setting again) or restores a global default.

A traced request records, on the server's monotonic clock in nanoseconds: REQUEST_START (the call
arrived), QUEUE_START (it entered its model's queue), COMPUTE_START, COMPUTE_INPUT_END,
COMPUTE_OUTPUT_START, COMPUTE_END (its batch's execution) and REQUEST_END (its response was made).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import InvalidArgument, clipped
from ..core.types import ComputeTimes

log = logging.getLogger(__name__)

DEFAULTS: dict[str, list[str]] = {
    "trace_file": [""],
    "trace_level": ["OFF"],
    "trace_rate": ["1000"],
    "trace_count": ["-1"],
    "log_frequency": ["0"],
}
LEVELS = ("OFF", "TIMESTAMPS")


def _integer(key: str, values: list[str], minimum: int) -> int:
    if len(values) != 1:
        raise InvalidArgument(f"settings.{clipped(key)}: expected one value, got {len(values)}")
    try:
        n = int(values[0])
    except ValueError:
        raise InvalidArgument(f"settings.{clipped(key)}: expected an integer, got {clipped(repr(values[0]))}") from None
    if n < minimum:
        raise InvalidArgument(f"settings.{clipped(key)}: expected an integer >= {minimum}, got {n}")
    return n


def _check(key: str, values: list[str], trace_file: str) -> None:
    if key == "trace_level":
        bad = [v for v in values if v not in LEVELS]
        if bad or not values or ("OFF" in values and len(values) > 1):
            extra = " (TENSORS is not supported)" if "TENSORS" in bad else ""
            raise InvalidArgument(
                f"settings.trace_level: expected OFF or TIMESTAMPS, got {clipped(repr(values))}{extra}")
    elif key == "trace_rate":
        _integer(key, values, 1)
    elif key == "trace_count":
        _integer(key, values, -1)
    elif key == "log_frequency":
        _integer(key, values, 0)
    elif key == "trace_file":
        if values != [trace_file]:
            raise InvalidArgument(f"settings.trace_file: set with --trace-file when the server starts; it is "
                                  f"{trace_file or 'unset'!r} and cannot be changed over the API")
    else:
        raise InvalidArgument(f"settings.{clipped(key)}: unknown trace setting; expected one of {', '.join(DEFAULTS)}")


@dataclass
class Trace:
    """A request being traced: its id and the timestamps collected so far."""

    id: int
    model_name: str
    model_version: str = ""
    request_id: str = ""

    def __post_init__(self) -> None:
        self.timestamps: list[tuple[str, int]] = []

    def stamp(self, name: str, ns: int | None = None) -> None:
        self.timestamps.append((name, time.monotonic_ns() if ns is None else ns))


class Tracer:
    """Trace settings and the traces collected under them; thread-safe."""

    def __init__(self, trace_file: Path | None = None, level: str = "OFF", rate: int = 1000, count: int = -1,
                 log_frequency: int = 0) -> None:
        self.trace_file = str(trace_file) if trace_file else ""
        self._lock = threading.Lock()
        self._global: dict[str, list[str]] = dict(DEFAULTS)
        self._global.update(trace_file=[self.trace_file], trace_level=[level], trace_rate=[str(rate)],
                            trace_count=[str(count)], log_frequency=[str(log_frequency)])
        for key, values in self._global.items():
            try:
                _check(key, values, self.trace_file)
            except InvalidArgument as e:  # a start-up setting: a configuration error, not a request's
                raise ValueError(f"trace settings at start-up: {e.message}") from None
        self._models: dict[str, dict[str, list[str]]] = {}
        self._seen: dict[str, int] = {}  # requests seen per scope ("" global) since its rate was set
        self._left: dict[str, int] = {}  # traces left per scope, from trace_count
        self._next_id = 1
        self._collected: list[dict[str, Any]] = []
        self._files_written = 0
        self._active = self._any_on()

    def _any_on(self) -> bool:
        """Whether any scope traces at all: when none does, start() returns at once, without the lock."""
        scopes = [self._global, *({**self._global, **m} for m in self._models.values())]
        return bool(self.trace_file) and any(s["trace_level"] != ["OFF"] for s in scopes)

    # -- settings --------------------------------------------------------------------------------
    def settings(self, model: str = "") -> dict[str, list[str]]:
        with self._lock:
            return self._effective(model)

    def _effective(self, model: str) -> dict[str, list[str]]:
        merged = dict(self._global)
        merged.update(self._models.get(model, {}))
        return merged

    def update(self, changes: dict[str, list[str]], model: str = "") -> dict[str, list[str]]:
        """Apply ``changes`` (all or nothing) to the global settings or to ``model``'s and return the
        settings now in force there. An empty list clears the model's override or restores the default."""
        for key, values in changes.items():
            if values or key not in DEFAULTS:
                _check(key, values, self.trace_file)
        if not self.trace_file and changes.get("trace_level", ["OFF"]) not in ([], ["OFF"]):
            raise InvalidArgument("settings.trace_level: the server was started without --trace-file, so traces "
                                  "would go nowhere; start it with --trace-file to trace")
        with self._lock:
            scope = self._models.setdefault(model, {}) if model else self._global
            for key, values in changes.items():
                if values:
                    scope[key] = list(values)
                elif model:
                    scope.pop(key, None)
                elif key != "trace_file":
                    scope[key] = list(DEFAULTS[key])
            if "trace_count" in changes or "trace_rate" in changes:  # counting starts again
                for name in ([model] if model else ["", *self._models]):
                    self._left.pop(name, None)
                    self._seen.pop(name, None)
            self._active = self._any_on()
            return self._effective(model)

    # -- sampling and recording ------------------------------------------------------------------
    def begin(self, model: str, version: str, request_id: str, started_ns: int) -> Trace | None:
        """:meth:`start`, the trace's REQUEST_START stamped at ``started_ns`` (monotonic) when sampled."""
        trace = self.start(model, version, request_id)
        if trace is not None:
            trace.stamp("REQUEST_START", started_ns)
        return trace

    def start(self, model: str, version: str = "", request_id: str = "") -> Trace | None:
        """A Trace for this request when it is sampled, else None (cheap when tracing is off)."""
        if not self._active:
            return None
        with self._lock:
            s = self._effective(model)
            if s["trace_level"] == ["OFF"] or not self.trace_file:
                return None
            scope = model if model in self._models else ""
            left = self._left.setdefault(scope, int(s["trace_count"][0]))
            if left == 0:
                return None
            seen = self._seen.get(scope, 0) + 1
            self._seen[scope] = seen
            if seen % int(s["trace_rate"][0]):
                return None
            if left > 0:
                self._left[scope] = left - 1
            trace = Trace(self._next_id, model, version, request_id)
            self._next_id += 1
            return trace

    def finish(self, trace: Trace | None, compute: ComputeTimes | None = None) -> None:
        """Stamp the execution of the batch the request ran in (``compute``) and REQUEST_END, and keep the
        trace; None (a request not sampled) does nothing."""
        if trace is None:
            return
        stamp_compute(trace, compute)
        trace.stamp("REQUEST_END")
        entry: dict[str, Any] = {"id": trace.id, "model_name": trace.model_name}
        try:
            entry["model_version"] = int(trace.model_version)
        except ValueError:
            entry["model_version"] = -1
        if trace.request_id:
            entry["request_id"] = trace.request_id
        entry["timestamps"] = [{"name": name, "ns": ns} for name, ns in trace.timestamps]
        with self._lock:
            self._collected.append(entry)
            every = int(self._effective(trace.model_name)["log_frequency"][0])
            if every and len(self._collected) >= every:
                self._write(f"{self.trace_file}.{self._files_written}")
                self._files_written += 1

    def close(self) -> None:
        """Write what is collected: the one file (log_frequency 0), or the last numbered one."""
        with self._lock:
            if not self._collected or not self.trace_file:
                return
            every = int(self._global["log_frequency"][0])
            self._write(f"{self.trace_file}.{self._files_written}" if every else self.trace_file)

    def _write(self, path: str) -> None:
        traces, self._collected = self._collected, []
        tmp = f"{path}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(traces, f, indent=1)
            os.replace(tmp, path)
        except OSError as e:  # tracing never takes the server down
            log.error("could not write %d traces to %s: %s", len(traces), path, e)


def stamp_compute(trace: Trace, compute: ComputeTimes | None) -> None:
    """Give a traced request the execution timestamps of the batch it ran in. ``compute`` is timed on
    the :func:`time.perf_counter_ns` clock executors use; traces use the monotonic clock."""
    if compute is None:
        return
    t0 = compute.start_ns + time.monotonic_ns() - time.perf_counter_ns()
    t1 = t0 + compute.input_ns
    t2 = t1 + compute.infer_ns
    t3 = t2 + compute.output_ns
    trace.timestamps += [("COMPUTE_START", t0), ("COMPUTE_INPUT_END", t1), ("COMPUTE_OUTPUT_START", t2),
                         ("COMPUTE_END", t3)]
