"""What a load run measured: an HDR latency histogram, per-request records, the server's stage timings
(detection modes), and their outputs (text summary, JSON, CSV, PNG plot)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
# The stages of peregrine.v1.StageTimings, in pipeline order.
STAGES = ("decode", "queue", "pre", "infer", "post", "total")
_LOWEST_US = 1
_HIGHEST_US = 3_600_000_000  # one hour
_SIGNIFICANT_FIGURES = 3  # values are exact to 0.1 %
# A scheduled run (open loop, camera mode) whose generator sent its p99 request later than this after its
# intended time fell behind its own schedule: its latencies include the generator's delay and it offered less
# load than asked, so it is marked invalid (``--max-send-lag-ms``).
MAX_SEND_LAG_MS = 50.0


class LatencyHistogram:
    """Latencies in an HDR histogram at microsecond resolution, 1 µs to 1 h, 3 significant figures
    (every percentile is within 0.1 % of the exact value)."""

    def __init__(self) -> None:
        self.hdr = HdrHistogram(_LOWEST_US, _HIGHEST_US, _SIGNIFICANT_FIGURES)

    def record(self, seconds: float) -> None:
        """Record one latency in seconds (clamped to 1 µs .. 1 h)."""
        us = min(max(round(seconds * 1e6), _LOWEST_US), _HIGHEST_US)
        self.hdr.record_value(us)

    @property
    def count(self) -> int:
        return int(self.hdr.get_total_count())

    def percentile_ms(self, p: float) -> float:
        """The latency at percentile ``p`` (0..100) in milliseconds; NaN when nothing was recorded."""
        return math.nan if self.count == 0 else self.hdr.get_value_at_percentile(p) / 1000.0

    def summary_ms(self) -> dict[str, float]:
        """p50, p90, p99, p99.9, max, min and mean in milliseconds (NaN when empty)."""
        if self.count == 0:
            return {k: math.nan for k in ("p50", "p90", "p99", "p99.9", "max", "min", "mean")}
        out = {f"p{p:g}": self.percentile_ms(p) for p in PERCENTILES}
        out["max"] = self.hdr.get_max_value() / 1000.0
        out["min"] = self.hdr.get_min_value() / 1000.0
        out["mean"] = self.hdr.get_mean_value() / 1000.0
        return out

    def encode(self) -> str:
        """The histogram in HdrHistogram's compressed base64 form (mergeable, readable by any HDR tool)."""
        return self.hdr.encode().decode("ascii") if self.count else ""


@dataclass
class Records:
    """One row per measured request: intended and actual send times (seconds from the run's start),
    latency (seconds, from the intended send time) and final status name (a gRPC status, or ``DROPPED``
    for a camera frame the server dropped). Camera mode adds each frame's camera and sequence number."""

    intended_s: np.ndarray
    sent_s: np.ndarray
    latency_s: np.ndarray
    status: np.ndarray  # str
    camera: np.ndarray | None = None  # int, camera mode only
    sequence: np.ndarray | None = None  # int, camera mode only

    @classmethod
    def empty(cls) -> Records:
        return cls(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0, dtype=str))


class StageSamples:
    """The server's per-stage timings (microseconds) of measured successful requests or frames."""

    def __init__(self) -> None:
        self.values: dict[str, list[int]] = {stage: [] for stage in STAGES}
        self.batch_sizes: list[int] = []

    def add(self, timings_us: dict[str, int], batch_size: int) -> None:
        for stage in STAGES:
            self.values[stage].append(timings_us[stage])
        self.batch_sizes.append(batch_size)

    def __len__(self) -> int:
        return len(self.batch_sizes)

    def summary_ms(self) -> dict[str, dict[str, float]] | None:
        """Per stage, p50/p99/mean in milliseconds, and ``batch_size`` p50/mean; None when empty."""
        if not self.batch_sizes:
            return None
        out: dict[str, dict[str, float]] = {}
        for stage, us in self.values.items():
            a = np.asarray(us, np.float64) / 1e3
            out[stage] = {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
                          "mean": float(a.mean())}
        b = np.asarray(self.batch_sizes, np.float64)
        out["batch_size"] = {"p50": float(np.percentile(b, 50)), "mean": float(b.mean())}
        return out


