"""Benchmark of peregrine.kernels against OpenCV, NumPy and numba (CPU) or CuPy element-wise code (--gpu).

Not a test: prints a markdown table and writes it into benchmarks/results/kernels.md (its own section of
that file; the rest of the file is kept), with the command line and the machine.

    python benchmarks/bench_kernels.py            # CPU: letterbox and decode+NMS
    python benchmarks/bench_kernels.py --gpu      # GPU: batch 16 of 1080p, needs only numpy, cupy, the module

Times are medians of repeated runs (wall clock on the CPU, CUDA events on the GPU). The letterbox runs with
each resize mode: "linear" (the default: cv2.resize INTER_LINEAR's bytes, which OpenCV's own baseline also
computes), "float" (the float blend) and, for one frame, "area" against OpenCV with INTER_AREA.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import peregrine.kernels as K

RESULTS = Path(__file__).parent / "results" / "kernels.md"
CONF, IOU, MAX_DET = 0.25, 0.7, 300


def median_ms(fn: Callable[[], object], repeat: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        match = re.search(r"model name\s*:\s*(.+)", text)
        if match:
            return match.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def frames_1080p(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """Smooth-ish 1080p BGR frames (a gradient plus noise), different per frame."""
    y, x = np.mgrid[0:1080, 0:1920]
    base = np.stack([x * 255 // 1919, y * 255 // 1079, (x + y) * 255 // 2998], axis=2).astype(np.int16)
    return [np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8) for _ in range(n)]


def detection_head(rng: np.random.Generator, batch: int, candidates: int = 500) -> np.ndarray:
    """[batch, 84, 8400] with about `candidates` anchors per image scoring above CONF."""
    anchors = 8400
    head = np.empty((batch, 84, anchors), np.float32)
    head[:, 0:2] = rng.uniform(0, 640, (batch, 2, anchors))
    head[:, 2:4] = rng.uniform(8, 160, (batch, 2, anchors))
    head[:, 4:] = rng.uniform(0, 0.2, (batch, 80, anchors))
    for b in range(batch):
        hot = rng.choice(anchors, candidates, replace=False)
        head[b, 4 + rng.integers(0, 80, candidates), hot] = rng.uniform(CONF + 0.01, 1, candidates)
    return head


# ---------------------------------------------------------------------------------------------------------
# CPU baselines
# ---------------------------------------------------------------------------------------------------------


def numpy_letterbox(frames: list[np.ndarray], size: int = 640) -> np.ndarray:
    """Bilinear letterbox written with NumPy gathers (float32), the plain-NumPy baseline."""
    out = np.full((len(frames), 3, size, size), 114 / 255, np.float32)
    for i, img in enumerate(frames):
        h, w = img.shape[:2]
        r = min(size / h, size / w)
        nw, nh = round(w * r), round(h * r)
        left, top = round((size - nw) / 2 - 0.1), round((size - nh) / 2 - 0.1)

        def axis(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            pos = ((np.arange(dst) + 0.5) * (src / dst) - 0.5).astype(np.float32)
            base = np.floor(pos)
            return (
                np.clip(base, 0, src - 1).astype(np.intp),
                np.clip(base + 1, 0, src - 1).astype(np.intp),
                (pos - base).astype(np.float32),
            )

        x0, x1, wx = axis(w, nw)
        y0, y1, wy = axis(h, nh)
        src = img[..., ::-1].astype(np.float32)
        top_row = src[y0][:, x0] + (src[y0][:, x1] - src[y0][:, x0]) * wx[None, :, None]
        bottom_row = src[y1][:, x0] + (src[y1][:, x1] - src[y1][:, x0]) * wx[None, :, None]
        resized = top_row + (bottom_row - top_row) * wy[:, None, None]
        out[i, :, top : top + nh, left : left + nw] = resized.transpose(2, 0, 1) / 255
    return out


def opencv_letterbox(frames: list[np.ndarray], size: int = 640, interpolation: int | None = None) -> np.ndarray:
    """ultralytics' LetterBox (cv2.resize + copyMakeBorder) and cv2.dnn.blobFromImages (/255, BGR->RGB, NCHW)."""
    import cv2

    interpolation = cv2.INTER_LINEAR if interpolation is None else interpolation
    padded = []
    for img in frames:
        h, w = img.shape[:2]
        r = min(size / h, size / w)
        nw, nh = round(w * r), round(h * r)
        dw, dh = (size - nw) / 2, (size - nh) / 2
        resized = cv2.resize(img, (nw, nh), interpolation=interpolation)
        padded.append(
            cv2.copyMakeBorder(
                resized,
                round(dh - 0.1),
                round(dh + 0.1),
                round(dw - 0.1),
                round(dw + 0.1),
                cv2.BORDER_CONSTANT,
                value=(114, 114, 114),
            )
        )
    return cv2.dnn.blobFromImages(padded, 1 / 255.0, swapRB=True)


