"""Peregrine's load-testing harness for any Open Inference Protocol gRPC server.

Closed loop (N workers) or open loop (constant/Poisson arrivals on a schedule, latency from the intended
send time: no coordinated omission), warm-up, per-request deadlines, HDR-histogram percentiles, JSON/CSV/PNG
reports and an SLO exit code. Command line: ``python -m peregrine.client.load --help`` (``peregrine-load``).
Needs ``hdrhistogram``; the live progress line needs ``tqdm``, ``--plot`` needs ``matplotlib``.
"""

from __future__ import annotations

from .payload import make_inputs, random_tensor, resolve_shape
from .report import LatencyHistogram, LoadResult, Records, slo_met
from .runner import LoadConfig, LoadRunner, arrival_offsets, run_load

__all__ = [
    "LatencyHistogram",
    "LoadConfig",
    "LoadResult",
    "LoadRunner",
    "Records",
    "arrival_offsets",
    "make_inputs",
    "random_tensor",
    "resolve_shape",
    "run_load",
    "slo_met",
]
