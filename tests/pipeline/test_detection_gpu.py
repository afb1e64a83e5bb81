"""The detection pipeline on a CUDA instance: frames staged in pinned memory and uploaded once, letterbox,
model (IO binding) and NMS on the device; results equal the reference's and the CPU pipeline's.

Skipped where onnxruntime-gpu, CuPy or a GPU is absent (CI); run on a GPU machine with `pytest -m gpu`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pipeline_support
import pytest
from peregrine import kernels
from peregrine.server.config import load_model_config
from peregrine.server.core.types import FrameRequest
from peregrine.server.models.detection import DetectionModel
from peregrine.server.runtime.onnx import CUDA
from peregrine.server.scheduling.loop import EventLoopThread
from pipeline_support import Reference, assert_same_detections, photographs, pipeline_config, write_pipeline

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.gpu
detection_repo = pipeline_support.detection_repo
references = pipeline_support.references


def _gpu_available() -> bool:
    if CUDA not in ort.get_available_providers() or not kernels.cuda_available():
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


requires_gpu = pytest.mark.skipif(not _gpu_available(), reason="needs onnxruntime-gpu, CuPy, a CUDA GPU and the "
                                                                "CUDA kernels")


# The model runs on CUDA here (its own convolutions, maybe TF32): its boxes may move by more than the
# CPU's float32 rounding.
GPU_CORNER_PX = 1.0


def _pipeline(root: Path, name: str, detector: str, device: str) -> DetectionModel:
    write_pipeline(root, name, pipeline_config(detector) + f'\n[instance_group]\ndevice = "{device}"\n')
    return DetectionModel.load(name, 1, root / detector / "1", load_model_config(root / name))


@requires_gpu
@pytest.mark.parametrize(("detector", "model"), [("yolov8n", "det_v8"), ("yolov5n", "det_v5"), ("e2e", "det_e2e")])
def test_gpu_pipeline_matches_reference_and_cpu(detection_repo: Path, references: dict[str, Reference],
                                                detector: str, model: str) -> None:
    gpu = _pipeline(detection_repo, f"gpu_{model}", detector, "cuda")
    cpu = _pipeline(detection_repo, f"cpu_{model}", detector, "cpu")
    assert gpu.detector.instances.device == "cuda" and cpu.detector.instances.device == "cpu"
    photos = photographs()
    loop = EventLoopThread()
    loop.start()
    try:
        for p in (gpu, cpu):
            loop.run(p.start())
        names = (list(photos) * 2)[:16]  # 16 frames of nine sizes in one batch
        results = {}
        for label, p in (("gpu", gpu), ("cpu", cpu)):
            request = FrameRequest(p.name, frames=[photos[n] for n in names], options=p.default_options())
            results[label] = loop.run(p.detect(request))
        assert results["gpu"].times.batch_size == 16
        for i, name in enumerate(names):
            want = references[model](photos[name])
            assert_same_detections(results["gpu"].detections[i], want, f"gpu/{name}", corner_px=GPU_CORNER_PX)
            assert_same_detections(results["gpu"].detections[i], results["cpu"].detections[i], f"gpu-cpu/{name}",
                                   corner_px=GPU_CORNER_PX)
        # single frames too (batch of one, smallest buffers)
        one = loop.run(gpu.detect(FrameRequest(gpu.name, frames=[photos["coffee_tiny"]],
                                                 options=gpu.default_options())))
        assert_same_detections(one.detections[0], references[model](photos["coffee_tiny"]), corner_px=GPU_CORNER_PX)
        assert np.isfinite(one.detections[0]).all()
    finally:
        for p in (gpu, cpu):
            loop.run(p.stop())
        loop.stop()


@requires_gpu
@pytest.mark.parametrize("task", ["segment", "pose"])
def test_gpu_pipeline_serves_segmentation_and_pose_boxes(tmp_path: Path, task: str) -> None:
    """A segmentation or pose export on the device: its head brought to the host for the values after each
    kept box's columns (a mask's, keypoints), the boxes equal the plain detector's on the CPU (see
    test_pipeline_config), a pose box with its keypoints (see test_keypoints)."""
    from peregrine.modelgen import end2end_detector, yolov8_detector
    from support import onnx_models

    detector = (yolov8_detector(0, imgsz=192) if task == "segment"
                else end2end_detector(0, imgsz=192, max_detections=50, class_names=["person"]))
    extra, masks, meta = (32, 32, {}) if task == "segment" else (51, 0, {"kpt_shape": "[17, 3]"})
    onnx_models.write(tmp_path, "det", detector)
    onnx_models.write(tmp_path, "task", onnx_models.with_task_head(detector, task, extra=extra, masks=masks,
                                                                   metadata=meta))
    gpu = _pipeline(tmp_path, "gpu_task", "task", "cuda")
    cpu = _pipeline(tmp_path, "cpu_det", "det", "cpu")
    assert gpu.head.extra == extra
    photos = photographs()
    frames = list(photos.values())
    loop = EventLoopThread()
    loop.start()
    try:
        for p in (gpu, cpu):
            loop.run(p.start())
        got, want = (loop.run(p.detect(FrameRequest(p.name, frames=frames, options=p.default_options())))
                     for p in (gpu, cpu))
        for i, name in enumerate(photos):
            assert_same_detections(got.detections[i], want.detections[i], f"{task}/{name}", corner_px=GPU_CORNER_PX)
        if task == "pose":
            assert got.keypoints is not None
            assert [k.shape for k in got.keypoints] == [(len(d), 17, 3) for d in got.detections]
    finally:
        for p in (gpu, cpu):
            loop.run(p.stop())
        loop.stop()


@requires_gpu
def test_gpu_pipeline_serves_rtdetr_as_ultralytics(tmp_path: Path) -> None:
    """An RT-DETR export on the device: frames stretched on the device, the queries made into end-to-end
    rows with CuPy on the instance's stream; the reference's boxes (see test_rtdetr)."""
    import onnxruntime
    from support import onnx_models

    model = onnx_models.rtdetr_like()
    onnx_models.write(tmp_path, "rtdetr", model)
    gpu = _pipeline(tmp_path, "gpu_rtdetr", "rtdetr", "cuda")
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    photos = photographs()
    loop = EventLoopThread()
    loop.start()
    try:
        loop.run(gpu.start())
        got = loop.run(gpu.detect(FrameRequest(gpu.name, frames=list(photos.values()), options=gpu.default_options())))
        for i, (name, rgb) in enumerate(photos.items()):
            assert_same_detections(got.detections[i], pipeline_support.rtdetr_reference(session, rgb), f"rtdetr/{name}",
                                   corner_px=GPU_CORNER_PX)
    finally:
        loop.run(gpu.stop())
        loop.stop()