def numpy_decode_nms(head: np.ndarray) -> np.ndarray:
    """The plain NumPy reference: decode, sort, classic greedy NMS loop."""
    rows = head[0].T
    scores = rows[:, 4:].max(axis=1)
    cls = rows[:, 4:].argmax(axis=1)
    idx = np.nonzero(scores > CONF)[0]
    idx = idx[np.lexsort((idx, -scores[idx]))]
    cx, cy, w, h = (rows[idx, j] for j in range(4))
    x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    areas = (x2 - x1) * (y2 - y1)
    c = cls[idx]
    suppressed = np.zeros(len(idx), bool)
    keep = []
    for i in range(len(idx)):
        if suppressed[i]:
            continue
        keep.append(i)
        if len(keep) == MAX_DET:
            break
        ww = np.maximum(0, np.minimum(x2[i], x2) - np.maximum(x1[i], x1))
        hh = np.maximum(0, np.minimum(y2[i], y2) - np.maximum(y1[i], y1))
        inter = ww * hh
        suppressed |= (inter / (areas[i] + areas - inter) > IOU) & (c == c[i])
    return idx[keep]


def opencv_decode_nms(head: np.ndarray) -> np.ndarray:
    """NumPy decode + cv2.dnn.NMSBoxesBatched (class-aware), as commonly written with OpenCV."""
    import cv2

    rows = head[0].T
    scores = rows[:, 4:].max(axis=1)
    idx = np.nonzero(scores > CONF)[0]
    cls = rows[idx, 4:].argmax(axis=1)
    xywh = rows[idx, :4].copy()
    xywh[:, :2] -= xywh[:, 2:] / 2
    keep = cv2.dnn.NMSBoxesBatched(xywh.tolist(), scores[idx].tolist(), cls.tolist(), CONF, IOU, top_k=MAX_DET)
    return idx[np.asarray(keep, np.intp).reshape(-1)]


