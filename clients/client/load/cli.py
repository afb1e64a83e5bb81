"""``peregrine-load`` / ``python -m peregrine.client.load``: load-test any OIP gRPC server, or Peregrine's
detection service (``--detect`` unary calls, ``--cameras`` streams).

Exit status: 0 done (and the SLO met, if one was given); 1 the SLO was missed (p99 above ``--slo-p99-ms``,
or no request succeeded); 2 bad arguments, or the server/model could not be reached before the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Literal

import grpc
import numpy as np

from ..channel import ChannelSettings, TlsOptions
from ..detection import DetectionClient, detect_request, options_message
from ..errors import PeregrineClientError
from ..images import load_image
from ..sync import InferenceClient
from ..version import client_version
from .camera import run_camera
from .frames import FramePayload, frame_payload, parse_frame_size
from .payload import make_inputs
from .report import MAX_SEND_LAG_MS, LoadResult, slo_met
from .runner import LoadConfig, Recorder, Workload, detect_workload, run_load

EXIT_OK, EXIT_SLO, EXIT_USAGE = 0, 1, 2


def _class_ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected class ids like 0,2,7, got '{text}'") from None
    if not ids or min(ids) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative class ids like 0,2,7, got '{text}'")
    return ids


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="peregrine-load",
        description="Load-test an Open Inference Protocol gRPC server (Peregrine, Triton, ...): closed loop "
        "(--concurrency) or open loop (--rate), latencies into an HDR histogram. With --detect the calls are "
        "Peregrine's DetectionService/Detect; --cameras K --fps F runs K camera streams over DetectStream.",
        epilog="Exit status: 0 ok, 1 SLO missed, 2 bad arguments or server/model unreachable.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {client_version()}")
    p.add_argument("model", help="model name (a detection pipeline, e.g. yolov8n_detect, for --detect/--cameras)")
    p.add_argument("-u", "--url", default="127.0.0.1:8001", help="server host:port (default %(default)s)")
    p.add_argument("--model-version", default="", help="model version (default: the server's choice)")
    load = p.add_mutually_exclusive_group()
    load.add_argument("-c", "--concurrency", type=int, help="closed loop with N workers (default: 1)")
    load.add_argument("-r", "--rate", type=float, help="open loop at R requests/s, on schedule")
    load.add_argument("--cameras", type=int, metavar="K",
                      help="camera mode: K DetectStream streams, each sending --fps frames/s on schedule")
    p.add_argument("--fps", type=float, default=30.0, help="camera mode: frames per second per camera "
                   "(default %(default)s)")
    p.add_argument("--max-in-flight", type=int, metavar="N",
                   help="camera mode: frames the server runs at once per stream (default: the model's)")
    p.add_argument("--detect", action="store_true",
                   help="-c/-r: call DetectionService/Detect with images instead of OIP ModelInfer")
    p.add_argument("--arrival", choices=["constant", "poisson"], default="constant",
                   help="open-loop arrivals: evenly spaced or a Poisson process (default %(default)s)")
    p.add_argument("--warmup", type=float, default=2.0, metavar="S", help="seconds not measured (default %(default)s)")
    p.add_argument("-d", "--duration", type=float, default=10.0, metavar="S",
                   help="seconds measured (default %(default)s)")
    p.add_argument("--deadline-ms", type=float, help="per-request deadline from the intended send time; misses counted")
    p.add_argument("--drain", type=float, metavar="S",
                   help="open loop: seconds to wait for answers after the last send (default: deadline + 1 s, or 10 s)")
    p.add_argument("-b", "--batch-size", type=int, default=1,
                   help="size of a leading -1 dimension; with --detect, images per request (default 1)")
    p.add_argument("--shape", action="append", default=[], metavar="NAME:D1,D2,...",
                   help="shape of an input with dynamic dimensions (with or without the batch dimension)")
    p.add_argument("--image", action="append", default=[], metavar="FILE|DIR",
                   help="OIP: send this image (JPEG/PNG via OpenCV, or uint8 HWC .npy), letterboxed to the model's "
                   "image input. --detect/--cameras: images to send in turn (files, or directories of them; "
                   "repeatable; default: scikit-image's photographs)")
    p.add_argument("--frame-size", metavar="WxH", help="--detect/--cameras: fit every image to this size "
                   "(cover and crop the middle), e.g. 1920x1080 (default: as they are)")
    p.add_argument("--encoding", choices=["jpeg", "png", "raw"], default="jpeg",
                   help="--detect/--cameras: how images travel (default %(default)s; raw: uint8 RGB pixels)")
    p.add_argument("--jpeg-quality", type=int, default=90, metavar="Q", help="JPEG quality (default %(default)s)")
    p.add_argument("--score-threshold", type=float, help="--detect/--cameras: override the model's score threshold")
    p.add_argument("--iou-threshold", type=float, help="--detect/--cameras: override the model's NMS IoU threshold")
    p.add_argument("--max-detections", type=int, metavar="N",
                   help="--detect/--cameras: at most N boxes per image (default: the model's)")
    p.add_argument("--classes", type=_class_ids, metavar="ID,ID,...",
                   help="--detect/--cameras: keep only these class ids (default: all)")
    p.add_argument("--image-input", metavar="NAME", help="the input --image goes to (default: found from metadata)")
    p.add_argument("--npy", action="append", default=[], metavar="[NAME=]FILE",
                   help="send this array for an input (NAME may be left out for a one-input model)")
    p.add_argument("--seed", type=int, default=0, help="seed of random data and Poisson arrivals (default 0)")
    p.add_argument("--shared-memory", choices=["none", "system"], default="none",
                   help="OIP runs: 'system' sends tensors through POSIX shared memory (server on this machine), "
                        "one region set per request in flight, registered once and reused (default %(default)s)")
    p.add_argument("--output-shm-size", type=int, metavar="BYTES",
                   help="with --shared-memory: bytes reserved per output (default: learned from one request)")
    p.add_argument("--slo-p99-ms", type=float, help="exit 1 when p99 latency exceeds this (ms)")
    p.add_argument("--max-send-lag-ms", type=float, default=MAX_SEND_LAG_MS, metavar="MS",
                   help="-r/--cameras: mark the run invalid (with a warning, and \"valid\": false in --json) when "
                   "the generator's p99 send lag exceeds this (default %(default)s)")
    p.add_argument("--json", metavar="FILE", help="write the summary and HDR histogram as JSON")
    p.add_argument("--csv", metavar="FILE", help="write one row per measured request")
    p.add_argument("--plot", metavar="FILE.png", help="plot latency over time and its CDF (needs matplotlib)")
    p.add_argument("--tls-ca", metavar="PEM", help="CA certificate: use TLS (system roots when only --tls is given)")
    p.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    p.add_argument("--tls-cert", metavar="PEM", help="client certificate for mutual TLS")
    p.add_argument("--tls-key", metavar="PEM", help="client private key for mutual TLS")
    p.add_argument("--tls-server-name", metavar="NAME", help="expect this name in the server's certificate")
    p.add_argument("--token", help="bearer token (default: $PEREGRINE_TOKEN)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="live progress line on stderr (default: when stderr is a terminal)")
    return p


def _shapes(items: Sequence[str]) -> dict[str, list[int]]:
    out = {}
    for item in items:
        name, sep, dims = item.rpartition(":")
        if not sep or not name:
            raise ValueError(f"--shape {item}: expected NAME:D1,D2,...")
        try:
            out[name] = [int(d) for d in dims.split(",")]
        except ValueError:
            raise ValueError(f"--shape {item}: dimensions must be integers") from None
    return out


def _arrays(items: Sequence[str], input_names: Sequence[str]) -> dict[str, np.ndarray]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            if len(input_names) != 1:
                raise ValueError(f"--npy {item}: the model has inputs {list(input_names)}; use --npy NAME=FILE")
            name, path = input_names[0], item
        out[name] = np.load(path, allow_pickle=False)
    return out


def _settings(a: argparse.Namespace) -> ChannelSettings:
    tls = None
    if a.tls or a.tls_ca or a.tls_cert or a.tls_key:
        tls = TlsOptions.from_files(a.tls_ca, a.tls_cert, a.tls_key, a.tls_server_name)
    return ChannelSettings(a.url, tls=tls, token=a.token or os.environ.get("PEREGRINE_TOKEN"))


class _ProgressLine:
    """The live line on stderr (tqdm): elapsed of total seconds, requests, errors, rate, p99 so far."""

    def __init__(self, total_s: float, warmup_s: float) -> None:
        from tqdm import tqdm

        self.warmup_s = warmup_s
        self.bar = tqdm(total=round(total_s, 1), unit="s", file=sys.stderr, leave=False, dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s{postfix}")

    def __call__(self, elapsed: float, rec: Recorder) -> None:
        phase = "warm-up" if elapsed < self.warmup_s else "measuring"
        measured = max(elapsed - self.warmup_s, 1e-9)
        p99 = rec.histogram.percentile_ms(99) if rec.ok else float("nan")
        self.bar.set_description_str(phase, refresh=False)
        self.bar.set_postfix_str(f"ok {rec.ok} err {rec.errors} {rec.ok / measured:.0f}/s p99 {p99:.2f} ms",
                                 refresh=False)
        self.bar.n = min(round(elapsed, 1), self.bar.total)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _detect_payload(a: argparse.Namespace) -> FramePayload:
    if a.npy or a.shape or a.image_input:
        raise ValueError("--npy, --shape and --image-input are for OIP models; --detect/--cameras send images")
    size = parse_frame_size(a.frame_size) if a.frame_size else None
    return frame_payload(a.image, size, a.encoding, a.jpeg_quality)


def _detect_requests(a: argparse.Namespace, payload: FramePayload) -> Workload:
    """One Detect request per image, each with ``--batch-size`` images taken in turn from the payload."""
    if a.batch_size < 1:
        raise ValueError(f"--batch-size: expected at least 1, got {a.batch_size}")
    images, b = payload.images, a.batch_size
    requests = [
        detect_request([images[(i + j) % len(images)] for j in range(b)], a.model, a.model_version,
                       a.score_threshold, a.iou_threshold, a.max_detections, a.classes).SerializeToString()
        for i in range(len(images))
    ]
    per = f"{b} images per request: " if b > 1 else ""
    return detect_workload(requests, per + payload.description)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    detection = a.cameras is not None or a.detect
    try:
        settings = _settings(a)
        mode: Literal["closed", "open", "camera"] = (
            "camera" if a.cameras is not None else "open" if a.rate is not None else "closed")
        if a.output_shm_size is not None and a.output_shm_size <= 0:
            raise ValueError(f"--output-shm-size: expected a positive number of bytes, got {a.output_shm_size}")
        if detection and a.shared_memory != "none":
            raise ValueError("--shared-memory: only OIP runs send tensors through shared memory, "
                             "not --detect/--cameras")
        config = LoadConfig(a.model, settings, a.model_version, mode, a.concurrency or 1, a.rate or 0.0, a.arrival,
                            a.warmup, a.duration, a.deadline_ms, a.drain, a.seed, a.cameras or 1, a.fps,
                            a.max_in_flight, a.shared_memory, max_send_lag_ms=a.max_send_lag_ms)
        if detection:
            payload = _detect_payload(a)
            # One call first: the model must be a reachable detection pipeline that takes these images.
            with DetectionClient(settings.target, tls=settings.tls, token=settings.token) as client:
                client.detect(payload.images[0], model=a.model, version=a.model_version,
                              score_threshold=a.score_threshold, iou_threshold=a.iou_threshold,
                              max_detections=a.max_detections, classes=a.classes, deadline_s=60.0)
            work: Mapping[str, np.ndarray] | Workload | None = None if mode == "camera" else \
                _detect_requests(a, payload)
        else:
            with InferenceClient(settings.target, tls=settings.tls, token=settings.token) as client:
                meta = client.model_metadata(a.model, a.model_version, deadline_s=30.0)
            if len(a.image) > 1:
                raise ValueError("--image: an OIP run sends one image; give one file")
            image = load_image(a.image[0]) if a.image else None
            arrays = _arrays(a.npy, [t.name for t in meta.inputs])
            work = make_inputs(meta, batch_size=a.batch_size, shapes=_shapes(a.shape), image=image,
                               image_input_name=a.image_input, arrays=arrays, seed=a.seed)
            if a.output_shm_size is not None:
                config = dataclasses.replace(config, output_shm_bytes={t.name: a.output_shm_size
                                                                       for t in meta.outputs})
    except PeregrineClientError as e:
        print(f"peregrine-load: cannot start: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, OSError, ImportError, KeyError) as e:
        print(f"peregrine-load: {e}", file=sys.stderr)
        return EXIT_USAGE
    show = sys.stderr.isatty() if a.progress is None else a.progress
    line = _ProgressLine(a.warmup + a.duration, a.warmup) if show else None
    try:
        if work is None:
            result = run_camera(config, payload.images,
                                options=options_message(a.score_threshold, a.iou_threshold, a.max_detections,
                                                        a.classes),
                                description=payload.description, progress=line)
        else:
            result = run_load(config, work, progress=line)
    except (TimeoutError, grpc.RpcError, OSError) as e:  # the channel never became ready
        print(f"peregrine-load: cannot run against {a.url}: {e!r}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if line:
            line.close()
    return _report(result, a)


def _report(result: LoadResult, a: argparse.Namespace) -> int:
    print(result.format(a.slo_p99_ms))
    if not result.valid:
        print(f"peregrine-load: WARNING: this run is invalid: {result.invalid_reason}", file=sys.stderr)
    if a.json:
        result.write_json(a.json)
    if a.csv:
        result.write_csv(a.csv)
    if a.plot:
        try:
            result.plot(a.plot, a.slo_p99_ms)
        except ImportError:
            print("peregrine-load: --plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
    if a.slo_p99_ms is not None and not slo_met(result, a.slo_p99_ms):
        return EXIT_SLO
    return EXIT_OK
