"""``peregrine quantize``: smaller, faster variants of an ONNX model, and what they cost in agreement.

    peregrine quantize --model yolov8n --repository models --variants fp16,int8 --calibration photos/ \\
        --report quantize.md

For ``--model`` (a model directory of the repository with an ONNX file) each variant is written as a sibling
model, ready to serve, with the model's own configuration:

- ``fp16``: weights and computation in half precision (ONNX Runtime's converter), inputs and outputs kept
  FP32 so the pipeline and clients do not change;
- ``int8``: static quantization in QDQ form (ONNX Runtime's quantization tools; weights per channel INT8,
  activations UINT8), calibrated on photographs (``--calibration DIR``, any format the pipeline reads;
  default: the project's packaged photographs), fed exactly as the repository's pipeline for the model feeds
  its frames: the same decoder (EXIF orientation applied), the pipeline's own letterbox kernel and its
  ``[detection]`` settings (input size, channel order, padding, scale, resize), or their defaults when no
  pipeline uses the model.

Every detection pipeline of the repository that uses the model gets the same variants (``<pipeline>_int8``,
its ``detector`` the ``<model>_int8``).

A number among the variants (``--variants int8,480,320``) is a smaller input size: the pipelines that use
the model get a sibling ``<pipeline>_480`` that letterboxes frames to 480 x 480 for the same detector
(``detection.input_size``). Only for a model whose input height and width are dynamic (ultralytics:
``export(format="onnx", dynamic=True)``), and in multiples of 32 (the detector's largest stride); a model
fixed at one size is refused with the reason. With ``--report``, each pipeline variant runs over the photographs
(``--images DIR``) beside the original and the report (Markdown, and a PNG of latency against agreement with
the Pareto front marked) gives, per variant: box-level precision and recall at IoU 0.5 against the FP32
pipeline's boxes (same class), the mean score shift of matched boxes, the recall per class, and latency
(one image at a time) and throughput on this machine. What cannot be done is refused with the reason.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config.model import DetectionConfig

VARIANTS = ("fp16", "int8")  # precisions; a number (a multiple of 32) is an input size
MAX_STRIDE = 32  # YOLO detectors' coarsest feature map: input sides are multiples of it
CONFIG_FILES = ("config.toml", "config.pbtxt")


class QuantizeError(Exception):
    """What cannot be done, and why."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="peregrine quantize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a model of the repository with an ONNX file (the detector)")
    p.add_argument("--repository", type=Path, default=Path("models"))
    p.add_argument("--variants", default="fp16,int8",
                   help=f"comma-separated: {', '.join(VARIANTS)}, or input sizes such as 480,320 (dynamic models)")
    p.add_argument("--calibration", type=Path, help="images for INT8 calibration (default: packaged photographs)")
    p.add_argument("--calibration-images", type=int, default=32, help="at most this many (default %(default)s)")
    p.add_argument("--report", type=Path, help="measure each variant and write this Markdown report (and a PNG)")
    p.add_argument("--images", type=Path, help="the held-out images the report measures on (default: the "
                                               "calibration images)")
    p.add_argument("--labels", type=Path, help="ground truth of --images for the report's mAP: a directory of "
                                               "YOLO .txt label files or a COCO instances .json (the accuracy "
                                               "extra: pycocotools)")
    p.add_argument("--force", action="store_true", help="overwrite variants that exist")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = sorted(v for v in set(variants) - set(VARIANTS) if input_size(v) is None)
        if unknown or not variants:
            raise QuantizeError(f"--variants: expected some of {', '.join(VARIANTS)} or input sizes (multiples of "
                                f"{MAX_STRIDE}, e.g. 480,320), got {args.variants!r}")
        if args.labels and not args.report:
            raise QuantizeError("--labels: the mAP is measured for the report; give --report too")
        with tempfile.TemporaryDirectory() as tmp:
            calibration = args.calibration or _packaged_photos(Path(tmp) / "photos")
            written = quantize(args.repository, args.model, variants, calibration, args.calibration_images,
                               args.force)
            for path in written:
                print(f"wrote {path}")
            if args.report:
                rows = measure(args.repository, args.model, variants, args.images or calibration, args.labels)
                write_report(rows, args.report)
                print(f"wrote {args.report}")
    except QuantizeError as e:
        print(f"peregrine quantize: {e}", file=sys.stderr)
        return 2
    return 0


