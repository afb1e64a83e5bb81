"""The server's log: text or JSON lines, the request and trace ids on every line about a request, and no
flood of one repeated error.

- ``--log-format json``: one JSON object per line (python-json-logger): ``time``, ``level``, ``logger``,
  ``message``, and ``request_id``/``trace_id`` when the line is about a request; exceptions as
  ``exc_info`` text.
- The data plane sets :data:`request_context` when it starts working on a request (its OIP ``id``, and the
  W3C trace id its call carried); every line logged while that request's task runs carries both (text:
  a ``[request_id=... trace_id=...]`` suffix).
- At DEBUG, one line per answered request (model, status, milliseconds); nothing per request above DEBUG.
- The same warning or error (logger, level and message template) is let through ``burst`` times per
  ``window_s``; later repeats in the window are counted and the next one let through says how many were
  suppressed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar

from .otel import parse_traceparent

# (request id, trace id) of the request the running task works on; None outside requests. The trace id may
# be given as a function returning it, called only when a line is logged (it is looked up in the call's
# metadata, which most requests never need).
request_context: ContextVar[tuple[str, str | Callable[[], str]] | None] = ContextVar("peregrine_request",
                                                                                     default=None)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(request_suffix)s"
_json_active = False


def json_active() -> bool:
    """Whether the log is JSON (then Triton's log_format setting does not replace its formatter)."""
    return _json_active


def trace_id_of(traceparent: str | None) -> str:
    """The trace id of a W3C ``traceparent`` header (``00-<32 hex>-<16 hex>-<2 hex>``), or "" when it is
    absent or invalid (then the server's span starts a trace of its own: the line names no other)."""
    parsed = parse_traceparent(traceparent)
    return f"{parsed[0]:032x}" if parsed is not None else ""


class RequestContextFilter(logging.Filter):
    """Gives every record ``request_id``, ``trace_id`` and the text format's ``request_suffix``."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = request_context.get()
        request_id, trace = ctx if ctx is not None else ("", "")
        trace_id = trace() if callable(trace) else trace
        record.request_id, record.trace_id = request_id, trace_id
        parts = [f"request_id={request_id}" if request_id else "", f"trace_id={trace_id}" if trace_id else ""]
        shown = " ".join(p for p in parts if p)
        record.request_suffix = f" [{shown}]" if shown else ""
        return True


class RequestFormatter(logging.Formatter):
    """The text format, with the request suffix where a record has one (records that did not pass the
    :class:`RequestContextFilter`, e.g. through another handler, format without it)."""

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "request_suffix"):
            record.request_suffix = ""
        return super().format(record)


class RepeatFilter(logging.Filter):
    """Lets a repeated warning or error through ``burst`` times per ``window_s`` (see the module docstring)."""

    def __init__(self, burst: int = 3, window_s: float = 10.0, clock: object = time.monotonic,
                 max_keys: int = 1024) -> None:
        super().__init__()
        self.burst, self.window_s, self.clock, self.max_keys = burst, window_s, clock, max_keys
        self._seen: dict[tuple[str, int, str], list[float]] = {}  # key -> [window start, count, suppressed]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()  # type: ignore[operator]
        with self._lock:
            entry = self._seen.get(key)
            if entry is None or now - entry[0] >= self.window_s:
                suppressed = int(entry[2]) if entry is not None else 0
                if len(self._seen) >= self.max_keys and entry is None:
                    self._seen.pop(next(iter(self._seen)))
                self._seen[key] = [now, 1, 0]
                if suppressed:
                    record.msg = f"{record.msg} ({suppressed} more like this suppressed in the last " \
                                 f"{self.window_s:g} s)"
                return True
            entry[1] += 1
            if entry[1] <= self.burst:
                return True
            entry[2] += 1
            return False


def configure(level: str | int = "INFO", fmt: str = "text") -> None:
    """Set up the root handler: ``fmt`` "text" or "json"."""
    global _json_active
    handler = logging.StreamHandler()
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s %(trace_id)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}))
        _json_active = True
    elif fmt == "text":
        handler.setFormatter(RequestFormatter(TEXT_FORMAT))
        _json_active = False
    else:
        raise ValueError(f"--log-format: expected text or json, got {fmt!r}")
    handler.addFilter(RequestContextFilter())
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