@dataclass
class LoadResult:
    """The outcome of one run. Latencies are of successful requests, measured from the intended send time
    (open loop and camera mode: the schedule; closed loop: when the worker sent it)."""

    target: str
    model: str
    mode: str  # "closed", "open" or "camera"
    concurrency: int | None
    rate: float | None
    arrival: str | None
    warmup_s: float
    duration_s: float
    deadline_ms: float | None
    sent: int  # measured requests issued
    ok: int
    errors: dict[str, int]  # by status name: a gRPC status, or DROPPED (camera mode)
    deadline_misses: int  # DEADLINE_EXCEEDED, or answered after the deadline
    throughput_rps: float  # successful requests per second of the measurement window
    offered_rps: float  # requests issued per second of the measurement window
    latency_ms: dict[str, float]
    send_lag_ms: dict[str, float]  # actual - intended send time: the generator's own delay
    histogram: LatencyHistogram = field(repr=False)
    records: Records = field(repr=False)
    api: str = "oip"  # "oip" (ModelInfer), "detect" (DetectionService.Detect), "stream" (DetectStream)
    cameras: int | None = None  # camera mode: streams
    fps: float | None = None  # camera mode: frames per second of each stream
    dropped: int = 0  # camera mode: measured frames answered DROPPED (also counted in errors)
    server_dropped_total: int | None = None  # camera mode: the server's own count over all streams, warm-up included
    stages_ms: dict[str, dict[str, float]] | None = None  # detection modes: the server's StageTimings
    payload: str = ""  # what each request or frame carried
    valid: bool = True  # False when the generator fell behind its schedule (see check_schedule)
    invalid_reason: str = ""

    def check_schedule(self, max_send_lag_ms: float = MAX_SEND_LAG_MS) -> bool:
        """Mark the run invalid when it follows a schedule (open loop, camera mode) and its p99 send lag
        (actual minus intended send time) is above ``max_send_lag_ms``; returns ``valid``."""
        lag = self.send_lag_ms.get("p99", math.nan)
        if self.mode in ("open", "camera") and not math.isnan(lag) and lag > max_send_lag_ms:
            self.valid = False
            self.invalid_reason = (
                f"the load generator fell behind its schedule (send lag p99 {lag:.1f} ms, max "
                f"{self.send_lag_ms['max']:.1f} ms; allowed {max_send_lag_ms:g} ms): latencies include its own "
                f"delay and it offered less than asked. Ask for less ({self.describe_load()}) or run it "
                f"on another machine")
        return self.valid

    def to_dict(self) -> dict[str, Any]:
        """Everything but the per-request records, JSON-ready (NaN becomes null)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("histogram", "records")}
        d["hdr_histogram_us"] = self.histogram.encode()
        return _no_nan(d)

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def write_csv(self, path: str | Path) -> None:
        """Per-request rows: intended_s, sent_s, latency_ms, status (camera mode: then camera, sequence)."""
        r = self.records
        frames = r.camera is not None and r.sequence is not None
        with Path(path).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["intended_s", "sent_s", "latency_ms", "status"] + (["camera", "sequence"] if frames else []))
            for i in range(len(r.status)):
                row = [f"{r.intended_s[i]:.6f}", f"{r.sent_s[i]:.6f}", f"{r.latency_s[i] * 1e3:.3f}", r.status[i]]
                if frames:
                    assert r.camera is not None and r.sequence is not None
                    row += [int(r.camera[i]), int(r.sequence[i])]
                w.writerow(row)

    def plot(self, path: str | Path, slo_p99_ms: float | None = None) -> None:
        """A PNG: latency over time (every request, coloured by status) and the tail percentiles on a log
        scale, with the deadline and ``slo_p99_ms`` drawn (see :mod:`.plot`). Raises ImportError without
        matplotlib."""
        from .plot import save_plot

        save_plot(self, str(path), slo_p99_ms)

    @property
    def unit(self) -> str:
        return "frames" if self.mode == "camera" else "req"

    def describe_load(self) -> str:
        api = {"oip": "", "detect": " over Detect", "stream": " over DetectStream"}.get(self.api, "")
        if self.mode == "camera":
            return f"camera mode, {self.cameras} x {self.fps:g} fps{api}"
        if self.mode == "closed":
            return f"closed loop, concurrency {self.concurrency}{api}"
        return f"open loop, {self.rate:g} req/s ({self.arrival}){api}"

    def format(self, slo_p99_ms: float | None = None) -> str:
        """A few lines for a terminal."""
        errs = sum(self.errors.values())
        by = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items()))
        lat, lag, unit = self.latency_ms, self.send_lag_ms, self.unit
        what = "frames" if self.mode == "camera" else "requests"
        lines = [
            f"{self.model} @ {self.target}: {self.describe_load()}, {self.duration_s:g} s after "
            f"{self.warmup_s:g} s warm-up",
        ]
        if self.payload:
            lines.append(f"payload     {self.payload}")
        lines += [
            f"{what:<11} {self.sent} sent, {self.ok} ok, {errs} not ok" + (f" ({by})" if by else ""),
            f"throughput  {self.throughput_rps:.1f} {unit}/s (offered {self.offered_rps:.1f} {unit}/s)",
            "latency ms  " + "  ".join(f"{k} {lat[k]:.3f}" for k in ("p50", "p90", "p99", "p99.9", "max"))
            + f"  (mean {lat['mean']:.3f})",
            f"send lag ms p50 {lag['p50']:.3f}  p99 {lag['p99']:.3f}  max {lag['max']:.3f}",
        ]
        if self.mode == "camera":
            lines.append(f"dropped     {self.dropped} measured frames (server count, warm-up included: "
                         f"{self.server_dropped_total})")
        if self.deadline_ms is not None:
            lines.append(f"deadline    {self.deadline_ms:g} ms: {self.deadline_misses} missed")
        if self.stages_ms:
            st = self.stages_ms
            lines.append("server ms   p50 " + "  ".join(f"{k} {st[k]['p50']:.3f}" for k in STAGES)
                         + f"  (batch p50 {st['batch_size']['p50']:g}, mean {st['batch_size']['mean']:.2f})")
        if slo_p99_ms is not None:
            verdict = "met" if slo_met(self, slo_p99_ms) else "MISSED"
            lines.append(f"SLO         p99 <= {slo_p99_ms:g} ms: {verdict}")
        if not self.valid:
            lines.append(f"INVALID RUN {self.invalid_reason}")
        return "\n".join(lines)


def slo_met(result: LoadResult, slo_p99_ms: float) -> bool:
    """True when at least one request succeeded and the p99 latency is at most ``slo_p99_ms``."""
    p99 = result.latency_ms.get("p99", math.nan)
    return result.ok > 0 and not math.isnan(p99) and p99 <= slo_p99_ms


def lag_summary_ms(lag_s: np.ndarray) -> dict[str, float]:
    if lag_s.size == 0:
        return {"p50": math.nan, "p99": math.nan, "max": math.nan}
    return {"p50": float(np.percentile(lag_s, 50)) * 1e3, "p99": float(np.percentile(lag_s, 99)) * 1e3,
            "max": float(lag_s.max()) * 1e3}


def _no_nan(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    return value