def input_size(variant: str) -> int | None:
    """The input side a size variant names ("480" -> 480), or None when ``variant`` is not one."""
    if not (variant.isascii() and variant.isdigit()):
        return None
    side = int(variant)
    return side if MAX_STRIDE <= side <= 8192 and side % MAX_STRIDE == 0 else None


def _packaged_photos(directory: Path) -> Path:
    from peregrine.modelgen.photos import write_photos

    write_photos(directory)
    return directory


def _onnx_file(repository: Path, model: str) -> tuple[Path, Path]:
    """The model's directory and its latest version's ONNX file."""
    directory = repository / model
    if not directory.is_dir():
        raise QuantizeError(f"--model: no model directory '{model}' in {repository}")
    versions = sorted((int(d.name), d) for d in directory.iterdir() if d.is_dir() and d.name.isdigit())
    for _, version in reversed(versions):
        files = sorted(version.glob("*.onnx"))
        if files:
            return directory, files[0]
    raise QuantizeError(f"--model: '{model}' has no ONNX file in a version folder (only ONNX models are "
                        "quantized; a detection pipeline is quantized through its detector)")


def _variant_dir(repository: Path, name: str, force: bool) -> Path:
    target = repository / name
    if target.exists():
        if not force:
            raise QuantizeError(f"{target} exists: pass --force to overwrite it")
        shutil.rmtree(target)
    return target


def quantize(repository: Path, model: str, variants: list[str], calibration: Path, calibration_images: int,
             force: bool) -> list[Path]:
    """Write each variant of ``model`` and of the detection pipelines that use it; the directories written."""
    import onnx

    directory, source = _onnx_file(repository, model)
    graph = onnx.load(str(source))
    written = []
    for variant in _progress(variants):
        side = input_size(variant)
        if side is not None:
            written += _size_variants(repository, model, graph, side, force)
            continue
        target = _variant_dir(repository, f"{model}_{variant}", force)
        (target / "1").mkdir(parents=True)
        out = target / "1" / "model.onnx"
        if variant == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            onnx.save(convert_float_to_float16(graph, keep_io_types=True), str(out))
        else:
            _int8(source, out, calibration, calibration_images, _detection_config(repository, model))
        for name in CONFIG_FILES:
            if (directory / name).is_file():
                text = (directory / name).read_text()
                (target / name).write_text(re.sub(r'(?m)^(\s*name\s*[:=]\s*)"[^"]*"', rf'\1"{target.name}"', text))
        written.append(target)
        for pipeline in _pipelines_using(repository, model):
            copy = _variant_dir(repository, f"{pipeline.name}_{variant}", force)
            shutil.copytree(pipeline, copy)
            config = copy / "config.toml"
            config.write_text(re.sub(rf'(?m)^(\s*detector\s*=\s*)"{re.escape(model)}"', rf'\1"{target.name}"',
                                     config.read_text()))
            written.append(copy)
    return written


