"""DetectionClient and AsyncDetectionClient against a real in-process server with detection pipelines:
images from paths, bytes and arrays, several per request, options, errors with their status, deadlines,
streams (order, drops, deadlines, bad frames), retries of Detect only."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import client_support
import grpc
import numpy as np
import pytest
import skimage.data
from client_support import serve_detection
from peregrine.client import (
    NO_RETRY,
    AsyncDetectionClient,
    Detection,
    DetectionClient,
    FrameResult,
    FrameStatus,
    PeregrineClientError,
    RetryPolicy,
)
from peregrine.proto import detection_pb2 as det
from peregrine.proto import detection_pb2_grpc as det_grpc
from PIL import Image

# Fixtures shared with the other client tests (see client_support).
detection_server = client_support.detection_server
detection_url = client_support.detection_url

ASTRONAUT = skimage.data.astronaut()  # 512 x 512
COFFEE = skimage.data.coffee()  # 400 x 600
CHELSEA = skimage.data.chelsea()  # 300 x 451


def encode(rgb: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt)
    return buf.getvalue()


def boxes(dets: list[Detection]) -> np.ndarray:
    return np.array([[d.x1, d.y1, d.x2, d.y2, d.score, d.class_id] for d in dets], np.float32).reshape(-1, 6)


@pytest.fixture(scope="module")
def client(detection_url: str) -> Iterator[DetectionClient]:
    with DetectionClient(detection_url, deadline_s=60) as c:
        yield c


# -- Detect ----------------------------------------------------------------------------------------
def test_a_path_bytes_and_an_array_give_the_same_boxes(client: DetectionClient, tmp_path: Path) -> None:
    png = encode(ASTRONAUT)  # lossless: the server decodes exactly the array's pixels
    (tmp_path / "astronaut.png").write_bytes(png)
    from_array = client.detect(ASTRONAUT, model="det")
    assert len(from_array) >= 5, "the photograph should give the detector something to find"
    for other in (client.detect(tmp_path / "astronaut.png", model="det"),
                  client.detect(str(tmp_path / "astronaut.png"), model="det"),
                  client.detect(png, model="det"), client.detect(memoryview(png), model="det")):
        np.testing.assert_array_equal(boxes(other), boxes(from_array))
    b = boxes(from_array)
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= 512).all() and (b[:, 0] < b[:, 2]).all()
    assert ((b[:, 4] >= 0.25) & (b[:, 4] <= 1)).all()  # the model's default score threshold
    assert all(d.label and d.label != f"class{d.class_id}" for d in from_array)  # COCO names from metadata


def test_grey_and_rgba_arrays_are_sent_raw(client: DetectionClient) -> None:
    grey = np.ascontiguousarray(ASTRONAUT[:, :, 1])
    as_rgb = boxes(client.detect(np.repeat(grey[:, :, None], 3, axis=2), model="det"))
    np.testing.assert_array_equal(boxes(client.detect(grey, model="det")), as_rgb)
    np.testing.assert_array_equal(boxes(client.detect(grey[:, :, None], model="det")), as_rgb)
    rgba = np.concatenate([ASTRONAUT, np.full((512, 512, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(boxes(client.detect(rgba, model="det")), boxes(client.detect(ASTRONAUT, model="det")))
    # A non-contiguous view is sent as its pixels, not as its buffer.
    np.testing.assert_array_equal(boxes(client.detect(ASTRONAUT[:, ::-1], model="det")),
                                  boxes(client.detect(np.ascontiguousarray(ASTRONAUT[:, ::-1]), model="det")))


def test_several_images_in_one_request_come_back_in_order_with_timings(client: DetectionClient) -> None:
    images = [ASTRONAUT, encode(COFFEE), encode(CHELSEA, "JPEG")]
    result = client.detect_with_timings(images, model="det", request_id="r-1")
    assert result.image_sizes == [(512, 512), (400, 600), (300, 451)]
    assert result.model == "det" and result.version == "1" and result.request_id == "r-1"
    for image, dets in zip(images, result.detections, strict=True):
        np.testing.assert_array_equal(boxes(dets), boxes(client.detect(image, model="det")))
    t = result.timings
    assert t.batch_size == 3
    assert t.infer_us > 0 and t.decode_us > 0
    assert t.total_us >= t.queue_us + t.pre_us + t.infer_us + t.post_us
    assert client.detect_many(images, model="det") == result.detections


def test_request_options_override_the_models_defaults(client: DetectionClient) -> None:
    default = client.detect(COFFEE, model="det")
    strict = client.detect(COFFEE, model="det", score_threshold=0.5)
    assert 0 < len(strict) < len(default) and min(d.score for d in strict) > 0.5
    assert set(strict) <= set(default)  # the same boxes, fewer of them
    assert client.detect(COFFEE, model="det", max_detections=2) == default[:2]  # best first
    cls = default[0].class_id
    only = client.detect(COFFEE, model="det", classes=[cls])
    assert only and {d.class_id for d in only} == {cls}
    # No NMS at all (nothing overlaps by more than 100 %) keeps at least as many boxes.
    assert len(client.detect(COFFEE, model="det", iou_threshold=1.0)) >= len(default)


@pytest.mark.parametrize(("image", "kwargs", "code"), [
    (b"\xff\xd8\xff\xe0 this is no JPEG", {}, grpc.StatusCode.INVALID_ARGUMENT),
    (encode(COFFEE, "JPEG")[:2000], {}, grpc.StatusCode.INVALID_ARGUMENT),  # truncated
    (b"", {}, grpc.StatusCode.INVALID_ARGUMENT),
    (np.zeros((0, 10, 3), np.uint8), {}, grpc.StatusCode.INVALID_ARGUMENT),
    (np.zeros((10, 10, 2), np.uint8), {}, grpc.StatusCode.INVALID_ARGUMENT),  # two channels
    (ASTRONAUT, {"score_threshold": 1.5}, grpc.StatusCode.INVALID_ARGUMENT),
    (ASTRONAUT, {"classes": [1000]}, grpc.StatusCode.INVALID_ARGUMENT),
    (ASTRONAUT, {"model": "no_such_model"}, grpc.StatusCode.NOT_FOUND),
    (ASTRONAUT, {"model": "plain"}, grpc.StatusCode.INVALID_ARGUMENT),  # not a detection pipeline
    # The pipeline holds a lone image for 400 ms waiting for a fuller batch: past a 50 ms deadline.
    (ASTRONAUT, {"model": "det_slow", "deadline_s": 0.05}, grpc.StatusCode.DEADLINE_EXCEEDED),
])
def test_failures_raise_with_their_status(client: DetectionClient, image: Any, kwargs: dict[str, Any],
                                          code: grpc.StatusCode) -> None:
    kwargs.setdefault("model", "det")
    with pytest.raises(PeregrineClientError) as e:
        client.detect(image, **kwargs)
    assert e.value.code == code and e.value.method == "Detect"
    assert client.detect(CHELSEA, model="det") is not None  # the server goes on


def test_images_the_protocol_cannot_carry_fail_before_sending(client: DetectionClient, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        client.detect(ASTRONAUT.astype(np.float32), model="det")
    with pytest.raises(ValueError):
        client.detect(np.zeros((2, 4, 4, 3), np.uint8), model="det")
    with pytest.raises(TypeError):
        client.detect(42, model="det")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        client.detect_many(ASTRONAUT, model="det")  # one image where a sequence is expected
    with pytest.raises(FileNotFoundError):
        client.detect(tmp_path / "missing.jpg", model="det")


# -- DetectStream ----------------------------------------------------------------------------------
def lockstep(client: DetectionClient, frames: list[Any], **kwargs: Any) -> list[FrameResult]:
    """Stream ``frames`` one at a time: each is sent when the previous one's result has come back, so the
    server never has a frame waiting and none can be dropped (latest frame wins drops only waiting ones)."""
    answered = threading.Semaphore(0)

    def source() -> Iterator[Any]:
        for i, frame in enumerate(frames):
            if i:
                assert answered.acquire(timeout=60)
            yield frame

    results = []
    for r in client.stream(source(), **kwargs):
        results.append(r)
        answered.release()
    return results


def test_a_stream_answers_every_frame_in_order(client: DetectionClient) -> None:
    frames: list[Any] = [ASTRONAUT, (encode(COFFEE, "JPEG"), 1_000), CHELSEA, (ASTRONAUT, 2_000), encode(CHELSEA)]
    results = lockstep(client, frames, model="det", deadline_s=30)
    assert [r.sequence for r in results] == [0, 1, 2, 3, 4]
    assert all(r.status is FrameStatus.OK and r.ok and r.error is None for r in results)
    assert results[1].capture_time_us == 1_000 and results[3].capture_time_us == 2_000
    assert results[0].capture_time_us > 0  # stamped by the client
    named = lockstep(client, [(CHELSEA, 5, "camera_left"), CHELSEA], model="det")
    assert (named[0].capture_time_us, named[0].frame_id) == (5, "camera_left") and named[1].frame_id == ""
    assert [r.image_size for r in results] == [(512, 512), (400, 600), (300, 451), (512, 512), (300, 451)]
    assert all(r.timings is not None and r.timings.infer_us > 0 for r in results)
    assert all(r.latency_s > 0 and r.dropped_total == 0 for r in results)
    np.testing.assert_array_equal(boxes(results[0].detections), boxes(client.detect(ASTRONAUT, model="det")))
    strict = lockstep(client, [COFFEE], model="det", score_threshold=0.5, max_detections=3)[0]
    assert strict.detections == client.detect(COFFEE, model="det", score_threshold=0.5, max_detections=3)


def test_a_server_that_falls_behind_drops_the_oldest_waiting_frames(client: DetectionClient) -> None:
    # det_slow runs one frame per stream at a time (each waits 400 ms for a batch) and keeps one waiting:
    # ten frames sent at once leave the first (or second) running and every newer one pushing out the last.
    results = list(client.stream([CHELSEA] * 10, model="det_slow"))
    assert [r.sequence for r in results] == list(range(10))
    statuses = [r.status for r in results]
    assert set(statuses) <= {FrameStatus.OK, FrameStatus.DROPPED}
    assert statuses[-1] is FrameStatus.OK  # latest frame wins: nothing newer pushed it out
    dropped = [r for r in results if r.status is FrameStatus.DROPPED]
    assert len(dropped) >= 7
    assert all(r.error is not None and r.error.code == grpc.StatusCode.ABORTED and not r.detections
               for r in dropped)
    assert [r.dropped_total for r in dropped] == sorted(r.dropped_total for r in dropped)
    assert max(r.dropped_total for r in results) == len(dropped)


def test_a_frame_past_its_deadline_is_not_run(client: DetectionClient) -> None:
    # One frame at a time, each held 400 ms for a batch: every one expires after 50 ms, unrun.
    results = lockstep(client, [CHELSEA] * 3, model="det_slow", deadline_s=0.05)
    assert [r.sequence for r in results] == [0, 1, 2]
    assert all(r.status is FrameStatus.DEADLINE_EXCEEDED and not r.detections for r in results)
    assert all(r.error is not None and r.error.code == grpc.StatusCode.DEADLINE_EXCEEDED for r in results)


def test_bad_frames_fail_alone_and_the_stream_goes_on(client: DetectionClient) -> None:
    frames = [CHELSEA, b"not an image", np.zeros((8, 8, 5), np.uint8), CHELSEA]
    results = lockstep(client, frames, model="det")
    assert [r.status for r in results] == [FrameStatus.OK, FrameStatus.ERROR, FrameStatus.ERROR, FrameStatus.OK]
    assert results[1].error is not None and results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert results[2].error is not None and results[2].error.code == grpc.StatusCode.INVALID_ARGUMENT
    unknown = lockstep(client, [CHELSEA, CHELSEA], model="no_such_model")
    assert [(r.status, r.error.code if r.error else None) for r in unknown] == [
        (FrameStatus.ERROR, grpc.StatusCode.NOT_FOUND)] * 2


def test_a_failing_frame_source_ends_the_stream_after_its_results(client: DetectionClient) -> None:
    answered = threading.Semaphore(0)

    def camera() -> Iterator[np.ndarray]:
        yield CHELSEA
        assert answered.acquire(timeout=60)
        yield CHELSEA
        assert answered.acquire(timeout=60)
        raise RuntimeError("camera unplugged")

    got = []
    with pytest.raises(RuntimeError, match="unplugged"):
        for r in client.stream(camera(), model="det"):
            got.append((r.sequence, r.status))
            answered.release()
    assert got == [(0, FrameStatus.OK), (1, FrameStatus.OK)]
    with pytest.raises(ValueError):  # a frame the client cannot send
        list(client.stream([CHELSEA, CHELSEA.astype(np.float32)], model="det"))


def test_stopping_the_iteration_cancels_the_stream(client: DetectionClient) -> None:
    sent = threading.Event()

    def endless() -> Iterator[np.ndarray]:
        while True:
            sent.set()
            yield CHELSEA

    stream = client.stream(endless(), model="det_slow")
    first = next(stream)
    stream.close()  # cancels the call; the endless camera is no longer read
    assert first.sequence == 0 and sent.is_set()
    assert client.detect(CHELSEA, model="det") is not None


# -- asyncio ---------------------------------------------------------------------------------------
def test_the_async_client_does_the_same(detection_url: str, client: DetectionClient) -> None:
    async def frames(answered: asyncio.Semaphore) -> AsyncIterator[Any]:
        for i, f in enumerate([ASTRONAUT, encode(COFFEE, "JPEG")]):
            if i:
                await answered.acquire()  # lock-step, as lockstep() above
            yield f, 10 + i

    async def main() -> None:
        async with AsyncDetectionClient(detection_url, deadline_s=60) as ac:
            assert boxes(await ac.detect(ASTRONAUT, model="det")).tolist() == \
                boxes(client.detect(ASTRONAUT, model="det")).tolist()
            many = await ac.detect_many([ASTRONAUT, COFFEE], model="det", score_threshold=0.4)
            assert many == client.detect_many([ASTRONAUT, COFFEE], model="det", score_threshold=0.4)
            timed = await ac.detect_with_timings([CHELSEA], model="det")
            assert timed.timings.batch_size == 1
            answered = asyncio.Semaphore(0)
            results = []
            async for r in ac.stream(frames(answered), model="det"):
                results.append(r)
                answered.release()
            assert [(r.sequence, r.capture_time_us, r.status) for r in results] == [
                (0, 10, FrameStatus.OK), (1, 11, FrameStatus.OK)]
            plain = [r async for r in ac.stream([CHELSEA] * 10, model="det_slow")]
            assert plain[-1].ok and any(r.status is FrameStatus.DROPPED for r in plain)
            with pytest.raises(PeregrineClientError) as e:
                await ac.detect(b"junk", model="det")
            assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(PeregrineClientError) as e:
                await ac.detect(CHELSEA, model="det_slow", deadline_s=0.05)
            assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED

    asyncio.run(main())


# -- retries ---------------------------------------------------------------------------------------
class FlakyDetection(det_grpc.DetectionServiceServicer):
    """Answers UNAVAILABLE to the first ``failures`` calls of each method, then an empty success."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = {"Detect": 0, "DetectStream": 0}
        self._lock = threading.Lock()

    def _fail(self, method: str, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.calls[method] += 1
            n = self.calls[method]
        if n <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{method}: try {n} fails on purpose")

    def Detect(self, request: det.DetectRequest, context: grpc.ServicerContext) -> det.DetectResponse:
        self._fail("Detect", context)
        return det.DetectResponse(model_name=request.model_name,
                                  results=[det.ImageDetections() for _ in request.images])

    def DetectStream(self, request_iterator: Iterator[det.StreamFrame],
                     context: grpc.ServicerContext) -> Iterator[det.StreamResult]:
        self._fail("DetectStream", context)
        for frame in request_iterator:
            yield det.StreamResult(sequence=frame.sequence)


FAST = RetryPolicy(max_attempts=5, initial_backoff_s=0.01, max_backoff_s=0.05)


def test_detect_is_retried_on_unavailable_and_streams_are_not() -> None:
    flaky = FlakyDetection(failures=2)
    with serve_detection(flaky) as port, DetectionClient(f"127.0.0.1:{port}", retry=FAST, deadline_s=10) as c:
        assert c.detect(CHELSEA) == []
        with pytest.raises(PeregrineClientError) as e:
            list(c.stream([CHELSEA]))
        assert e.value.code == grpc.StatusCode.UNAVAILABLE and e.value.method == "DetectStream"
    assert flaky.calls == {"Detect": 3, "DetectStream": 1}


def test_detect_retries_can_be_turned_off() -> None:
    flaky = FlakyDetection(failures=1)
    with serve_detection(flaky) as port, DetectionClient(f"127.0.0.1:{port}", retry=NO_RETRY) as c:
        with pytest.raises(PeregrineClientError) as e:
            c.detect(CHELSEA)
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
    assert flaky.calls["Detect"] == 1
