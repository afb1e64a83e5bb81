"""What a load run measured: an HDR latency histogram, per-request records, and their outputs
(text summary, JSON, CSV, PNG plot)."""

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
_LOWEST_US = 1
_HIGHEST_US = 3_600_000_000  # one hour
_SIGNIFICANT_FIGURES = 3  # values are exact to 0.1 %


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
    latency (seconds, from the intended send time) and final gRPC status name."""

    intended_s: np.ndarray
    sent_s: np.ndarray
    latency_s: np.ndarray
    status: np.ndarray  # str

    @classmethod
    def empty(cls) -> Records:
        return cls(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0, dtype=str))


@dataclass
class LoadResult:
    """The outcome of one run. Latencies are of successful requests, measured from the intended send time
    (open loop: the schedule; closed loop: when the worker sent it)."""

    target: str
    model: str
    mode: str  # "closed" or "open"
    concurrency: int | None
    rate: float | None
    arrival: str | None
    warmup_s: float
    duration_s: float
    deadline_ms: float | None
    sent: int  # measured requests issued
    ok: int
    errors: dict[str, int]  # by gRPC status name
    deadline_misses: int  # DEADLINE_EXCEEDED, or answered after the deadline
    throughput_rps: float  # successful requests per second of the measurement window
    offered_rps: float  # requests issued per second of the measurement window
    latency_ms: dict[str, float]
    send_lag_ms: dict[str, float]  # actual - intended send time: the generator's own delay
    histogram: LatencyHistogram = field(repr=False)
    records: Records = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the per-request records, JSON-ready (NaN becomes null)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("histogram", "records")}
        d["hdr_histogram_us"] = self.histogram.encode()
        return _no_nan(d)

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def write_csv(self, path: str | Path) -> None:
        """Per-request rows: intended_s, sent_s, latency_ms, status."""
        r = self.records
        with Path(path).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["intended_s", "sent_s", "latency_ms", "status"])
            for i in range(len(r.status)):
                w.writerow([f"{r.intended_s[i]:.6f}", f"{r.sent_s[i]:.6f}", f"{r.latency_s[i] * 1e3:.3f}",
                            r.status[i]])

    def plot(self, path: str | Path) -> None:
        """A PNG: latency over time (every request) and the latency CDF. Raises ImportError without
        matplotlib."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        r = self.records
        ok = r.status == "OK"
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
        ax1.scatter(r.intended_s[ok], r.latency_s[ok] * 1e3, s=2, label="OK")
        if (~ok).any():
            ax1.scatter(r.intended_s[~ok], r.latency_s[~ok] * 1e3, s=4, c="red", label="error")
        if self.deadline_ms:
            ax1.axhline(self.deadline_ms, color="grey", linestyle="--", label="deadline")
        ax1.set_xlabel("intended send time (s)")
        ax1.set_ylabel("latency (ms)")
        ax1.set_title("latency over time")
        ax1.legend(loc="upper left")
        lat = np.sort(r.latency_s[ok]) * 1e3
        if lat.size:
            ax2.plot(lat, np.arange(1, lat.size + 1) / lat.size * 100)
        for p in PERCENTILES:
            v = self.latency_ms.get(f"p{p:g}", math.nan)
            if not math.isnan(v):
                ax2.axvline(v, color="grey", linewidth=0.5)
                ax2.text(v, 2, f" p{p:g}", rotation=90, fontsize=7, va="bottom")
        ax2.set_xlabel("latency (ms)")
        ax2.set_ylabel("percent of requests")
        ax2.set_title("latency CDF (successful requests)")
        load = f"concurrency {self.concurrency}" if self.mode == "closed" else f"{self.rate:g} req/s {self.arrival}"
        fig.suptitle(f"{self.model} @ {self.target}: {self.mode} loop, {load}, {self.throughput_rps:.1f} req/s")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)

    def format(self, slo_p99_ms: float | None = None) -> str:
        """A few lines for a terminal."""
        load = (f"closed loop, concurrency {self.concurrency}" if self.mode == "closed"
                else f"open loop, {self.rate:g} req/s ({self.arrival})")
        errs = sum(self.errors.values())
        by = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items()))
        lat, lag = self.latency_ms, self.send_lag_ms
        lines = [
            f"{self.model} @ {self.target}: {load}, {self.duration_s:g} s after {self.warmup_s:g} s warm-up",
            f"requests    {self.sent} sent, {self.ok} ok, {errs} errors" + (f" ({by})" if by else ""),
            f"throughput  {self.throughput_rps:.1f} req/s (offered {self.offered_rps:.1f} req/s)",
            "latency ms  " + "  ".join(f"{k} {lat[k]:.3f}" for k in ("p50", "p90", "p99", "p99.9", "max"))
            + f"  (mean {lat['mean']:.3f})",
            f"send lag ms p50 {lag['p50']:.3f}  p99 {lag['p99']:.3f}  max {lag['max']:.3f}",
        ]
        if self.deadline_ms is not None:
            lines.append(f"deadline    {self.deadline_ms:g} ms: {self.deadline_misses} missed")
        if slo_p99_ms is not None:
            verdict = "met" if slo_met(self, slo_p99_ms) else "MISSED"
            lines.append(f"SLO         p99 <= {slo_p99_ms:g} ms: {verdict}")
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
