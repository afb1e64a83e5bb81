"""The load run's picture (``--plot``): latency over time, every request coloured by its status, and the
latency of the tail on a log-scaled percentile axis (as HdrHistogram's plots: 90 %, 99 %, 99.9 % equally
spaced), with the deadline and the SLO drawn as lines.

Every label lives in a legend or on an axis, never at a data point, so labels do not overlap however close
the percentiles are; a chart with nothing to draw says so.
"""

from __future__ import annotations

import math
import textwrap
from typing import TYPE_CHECKING, Any

import numpy as np

from .report import PERCENTILES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .report import LoadResult

OK_COLOUR = "#1f77b4"
# Failures by status: the same colour for a status in every plot. Others take the fallback colours in turn.
STATUS_COLOURS = {
    "DEADLINE_EXCEEDED": "#ff7f0e",
    "DROPPED": "#9467bd",
    "UNAVAILABLE": "#d62728",
    "RESOURCE_EXHAUSTED": "#8c564b",
    "CANCELLED": "#7f7f7f",
    "INVALID_ARGUMENT": "#e377c2",
    "INTERNAL": "#000000",
}
FALLBACK_COLOURS = ("#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5")
SLO_COLOUR = "#d62728"
DEADLINE_COLOUR = "#555555"


def status_colours(statuses: list[str]) -> dict[str, str]:
    """A colour for each failure status (fixed for the common ones, then the fallbacks in name order)."""
    out: dict[str, str] = {}
    spare = iter(FALLBACK_COLOURS * (1 + len(statuses) // len(FALLBACK_COLOURS)))
    for status in sorted(statuses):
        out[status] = STATUS_COLOURS.get(status) or next(spare)
    return out


def tail_x(fraction: np.ndarray) -> np.ndarray:
    """Where a quantile sits on the tail axis: 1 / (1 - q), so 50 % is 2, 90 % is 10, 99 % is 100."""
    return 1.0 / (1.0 - fraction)


def latency_figure(result: LoadResult, slo_p99_ms: float | None = None) -> Figure:
    """The figure (not saved). Raises ImportError without matplotlib."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    r = result.records
    fig = Figure(figsize=(13, 5.5), layout="constrained")
    FigureCanvasAgg(fig)  # PNG rendering without pyplot's global state or the user's backend
    ax1, ax2 = fig.subplots(1, 2)
    handles: dict[str, Any] = {}

    # -- latency over time ------------------------------------------------------------------------
    ok = r.status == "OK"
    if ok.any():
        handles[f"OK ({int(ok.sum())})"] = ax1.scatter(r.intended_s[ok], r.latency_s[ok] * 1e3, s=3, c=OK_COLOUR,
                                                        linewidths=0)
    failures = sorted(set(r.status[~ok].tolist()))
    for status, colour in status_colours(failures).items():
        sel = r.status == status
        handles[f"{status} ({int(sel.sum())})"] = ax1.scatter(r.intended_s[sel], r.latency_s[sel] * 1e3, s=12,
                                                               c=colour, marker="x", linewidths=0.8)
    if r.status.size == 0:
        ax1.text(0.5, 0.5, "no requests were measured", transform=ax1.transAxes, ha="center", va="center")
    ax1.set_xlabel("intended send time (s)")
    ax1.set_ylabel("latency (ms)")
    ax1.set_title("latency over time, by status")

    # -- tail percentiles --------------------------------------------------------------------------
    lat = np.sort(r.latency_s[ok]) * 1e3
    if lat.size:
        q = (np.arange(1, lat.size + 1) - 0.5) / lat.size
        ax2.plot(tail_x(q), lat, color=OK_COLOUR, linewidth=1.2)
        ax2.set_xscale("log")
        top = max(2, math.ceil(math.log10(lat.size)))
        ticks = [p for p in (50.0, 90.0, 99.0, 99.9, 99.99, 99.999) if tail_x(np.array(p / 100)) <= 10**top]
        ax2.set_xticks([float(tail_x(np.array(p / 100))) for p in ticks], [f"{p:g}%" for p in ticks])
        ax2.minorticks_off()
        ax2.set_xlim(1, 10**top)
        if lat[-1] / max(lat[0], 1e-3) > 20:
            ax2.set_yscale("log")
        for p, marker in zip(PERCENTILES, ("o", "s", "^", "D"), strict=True):
            v = result.latency_ms.get(f"p{p:g}", math.nan)
            if not math.isnan(v):
                handles[f"p{p:g} {v:.3g} ms"] = ax2.plot([float(tail_x(np.array(p / 100)))], [v], marker,
                                                         color="#333333", markersize=5, linestyle="none")[0]
    else:
        ax2.set_xticks([])
        ax2.set_yticks([])
        ax2.text(0.5, 0.5, "no request succeeded:\nno latency distribution to draw"
                 + (f"\n({', '.join(failures)})" if failures else ""),
                 transform=ax2.transAxes, ha="center", va="center", color=SLO_COLOUR)
    ax2.set_xlabel("percentile (log scale of the tail)")
    ax2.set_ylabel("latency (ms)")
    ax2.set_title("latency by percentile (successful requests)")

    # -- deadline and SLO: horizontal lines on both charts --------------------------------------------
    for value, label, colour, style in ((result.deadline_ms, "deadline", DEADLINE_COLOUR, "--"),
                                        (slo_p99_ms, "SLO p99", SLO_COLOUR, ":")):
        if value:
            line = ax1.axhline(value, color=colour, linestyle=style, linewidth=1.2)
            if lat.size:
                ax2.axhline(value, color=colour, linestyle=style, linewidth=1.2)
            handles[f"{label} {value:g} ms"] = line

    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=min(len(handles), 6),
               fontsize=8, frameon=False)
    title = f"{result.model} @ {result.target}: {result.describe_load()}, " \
            f"{result.throughput_rps:.1f} {result.unit}/s"
    if not result.valid:
        title += "\n" + textwrap.fill(f"INVALID RUN: {result.invalid_reason}", 150)
    fig.suptitle(title, fontsize=10, color=SLO_COLOUR if not result.valid else "black")
    return fig


def save_plot(result: LoadResult, path: str, slo_p99_ms: float | None = None) -> None:
    """Draw and write the PNG (100 dpi)."""
    latency_figure(result, slo_p99_ms).savefig(path, dpi=100)