def _size_variants(repository: Path, model: str, graph: Any, side: int, force: bool) -> list[Path]:
    """``<pipeline>_<side>`` for each pipeline using ``model``: the same detector fed side x side frames."""
    import tomllib

    initializers = {i.name for i in graph.graph.initializer}
    image = next((i for i in graph.graph.input if i.name not in initializers), None)
    dims = image.type.tensor_type.shape.dim if image is not None else []
    if len(dims) != 4:
        raise QuantizeError(f"{side}: an input size needs a model with one NCHW image input; '{model}' has "
                            f"{'none' if image is None else f'{image.name} with {len(dims)} dimensions'}")
    fixed = [d.dim_value for d in dims[2:] if d.dim_value > 0 and not d.dim_param]
    if fixed:
        shape = "x".join(str(d.dim_value or d.dim_param or "?") for d in dims[2:])
        raise QuantizeError(f"{side}: '{model}' takes {shape} images only (its input '{image.name}' has a fixed "
                            "height or width); smaller input sizes need a model exported with dynamic sizes "
                            "(ultralytics: export(format='onnx', dynamic=True))")
    pipelines = _pipelines_using(repository, model)
    if not pipelines:
        raise QuantizeError(f"{side}: an input size is a detection pipeline's setting, and no pipeline of the "
                            f"repository uses '{model}'")
    written = []
    for pipeline in pipelines:
        copy = _variant_dir(repository, f"{pipeline.name}_{side}", force)
        shutil.copytree(pipeline, copy)
        config = copy / "config.toml"
        text = config.read_text()
        line = f"input_size = [{side}, {side}]"
        if re.search(r"(?m)^\s*input_size\s*=", text):
            text = re.sub(r"(?m)^\s*input_size\s*=.*$", line, text, count=1)
        else:
            text = re.sub(r"(?m)^\[detection\][^\n]*\n", lambda m, line=line: f"{m.group(0)}{line}\n", text,
                          count=1)
        if tomllib.loads(text).get("detection", {}).get("input_size") != [side, side]:
            shutil.rmtree(copy)
            raise QuantizeError(f"{pipeline / 'config.toml'}: could not set detection.input_size in it")
        config.write_text(text)
        written.append(copy)
    return written


def _pipelines_using(repository: Path, model: str) -> list[Path]:
    import tomllib

    found = []
    for config in sorted(repository.glob("*/config.toml")):
        try:
            data = tomllib.loads(config.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            continue
        uses = data.get("platform") == "peregrine_detection" and data.get("detection", {}).get("detector") == model
        if uses and not re.search(r"_(fp16|int8|\d+)$", config.parent.name):  # not a variant written before
            found.append(config.parent)
    return found


def _int8(source: Path, out: Path, calibration: Path, limit: int, detection: DetectionConfig) -> None:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from .jobs.sources import IMAGE_SUFFIXES, is_image_name

    session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].type != "tensor(float)":
        raise QuantizeError(f"int8: calibration feeds images to one FP32 NCHW input; {source} has "
                            f"{[(i.name, i.type, i.shape) for i in inputs]}")
    name, shape = inputs[0].name, inputs[0].shape
    if all(isinstance(d, int) for d in shape[2:]):
        height, width = shape[2], shape[3]
    else:  # dynamic sizes: the pipeline's input size, else ultralytics' default
        height, width = detection.input_size or (640, 640)
    stretch = stretches(detection, session.get_outputs()[0].shape, session.get_modelmeta().custom_metadata_map)
    images = [p for p in sorted(calibration.rglob("*")) if p.is_file() and is_image_name(p.name)][:limit]
    if not images:
        raise QuantizeError(f"int8: no images ({', '.join(IMAGE_SUFFIXES)}) to calibrate on in {calibration}")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = ({name: calibration_input(p, height, width, detection, stretch)} for p in images)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:  # shapes inferred and the graph optimised first, as ORT advises
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared))
        if name_nodes(graph):  # the head is kept FP32 by naming its nodes: every node needs its own name
            onnx.save(graph, str(prepared))
        quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=sorted(head_nodes(graph)))


def stretches(detection: DetectionConfig, output_shape: Any, metadata: dict[str, str]) -> bool:
    """Whether the pipeline stretches frames to the model's input instead of letterboxing them (an RT-DETR
    export's, by its layout setting or, left to auto, by its output and metadata): calibration feeds them so."""
    from .pipeline.head import RTDETR, rtdetr_export

    return detection.layout == RTDETR or (detection.layout == "auto" and rtdetr_export(output_shape, metadata))