def run_cpu(repeat: int) -> list[str]:
    import cv2

    threads = os.cpu_count() or 1
    rng = np.random.default_rng(0)
    lines = ["| operation | implementation | threads | median ms | vs OpenCV, same threads |", "|---|---|---|---|---|"]
    for batch in (1, 8):
        frames = frames_1080p(rng, batch)
        reps = repeat if batch == 1 else max(5, repeat // 4)
        out = np.empty((batch, 3, 640, 640), np.float32)
        opencv: dict[int, float] = {}
        for t in sorted({1, threads}):
            cv2.setNumThreads(t)
            opencv[t] = median_ms(partial(opencv_letterbox, frames), reps)
        rows: list[tuple[str, int, float, str]] = []
        for t in sorted({1, threads}):
            if K.has_native():
                K.set_cpu_tier(K.NATIVE_CPU)
                for resize in ("linear", "float"):
                    ms = median_ms(partial(K.letterbox_into, out, frames, num_threads=t, resize=resize), reps)
                    rows.append((f'native C++, resize="{resize}"', t, ms, f"{opencv[t] / ms:.2f}x faster"))
            rows.append(("OpenCV resize (INTER_LINEAR) + copyMakeBorder + blobFromImages", t, opencv[t], "1.00x"))
        K.set_cpu_tier(K.NUMBA)
        for resize in ("linear", "float"):
            ms = median_ms(partial(K.letterbox_into, out, frames, resize=resize), max(3, reps // 4))
            rows.append((f'numba tier, resize="{resize}"', 1, ms, f"{opencv[1] / ms:.2f}x"))
        ms = median_ms(partial(numpy_letterbox, frames), max(3, reps // 10), warmup=1)
        rows.append(("NumPy gathers (float blend)", 1, ms, f"{opencv[1] / ms:.2f}x"))
        if batch == 1:  # INTER_AREA: 1080p -> 640x360 is an exact 3x box in OpenCV and here
            cv2.setNumThreads(1)
            area_cv = median_ms(partial(opencv_letterbox, frames, interpolation=cv2.INTER_AREA), reps)
            rows.append(("OpenCV resize (INTER_AREA) + copyMakeBorder + blobFromImages", 1, area_cv, "1.00x"))
            if K.has_native():
                K.set_cpu_tier(K.NATIVE_CPU)
                ms = median_ms(partial(K.letterbox_into, out, frames, num_threads=1, resize="area"), reps)
                rows.append(('native C++, resize="area"', 1, ms, f"{area_cv / ms:.2f}x faster (vs INTER_AREA)"))
            K.set_cpu_tier(K.NUMBA)
            ms = median_ms(partial(K.letterbox_into, out, frames, resize="area"), max(3, reps // 4))
            rows.append(('numba tier, resize="area"', 1, ms, f"{area_cv / ms:.2f}x (vs INTER_AREA)"))
        for name, t, ms, ratio in rows:
            lines.append(
                f"| letterbox {batch}x1920x1080 BGR -> {batch}x3x640x640 RGB FP32 | {name} | {t} | {ms:.3f} | {ratio} |"
            )
    cv2.setNumThreads(1)
    head = detection_head(rng, 1)
    n_cand = int((head[0, 4:].max(axis=0) > CONF).sum())
    label = f"decode + NMS [1,84,8400], {n_cand} candidates > {CONF}"
    numpy_ms = median_ms(lambda: numpy_decode_nms(head), max(5, repeat // 5), warmup=1)
    det_rows: list[tuple[str, float]] = []
    if K.has_native():
        from peregrine.kernels import _native  # type: ignore[attr-defined]

        K.set_cpu_tier(K.NATIVE_CPU)
        ms = median_ms(
            lambda: K.detect_postprocess(head, conf=CONF, iou=IOU, max_det=MAX_DET, num_threads=1), repeat * 4
        )
        det_rows.append(("native C++ (peregrine.kernels.detect_postprocess)", ms))
        ms = median_ms(
            lambda: _native.detect_postprocess(head, 0, CONF, IOU, MAX_DET, 8192, None, False, None, None, 1),
            repeat * 4,
        )
        det_rows.append(("native C++ (binding called directly)", ms))
    K.set_cpu_tier(K.NUMBA)
    det_rows.append(("numba tier", median_ms(lambda: K.detect_postprocess(head, conf=CONF, iou=IOU), repeat)))
    det_rows.append(("NumPy decode + cv2.dnn.NMSBoxesBatched", median_ms(lambda: opencv_decode_nms(head), repeat)))
    det_rows.append(("NumPy reference (decode + greedy loop)", numpy_ms))
    lines += ["", "| operation | implementation | threads | median ms | vs NumPy |", "|---|---|---|---|---|"]
    for name, ms in det_rows:
        lines.append(f"| {label} | {name} | 1 | {ms:.3f} | {numpy_ms / ms:.1f}x faster |")
    return lines


# ---------------------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------------------


def cupy_letterbox(cp, batch, size: int = 640):  # type: ignore[no-untyped-def]
    """The same letterbox written with CuPy element-wise code over a [N, H, W, 3] batch."""
    n, h, w, _ = batch.shape
    r = min(size / h, size / w)
    nw, nh = round(w * r), round(h * r)
    left, top = round((size - nw) / 2 - 0.1), round((size - nh) / 2 - 0.1)

    def axis(src: int, dst: int):  # type: ignore[no-untyped-def]
        pos = ((cp.arange(dst) + 0.5) * (src / dst) - 0.5).astype(cp.float32)
        base = cp.floor(pos)
        return (cp.clip(base, 0, src - 1).astype(cp.intp), cp.clip(base + 1, 0, src - 1).astype(cp.intp), pos - base)

    x0, x1, wx = axis(w, nw)
    y0, y1, wy = axis(h, nh)
    src = batch[..., ::-1].astype(cp.float32)
    a, b = src[:, y0], src[:, y1]
    top_row = a[:, :, x0] + (a[:, :, x1] - a[:, :, x0]) * wx[None, None, :, None]
    bottom_row = b[:, :, x0] + (b[:, :, x1] - b[:, :, x0]) * wx[None, None, :, None]
    resized = top_row + (bottom_row - top_row) * wy[None, :, None, None]
    out = cp.full((n, 3, size, size), 114 / 255, cp.float32)
    out[:, :, top : top + nh, left : left + nw] = resized.transpose(0, 3, 1, 2) / 255
    return out


def cupy_decode_nms(cp, head):  # type: ignore[no-untyped-def]
    """Decode with CuPy, NMS as an IoU matrix on the GPU settled greedily on the host (one copy per image)."""
    results = []
    scores_all = head[:, 4:].max(axis=1)
    cls_all = head[:, 4:].argmax(axis=1)
    for b in range(head.shape[0]):
        idx = cp.nonzero(scores_all[b] > CONF)[0]
        scores = scores_all[b, idx]
        order = idx[cp.argsort(-scores, kind="stable")] if hasattr(cp, "argsort") else idx
        cx, cy, w, h = (head[b, j, order] for j in range(4))
        x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        areas = (x2 - x1) * (y2 - y1)
        ww = cp.maximum(0, cp.minimum(x2[:, None], x2[None]) - cp.maximum(x1[:, None], x1[None]))
        hh = cp.maximum(0, cp.minimum(y2[:, None], y2[None]) - cp.maximum(y1[:, None], y1[None]))
        inter = ww * hh
        c = cls_all[b, order]
        over = ((inter / (areas[:, None] + areas[None] - inter)) > IOU) & (c[:, None] == c[None])
        over = cp.triu(over, 1).get()
        suppressed = np.zeros(len(over), bool)
        keep = []
        for i in range(len(over)):
            if not suppressed[i]:
                keep.append(i)
                if len(keep) == MAX_DET:
                    break
                suppressed |= over[i]
        results.append(order[cp.asarray(keep, cp.intp)])
    return results


def run_gpu(repeat: int) -> list[str]:
    import cupy as cp

    if not K.cuda_available():
        raise SystemExit("--gpu: peregrine.kernels has no usable CUDA tier (build with nvcc, run on a GPU)")
    rng = np.random.default_rng(0)
    batch = 16
    frames_host = np.stack(frames_1080p(rng, 4) * 4)
    frames = cp.asarray(frames_host)
    frame_list = list(frames)
    head = cp.asarray(detection_head(rng, batch))
    out = cp.empty((batch, 3, 640, 640), cp.float32)
    stream = cp.cuda.Stream(non_blocking=True)

    def gpu_ms(fn: Callable[[], object], reps: int) -> float:
        with stream:
            for _ in range(3):
                fn()
            times = []
            for _ in range(reps):
                start, end = cp.cuda.Event(), cp.cuda.Event()
                start.record(stream)
                fn()
                end.record(stream)
                end.synchronize()
                times.append(cp.cuda.get_elapsed_time(start, end))
        return statistics.median(times)

    rows = [
        (
            "letterbox 16x1920x1080 BGR uint8 -> 16x3x640x640 RGB FP32",
            f'native CUDA, resize="{resize}"',
            gpu_ms(partial(K.letterbox_into, out, frame_list, resize=resize), repeat),
        )
        for resize in ("linear", "area", "float")
    ]
    rows += [
        (
            "letterbox 16x1920x1080 BGR uint8 -> 16x3x640x640 RGB FP32",
            "CuPy element-wise (float blend)",
            gpu_ms(lambda: cupy_letterbox(cp, frames), repeat),
        ),
        (
            "decode + NMS [16,84,8400], ~500 candidates/image",
            "native CUDA (detect_postprocess)",
            gpu_ms(lambda: K.detect_postprocess(head, conf=CONF, iou=IOU, max_det=MAX_DET), repeat),
        ),
        (
            "decode + NMS [16,84,8400], ~500 candidates/image",
            "CuPy decode + IoU matrix, host greedy",
            gpu_ms(lambda: cupy_decode_nms(cp, head), max(5, repeat // 5)),
        ),
    ]

    def both() -> None:
        K.letterbox_into(out, frame_list)  # resize="linear"
        K.detect_postprocess(head, conf=CONF, iou=IOU, max_det=MAX_DET)

    rows.append(("letterbox + decode/NMS, batch 16 (one stream)", 'native CUDA, resize="linear"', gpu_ms(both, repeat)))
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    lines = [
        f"GPU: {name}, CUDA runtime {cp.cuda.runtime.runtimeGetVersion()}, CuPy {cp.__version__}",
        "",
        "| operation | implementation | median ms (CUDA events) |",
        "|---|---|---|",
    ]
    lines += [f"| {op} | {impl} | {ms:.3f} |" for op, impl, ms in rows]
    return lines


def write_section(section: str, lines: list[str], output: Path) -> None:
    start, end = f"<!-- bench:{section}:start -->", f"<!-- bench:{section}:end -->"
    text = output.read_text() if output.exists() else "# Kernel benchmarks\n"
    block = "\n".join([start, *lines, end])
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="benchmark the CUDA tier on CuPy arrays")
    parser.add_argument("--repeat", type=int, default=50, help="timed runs per measurement (median reported)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="markdown file to update")
    args = parser.parse_args()
    command = "python " + " ".join([os.path.relpath(sys.argv[0]), *sys.argv[1:]])
    header = [
        f"## {'GPU' if args.gpu else 'CPU'} ({time.strftime('%Y-%m-%d')})",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} logical cores, Python {platform.python_version()}, "
        f"NumPy {np.__version__}, tier for NumPy arrays: {K.active_tier()}, "
        f"1-minute load average at start {os.getloadavg()[0]:.1f} (other processes share the machine "
        f"when this is above 0)",
        "",
    ]
    if not args.gpu:
        import cv2
        import numba

        header[-1:] = [f"OpenCV {cv2.__version__}, numba {numba.__version__}", ""]
    lines = header + (run_gpu(args.repeat) if args.gpu else run_cpu(args.repeat))
    print("\n".join(lines))
    write_section("gpu" if args.gpu else "cpu", lines, args.output)


if __name__ == "__main__":
    main()
