"""Observability switched at run time (Peregrine's ``/v1/observability``): what the server records about each
request, changed without a restart.

Keys (a JSON object; a POST may carry any of them, and is applied all or nothing):

- ``metrics`` (bool): count requests into Peregrine's request metrics (outcomes by status, the stage
  histograms, stream answers). Off, ``/metrics`` is still served and its other families still move (queue
  depth, in-flight, model lifecycle, Triton's, which come from the statistics extension). Only on a server
  that serves metrics (``--allow-metrics``).
- ``drift_sample_rate`` (number, 0 to 1): the share of detection frames the drift monitor sketches; 0 stops
  sampling (a request then pays one check, as with drift off) and the windows counted so far are kept. Only
  on a server started with drift on (``--drift-sample-rate`` over 0).
- ``otel`` (bool): OpenTelemetry tracing on or off. Off, a request pays what it pays with
  ``--otel-exporter off`` (one ``is None`` check); the exporter stays configured, idle. Only on a server
  started with an exporter.
- ``otel_sample_ratio`` (number, 0 to 1): the share of requests without a client's sampling decision that
  are traced (a valid ``traceparent`` is followed either way).

An operator turns tracing up while following one robot's problem and down again after, or stops drift
sampling through a load spike; benchmarks/bench_observability.py ``--switch`` alternates on and off windows
inside one process with it. Answers are the settings in force.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

from ..core.errors import InvalidArgument, clipped, json_type
from ..observability import drift
from ..observability.drift import DriftMonitor
from ..observability.metrics import Metrics
from ..observability.otel import OtelTracing

KEYS = ("metrics", "drift_sample_rate", "otel", "otel_sample_ratio")


class ObservabilitySwitches:
    """Run-time switches over a data plane's metrics and tracing and the process's drift monitor."""

    def __init__(self, plane: Any, metrics: Metrics, monitor: DriftMonitor | None = None) -> None:
        """``plane``: the data plane whose ``otel`` attribute requests read (None: tracing off)."""
        self._plane = plane
        self._metrics = metrics
        self.tracing: OtelTracing | None = plane.otel  # the configured tracing, kept while switched off
        self._monitor = monitor
        self._lock = threading.Lock()

    def current(self) -> dict[str, Any]:
        monitor, otel = self._monitor, self.tracing
        return {
            "metrics": self._metrics.recording,  # never on where metrics are not served (update refuses it)
            "drift_sample_rate": (monitor.settings.sample_rate if monitor is not None and drift.installed(monitor)
                                  else 0.0),
            "otel": self._plane.otel is not None,
            "otel_sample_ratio": otel.sample_ratio if otel is not None else 0.0,
        }

    def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply ``changes`` (all or nothing) and return the settings now in force. Raises InvalidArgument
        naming the key for an unknown key, a wrong type, or a part this server was not started with."""
        for key, value in changes.items():
            if key not in KEYS:
                raise InvalidArgument(f"{clipped(key)}: unknown observability setting; expected one of "
                                      f"{', '.join(KEYS)}")
            if key in ("metrics", "otel"):
                if type(value) is not bool:
                    raise InvalidArgument(f"{key}: expected true or false, got {json_type(value)} "
                                          f"{clipped(repr(value))}")
            elif not _share(value):
                raise InvalidArgument(f"{key}: expected a number from 0 to 1, got {json_type(value)} "
                                      f"{clipped(repr(value))}")
        if changes.get("metrics") and not self._metrics.enabled:
            raise InvalidArgument("metrics: the server was started with --allow-metrics=false, so it serves no "
                                  "/metrics to count requests into")
        if changes.get("drift_sample_rate") and self._monitor is None:
            raise InvalidArgument("drift_sample_rate: the server was started with drift off (--drift-sample-rate "
                                  "0); start it with a rate to change the rate at run time")
        if (changes.get("otel") or changes.get("otel_sample_ratio")) and self.tracing is None:
            key = "otel" if changes.get("otel") else "otel_sample_ratio"
            raise InvalidArgument(f"{key}: the server was started without OpenTelemetry (--otel-exporter off); "
                                  "start it with an exporter to switch tracing at run time")
        with self._lock:
            if "metrics" in changes:
                self._metrics.recording = changes["metrics"]
            if "otel_sample_ratio" in changes and self.tracing is not None:
                self.tracing.sample_ratio = float(changes["otel_sample_ratio"])
            if "otel" in changes:
                self._plane.otel = self.tracing if changes["otel"] else None
            if "drift_sample_rate" in changes and self._monitor is not None:
                rate = float(changes["drift_sample_rate"])
                if rate > 0:
                    self._monitor.settings = dataclasses.replace(self._monitor.settings, sample_rate=rate)
                    drift.install(self._monitor)
                else:  # requests stop reaching the monitor; its windows and gauges stay
                    drift.uninstall(self._monitor)
            return self.current()


def _share(value: object) -> bool:
    """A JSON number from 0 to 1 (NaN and infinities fail the comparison; booleans are not numbers here)."""
    return type(value) in (int, float) and 0.0 <= value <= 1.0  # type: ignore[operator]