def head_nodes(model: Any) -> set[str]:
    """The detection head: the nodes between the last learned convolutions and the outputs, those
    convolutions included (walking back from each output, through everything but a convolution with more
    than one output channel: a box decoder's fixed DFL convolution has one). Kept in FP32 by INT8
    quantization: the head's logits decide which boxes pass the score threshold."""
    producers = {out: node for node in model.graph.node for out in node.output}
    weights = {init.name: init for init in model.graph.initializer}
    head: set[str] = set()
    seen: set[int] = set()  # by node, not name: a graph may leave names empty (see name_nodes)
    stack = [output.name for output in model.graph.output]
    while stack:
        node = producers.get(stack.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        head.add(node.name)
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in weights \
                and weights[node.input[1]].dims[0] > 1:
            continue
        stack.extend(node.input)
    return head


def name_nodes(model: Any) -> bool:
    """Give every node of ``model`` a name of its own (ONNX allows none, or the same twice; quantization
    excludes nodes by name, and the walk above found an unnamed head only as far as its first unnamed node).
    True when a name was given."""
    taken = {node.name for node in model.graph.node if node.name}
    kept: set[str] = set()  # names whose first node keeps them
    renamed = False
    for i, node in enumerate(model.graph.node):
        if node.name and node.name not in kept:
            kept.add(node.name)
            continue
        name = f"{node.op_type}_{i}"
        while name in taken:
            name += "_"
        node.name, renamed = name, True
        taken.add(name)
    return renamed


def _detection_config(repository: Path, model: str) -> DetectionConfig:
    """The ``[detection]`` settings of the first pipeline of the repository that uses ``model`` (defaults
    when none does, or its configuration does not parse: the pipeline itself then says why when loaded)."""
    import tomllib

    from pydantic import ValidationError

    for pipeline in _pipelines_using(repository, model):
        try:
            return DetectionConfig(**tomllib.loads((pipeline / "config.toml").read_text()).get("detection", {}))
        except (tomllib.TOMLDecodeError, ValidationError, TypeError):
            continue
    return DetectionConfig()


def calibration_input(path: Path, height: int, width: int, detection: DetectionConfig,
                      stretch: bool = False) -> np.ndarray:
    """An image file as the detection pipeline feeds it to the model: decoded by the pipeline's decoder,
    letterboxed (``stretch``: resized to the input, as for RT-DETR) by its kernel with ``detection``'s
    settings; float32 [1, 3, height, width]."""
    from .core.errors import InvalidArgument
    from .pipeline.images import decode_image
    from .pipeline.stages import Letterbox

    try:
        frame = decode_image(path.read_bytes(), path.name, detection.frame_channel_order, detection.max_pixels)
    except InvalidArgument as e:
        raise QuantizeError(f"int8: calibration image {path}: {e}") from None
    rows = np.empty((1, 3, height, width), np.float32)
    Letterbox(detection, stretch)(rows, [frame])
    return rows


def _progress(items: list[str]) -> Iterator[str]:
    try:
        from tqdm import tqdm
    except ImportError:
        yield from items
        return
    yield from tqdm(items, unit="variant", disable=not sys.stderr.isatty())


# -- measuring ---------------------------------------------------------------------------------------
@dataclass
class Row:
    name: str
    precision: float
    recall: float
    score_shift: float
    per_class_recall: dict[str, float]
    latency_ms: float
    images_per_s: float
    map50_95: float = math.nan  # against --labels (NaN: none given)
    map50: float = math.nan


def measure(repository: Path, model: str, variants: list[str], images: Path, labels: Path | None = None
            ) -> list[Row]:
    """Each pipeline (or, with no pipeline, nothing to compare boxes with) against its FP32 original, and
    against ``labels`` when given."""
    pipelines = _pipelines_using(repository, model)
    if not pipelines:
        raise QuantizeError(f"--report: no detection pipeline uses '{model}', so there are no boxes to compare")
    truth = _ground_truth(labels, images, repository, model) if labels is not None else None
    rows = []
    for pipeline in pipelines:
        for name in [pipeline.name, *(f"{pipeline.name}_{v}" for v in variants)]:
            boxes, latency, rate = _run(repository, name, images)
            if name == pipeline.name:
                reference = boxes
                row = Row(name, 1.0, 1.0, 0.0, {}, latency, rate)
            else:
                precision, recall, shift, per_class = agreement(reference, boxes)
                row = Row(name, precision, recall, shift, per_class, latency, rate)
            if truth is not None:
                from .accuracy import mean_average_precision

                row.map50_95, row.map50 = mean_average_precision(truth, {Path(k).name: v for k, v in boxes.items()})
            rows.append(row)
    return rows


def _ground_truth(labels: Path, images: Path, repository: Path, model: str) -> Any:
    """The ground truth of the measured images, classes named as the model names them."""
    import onnx

    from .accuracy import LabelError, read_labels
    from .jobs import sources
    from .runtime.metadata import parse_labels

    if not labels.exists():
        raise QuantizeError(f"--labels: {labels} does not exist")
    try:
        import pycocotools  # noqa: F401
    except ImportError:
        raise QuantizeError("--labels: mAP needs pycocotools: pip install 'peregrine[accuracy]'") from None
    _, source = _onnx_file(repository, model)
    names = parse_labels({p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props})
    try:
        files = [p for p in sorted(images.rglob("*")) if sources.is_image_name(p.name)]
        return read_labels(labels, files, names)
    except (LabelError, OSError) as e:
        raise QuantizeError(f"--labels: {e}") from None


def _run(repository: Path, pipeline: str, images: Path) -> tuple[dict[str, list[dict[str, Any]]], float, float]:
    """The pipeline's boxes per image, its median latency one image at a time once warm (ms), and its
    throughput (images/s, ``peregrine batch``)."""
    from .batch import run

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.jsonl"
        full = run(["--model", pipeline, "--repository", str(repository), "--input", str(images), "--output",
                    str(out), "--no-progress"])
        boxes = {line["source"]: line.get("boxes", []) for line in map(json.loads, out.read_text().splitlines())}
    return boxes, _latency_ms(repository, pipeline, images), float(full["items_per_s"])


def _latency_ms(repository: Path, pipeline: str, images: Path) -> float:
    """The median time of one image through the pipeline, alone, in this process, after two warm-up runs."""
    import time

    from .app import PeregrineServer
    from .config.server import ServerConfig
    from .jobs import sources
    from .jobs.service import LocalCall, run_item

    files = [p for p in sorted(images.rglob("*")) if sources.is_image_name(p.name)]
    items = [sources.Item(i, p.name, encoded=p.read_bytes()) for i, p in enumerate(files)]
    server = PeregrineServer(ServerConfig(model_repository=repository, grpc_port=0, http_port=None,
                                          model_control_mode="explicit", load_models=[pipeline]))
    server.start_offline()

    async def timed() -> list[float]:
        times = []
        for item in [*items[:2], *items]:
            start = time.perf_counter()
            await run_item(server.dataplane, LocalCall("quantize"), pipeline, "", item, item.name, background=False)
            times.append((time.perf_counter() - start) * 1000)
        return times[2:]

    try:
        return float(np.median(server.loop.run(timed())))
    finally:
        server.stop(grace=0)


def _iou(a: dict[str, float], b: dict[str, float]) -> float:
    w = min(a["x2"], b["x2"]) - max(a["x1"], b["x1"])
    h = min(a["y2"], b["y2"]) - max(a["y1"], b["y1"])
    inter = max(w, 0) * max(h, 0)
    union = ((a["x2"] - a["x1"]) * (a["y2"] - a["y1"]) + (b["x2"] - b["x1"]) * (b["y2"] - b["y1"]) - inter)
    return inter / union if union > 0 else 0.0


def agreement(reference: dict[str, list[dict[str, Any]]], candidate: dict[str, list[dict[str, Any]]],
              threshold: float = 0.5) -> tuple[float, float, float, dict[str, float]]:
    """Box-level precision and recall of ``candidate`` against ``reference`` (same image, same class, IoU at
    least ``threshold``; greedy by score), the mean absolute score shift of matched boxes, recall per class.
    Precision is NaN when the candidate has no box at all."""
    matched = ref_total = cand_total = 0
    shifts: list[float] = []
    per_class: dict[str, list[int]] = {}
    for source, ref_boxes in reference.items():
        cand_boxes = sorted(candidate.get(source, []), key=lambda b: -b["score"])
        used = [False] * len(cand_boxes)
        ref_total += len(ref_boxes)
        cand_total += len(cand_boxes)
        for ref in sorted(ref_boxes, key=lambda b: -b["score"]):
            hit = per_class.setdefault(ref["label"], [0, 0])
            hit[1] += 1
            best, best_iou = -1, threshold
            for i, cand in enumerate(cand_boxes):
                if not used[i] and cand["class_id"] == ref["class_id"] and (iou := _iou(ref, cand)) >= best_iou:
                    best, best_iou = i, iou
            if best >= 0:
                used[best] = True
                matched += 1
                hit[0] += 1
                shifts.append(abs(cand_boxes[best]["score"] - ref["score"]))
    precision = matched / cand_total if cand_total else math.nan  # no boxes at all: no precision to speak of
    recall = matched / ref_total if ref_total else 1.0
    return precision, recall, float(np.mean(shifts)) if shifts else 0.0, {c: h / n for c, (h, n) in per_class.items()}


def pareto(rows: list[Row]) -> set[str]:
    """The variants no other beats on both latency and recall."""
    return {r.name for r in rows if not any((o.latency_ms <= r.latency_ms and o.recall >= r.recall)
                                            and (o.latency_ms < r.latency_ms or o.recall > r.recall) for o in rows)}


def _number(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.3f}"


def write_report(rows: list[Row], path: Path) -> None:
    front = pareto(rows)
    labelled = any(not math.isnan(r.map50_95) for r in rows)
    lines = ["# Quantized variants: agreement with FP32 and latency", "",
             "Agreement: the variant's boxes against the FP32 pipeline's on the same images (same class, IoU ≥ 0.5). "
             "Latency: the median of one image at a time, warm, through the pipeline in this process; throughput: "
             "peregrine batch over the images, as many in flight as the model batches (loading not counted)."
             + (" mAP: against the labels given (--labels), COCO's mAP at IoU 0.50:0.95 and at 0.50 (pycocotools)."
                if labelled else ""), "",
             "| pipeline | precision | recall | mean score shift | latency ms | images/s | Pareto front |"
             + (" mAP50-95 | mAP50 |" if labelled else ""),
             "|---|---|---|---|---|---|---|" + ("---|---|" if labelled else "")]
    for r in rows:
        precision = "—" if math.isnan(r.precision) else f"{r.precision:.3f}"
        lines.append(f"| {r.name} | {precision} | {r.recall:.3f} | {r.score_shift:.4f} | {r.latency_ms:.1f} "
                     f"| {r.images_per_s:.1f} | {'yes' if r.name in front else ''} |"
                     + (f" {_number(r.map50_95)} | {_number(r.map50)} |" if labelled else ""))
    classes = sorted({c for r in rows for c in r.per_class_recall})
    if classes:
        lines += ["", "Recall per class (the FP32 pipeline's boxes of that class found again):", "",
                  "| class | " + " | ".join(r.name for r in rows[1:]) + " |", "|---|" + "---|" * (len(rows) - 1)]
        for c in classes:
            lines.append(f"| {c} | " + " | ".join(f"{r.per_class_recall.get(c, float('nan')):.2f}" for r in rows[1:])
                         + " |")
    png = _plot(rows, front, path.with_suffix(".png"))
    if png is not None:
        lines += ["", f"![latency against recall]({png.name})"]
    path.write_text("\n".join(lines) + "\n")


def _plot(rows: list[Row], front: set[str], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 5), constrained_layout=True)
    for r in rows:
        ax.scatter(r.latency_ms, r.recall, s=60, color="tab:red" if r.name in front else "tab:blue")
        ax.annotate(r.name, (r.latency_ms, r.recall), textcoords="offset points", xytext=(5, 5), fontsize=8)
    on_front = sorted((r for r in rows if r.name in front), key=lambda r: r.latency_ms)
    ax.plot([r.latency_ms for r in on_front], [r.recall for r in on_front], color="tab:red", label="Pareto front")
    ax.set_xlabel("latency, one image (ms)")
    ax.set_ylabel("recall against FP32 (IoU 0.5)")
    ax.legend()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
