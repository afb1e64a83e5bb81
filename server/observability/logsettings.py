"""Triton's LogSettings extension over Python logging: read and change the server's log levels at run time.

Keys (Triton's): ``log_info``, ``log_warning``, ``log_error`` (bool), ``log_verbose_level`` (uint32; > 0
turns on DEBUG), ``log_format`` (``"default"`` or ``"ISO8601"``) and ``log_file`` (read-only here: the
log goes where the process sends it; a client may not redirect the server's log to a path of its choice).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..core.errors import InvalidArgument, clipped
from .logs import TEXT_FORMAT, RequestFormatter, json_active

LOGGER = "peregrine"
_TYPES: dict[str, type] = {"log_file": str, "log_info": bool, "log_warning": bool, "log_error": bool,
                           "log_verbose_level": int, "log_format": str}
_FORMATS = {
    "default": RequestFormatter(TEXT_FORMAT),
    "ISO8601": RequestFormatter(TEXT_FORMAT, "%Y-%m-%dT%H:%M:%S%z"),
}


class LogSettings:
    """The server's log settings; thread-safe."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger(LOGGER)
        self._lock = threading.Lock()
        level = self.logger.getEffectiveLevel()
        self._settings: dict[str, Any] = {
            "log_file": "", "log_info": level <= logging.INFO, "log_warning": level <= logging.WARNING,
            "log_error": level <= logging.ERROR, "log_verbose_level": 1 if level <= logging.DEBUG else 0,
            "log_format": "default",
        }

    def current(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._settings)

    def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply ``changes`` (all or nothing) and return the settings now in force. Raises InvalidArgument
        naming the key for an unknown key, a wrong type or a value that cannot be applied."""
        for key, value in changes.items():
            if key not in _TYPES:
                raise InvalidArgument(
                    f"settings.{clipped(key)}: unknown log setting; expected one of {', '.join(_TYPES)}")
            want = _TYPES[key]
            if type(value) is not want:
                raise InvalidArgument(
                    f"settings.{key}: expected a {want.__name__} value, got {clipped(repr(value))}")
        verbose = changes.get("log_verbose_level", 0)
        if not 0 <= verbose <= 0xFFFFFFFF:  # Triton's uint32: gRPC's LogSettings could not carry more
            raise InvalidArgument(f"settings.log_verbose_level: expected an integer in 0..4294967295, got {verbose}")
        if changes.get("log_format", "default") not in _FORMATS:
            raise InvalidArgument(
                f"settings.log_format: expected 'default' or 'ISO8601', got {changes['log_format']!r}")
        if changes.get("log_file", "") != self._settings["log_file"]:
            raise InvalidArgument("settings.log_file: the log destination cannot be changed over the API "
                                  f"(it is {self._settings['log_file'] or 'the process stderr'!r})")
        with self._lock:
            self._settings.update(changes)
            self._apply()
            return dict(self._settings)

    def _apply(self) -> None:
        s = self._settings
        if s["log_verbose_level"] > 0:
            level = logging.DEBUG
        elif s["log_info"]:
            level = logging.INFO
        elif s["log_warning"]:
            level = logging.WARNING
        elif s["log_error"]:
            level = logging.ERROR
        else:
            level = logging.CRITICAL + 10  # off
        self.logger.setLevel(level)
        if json_active():
            return  # JSON lines keep their own time format
        formatter = _FORMATS[s["log_format"]]
        for handler in logging.getLogger().handlers:
            handler.setFormatter(formatter)
