"""Peregrine's load-testing harness for any Open Inference Protocol gRPC server, and for Peregrine's
detection service.

Closed loop (N workers) or open loop (constant/Poisson arrivals on a schedule, latency from the intended
send time: no coordinated omission) of OIP ``ModelInfer`` or ``DetectionService/Detect`` calls, and camera
mode (K cameras at F fps, one ``DetectStream`` each, open loop); warm-up, per-request deadlines,
HDR-histogram percentiles, the server's stage timings (detection), JSON/CSV/PNG reports and an SLO exit
code. Command line: ``python -m peregrine.client.load --help`` (``peregrine-load``).
Needs ``hdrhistogram``; the live progress line needs ``tqdm``, ``--plot`` needs ``matplotlib``, detection
payloads need Pillow (and scikit-image for its sample photographs).
"""

from __future__ import annotations

from .camera import CameraRunner, run_camera
from .frames import FramePayload, frame_payload, parse_frame_size
from .payload import make_inputs, random_tensor, resolve_shape
from .report import LatencyHistogram, LoadResult, Records, StageSamples, slo_met
from .runner import LoadConfig, LoadRunner, Workload, arrival_offsets, detect_workload, oip_workload, run_load

__all__ = [
    "CameraRunner",
    "FramePayload",
    "LatencyHistogram",
    "LoadConfig",
    "LoadResult",
    "LoadRunner",
    "Records",
    "StageSamples",
    "Workload",
    "arrival_offsets",
    "detect_workload",
    "frame_payload",
    "make_inputs",
    "oip_workload",
    "parse_frame_size",
    "random_tensor",
    "resolve_shape",
    "run_camera",
    "run_load",
    "slo_met",
]
