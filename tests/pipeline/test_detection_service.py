"""DetectionService over real gRPC: bad input, deadlines, and camera streams (order, latest frame wins)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import numpy as np
import pipeline_support
import pytest
import tritonclient.grpc as triton
from peregrine.proto import detection_pb2 as det
from peregrine.proto import detection_pb2_grpc as det_grpc
from peregrine.proto import grpc_service_pb2 as pb
from peregrine.proto import grpc_service_pb2_grpc as pb_grpc
from peregrine.server.app import PeregrineServer
from pipeline_support import jpeg, photographs, png

detection_repo = pipeline_support.detection_repo
detection_server = pipeline_support.detection_server

PHOTOS = photographs()
ROCKET = PHOTOS["rocket"]
OPTIONS = [("grpc.max_send_message_length", 1 << 28), ("grpc.max_receive_message_length", 1 << 28)]
Status = det.StreamResult


@pytest.fixture(scope="module")
def channel(detection_server: PeregrineServer) -> Iterator[grpc.Channel]:
    ch = grpc.insecure_channel(f"127.0.0.1:{detection_server.port}", options=OPTIONS)
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> det_grpc.DetectionServiceStub:
    return det_grpc.DetectionServiceStub(channel)


def raw(rgb: np.ndarray) -> det.Image:
    return det.Image(raw=det.RawImage(height=rgb.shape[0], width=rgb.shape[1], channels=rgb.shape[2],
                                      data=rgb.tobytes()))


def executions(channel: grpc.Channel, model: str) -> int:
    stats = pb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(pb.ModelStatisticsRequest(name=model))
    return stats.model_stats[0].execution_count


def code_of(stub: det_grpc.DetectionServiceStub, request: det.DetectRequest) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        stub.Detect(request, timeout=30)
    return info.value.code()


JPEG = jpeg(ROCKET)
BAD_REQUESTS = {
    "corrupt jpeg": det.DetectRequest(images=[det.Image(encoded=JPEG[:200] + bytes(range(256)) * 8 + JPEG[-200:])]),
    "truncated jpeg": det.DetectRequest(images=[det.Image(encoded=JPEG[: len(JPEG) // 2])]),
    "truncated png": det.DetectRequest(images=[det.Image(encoded=png(ROCKET)[:5000])]),
    "not an image": det.DetectRequest(images=[det.Image(encoded=b"GIF89a but not really an image at all")]),
    "empty bytes": det.DetectRequest(images=[det.Image(encoded=b"")]),
    "no image set": det.DetectRequest(images=[det.Image()]),
    "no images": det.DetectRequest(images=[]),
    "zero-sized raw": det.DetectRequest(images=[det.Image(raw=det.RawImage(height=0, width=640, channels=3))]),
    "two channels": det.DetectRequest(images=[det.Image(raw=det.RawImage(height=2, width=2, channels=2,
                                                                           data=bytes(8)))]),
    "short raw data": det.DetectRequest(images=[det.Image(raw=det.RawImage(height=10, width=10, channels=3,
                                                                             data=bytes(299)))]),
    "score above 1": det.DetectRequest(images=[raw(ROCKET)], options=det.DetectOptions(score_threshold=1.5)),
    "iou below 0": det.DetectRequest(images=[raw(ROCKET)], options=det.DetectOptions(iou_threshold=-0.1)),
    "score nan": det.DetectRequest(images=[raw(ROCKET)], options=det.DetectOptions(score_threshold=float("nan"))),
    "max_detections 0": det.DetectRequest(images=[raw(ROCKET)], options=det.DetectOptions(max_detections=0)),
    "max_detections over limit": det.DetectRequest(images=[raw(ROCKET)],
                                                   options=det.DetectOptions(max_detections=100_000)),
    "unknown class": det.DetectRequest(images=[raw(ROCKET)], options=det.DetectOptions(classes=[80])),
    "too many images": det.DetectRequest(images=[raw(PHOTOS["coffee_tiny"])] * 17),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_input_is_invalid_argument_and_server_keeps_serving(stub: det_grpc.DetectionServiceStub, case: str) -> None:
    request = det.DetectRequest()
    request.CopyFrom(BAD_REQUESTS[case])
    request.model_name = "det_v8"
    assert code_of(stub, request) == grpc.StatusCode.INVALID_ARGUMENT
    good = stub.Detect(det.DetectRequest(model_name="det_v8", images=[raw(PHOTOS["coffee_tiny"])]), timeout=30)
    assert len(good.results) == 1


def test_image_over_the_pixel_limit(stub: det_grpc.DetectionServiceStub) -> None:
    """det_limited allows 100,000 pixels: a 400x400 JPEG is refused from its header, raw too."""
    big = np.ascontiguousarray(PHOTOS["astronaut"][:400, :400])
    for image in (det.Image(encoded=jpeg(big)), raw(big)):
        assert code_of(stub, det.DetectRequest(model_name="det_limited", images=[image])) == \
            grpc.StatusCode.INVALID_ARGUMENT
    small = np.ascontiguousarray(big[:300, :300])
    assert stub.Detect(det.DetectRequest(model_name="det_limited", images=[raw(small)]), timeout=30).results


def test_grey_and_rgba_frames_are_accepted(stub: det_grpc.DetectionServiceStub) -> None:
    grey = np.ascontiguousarray(ROCKET[:, :, :1])
    rgba = np.ascontiguousarray(np.concatenate([ROCKET, np.full((*ROCKET.shape[:2], 1), 255, np.uint8)], axis=2))
    response = stub.Detect(det.DetectRequest(model_name="det_v5", images=[raw(grey), raw(rgba), raw(ROCKET)]),
                           timeout=30)
    rgb_boxes = [(b.x1, b.class_id) for b in response.results[2].boxes]
    assert [(b.x1, b.class_id) for b in response.results[1].boxes] == rgb_boxes  # alpha is ignored
    assert [r.width for r in response.results] == [ROCKET.shape[1]] * 3


@pytest.mark.parametrize(("model", "code"), [("no_such_model", grpc.StatusCode.NOT_FOUND),
                                             ("plain", grpc.StatusCode.INVALID_ARGUMENT),
                                             ("", grpc.StatusCode.INVALID_ARGUMENT)])
def test_model_must_be_a_pipeline(stub: det_grpc.DetectionServiceStub, model: str, code: grpc.StatusCode) -> None:
    assert code_of(stub, det.DetectRequest(model_name=model, images=[raw(ROCKET)])) == code


def test_oip_bad_input(detection_server: PeregrineServer) -> None:
    client = triton.InferenceServerClient(f"127.0.0.1:{detection_server.port}")

    def infer(inputs: list[triton.InferInput], **kw: object) -> None:
        with pytest.raises(triton.InferenceServerException) as info:
            client.infer("det_v5", inputs, **kw)
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"

    wrong_channels = triton.InferInput("IMAGE", [1, 8, 8, 2], "UINT8")
    wrong_channels.set_data_from_numpy(np.zeros((1, 8, 8, 2), np.uint8))
    infer([wrong_channels])
    corrupt = triton.InferInput("ENCODED", [1, 1], "BYTES")
    corrupt.set_data_from_numpy(np.array([[JPEG[:1000]]], dtype=object))
    infer([corrupt])
    image = triton.InferInput("IMAGE", [1, *ROCKET.shape], "UINT8")
    image.set_data_from_numpy(ROCKET[None])
    infer([image], parameters={"score_threshold": "2"})
    infer([image], parameters={"iou_threshold": "high"})
    both = triton.InferInput("ENCODED", [1, 1], "BYTES")
    both.set_data_from_numpy(np.array([[JPEG]], dtype=object))
    infer([image, both])
    assert client.infer("det_v5", [image]).as_numpy("COUNTS")[0, 0] > 0


def test_expired_request_never_runs(channel: grpc.Channel, stub: det_grpc.DetectionServiceStub) -> None:
    """A request still queued when its deadline passes is answered DEADLINE_EXCEEDED and never executed:
    det_slow holds a lone request 400 ms for a fuller batch, past the 100 ms deadline."""
    before = executions(channel, "det_slow")
    with pytest.raises(grpc.RpcError) as info:
        stub.Detect(det.DetectRequest(model_name="det_slow", images=[raw(ROCKET)]), timeout=0.1)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # A later request runs (and its execution is the only one counted).
    stub.Detect(det.DetectRequest(model_name="det_slow", images=[raw(ROCKET)]), timeout=30)
    assert executions(channel, "det_slow") == before + 1


# -- streams --------------------------------------------------------------------------------------
def frames(model: str, count: int, **fields: object) -> Iterator[det.StreamFrame]:
    for i in range(count):
        yield det.StreamFrame(model_name=model if i == 0 else "", sequence=10 + i, capture_time_us=1000 * i,
                              image=det.Image(encoded=JPEG), **fields)  # type: ignore[arg-type]


def test_stream_answers_every_frame_in_order(stub: det_grpc.DetectionServiceStub) -> None:
    results = list(stub.DetectStream(frames("det_v5", 12, max_in_flight=4), timeout=60))
    assert [r.sequence for r in results] == [10 + i for i in range(12)]
    assert [r.capture_time_us for r in results] == [1000 * i for i in range(12)]
    ok = [r for r in results if r.status == Status.OK]
    assert ok and all(len(r.detections.boxes) == len(ok[0].detections.boxes) for r in ok)
    assert all(r.status in (Status.OK, Status.DROPPED) for r in results)
    assert results[-1].status == Status.OK  # the newest frame always runs
    assert results[-1].dropped_total == sum(r.status == Status.DROPPED for r in results)


def test_stream_falls_behind_and_latest_frame_wins(channel: grpc.Channel, stub: det_grpc.DetectionServiceStub) -> None:
    """det_slow runs one frame at a time and holds each 400 ms: frames sent meanwhile push each other
    out of the one waiting place; only the first and the last run."""
    before = executions(channel, "det_slow")
    results = list(stub.DetectStream(frames("det_slow", 6), timeout=60))
    assert [r.sequence for r in results] == list(range(10, 16))
    assert [r.status for r in results] == [Status.OK] + [Status.DROPPED] * 4 + [Status.OK]
    assert all(r.error_code == grpc.StatusCode.ABORTED.value[0] for r in results[1:5])
    assert [r.dropped_total for r in results[1:5]] == [1, 2, 3, 4]
    assert results[-1].dropped_total == 4
    assert executions(channel, "det_slow") == before + 2


def test_stream_frame_past_its_deadline_is_not_run(channel: grpc.Channel, stub: det_grpc.DetectionServiceStub) -> None:
    before = executions(channel, "det_slow")
    results = list(stub.DetectStream(frames("det_slow", 1, deadline_us=50_000), timeout=60))
    assert results[0].status == Status.DEADLINE_EXCEEDED
    assert results[0].error_code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert executions(channel, "det_slow") == before


def test_stream_bad_frames_are_answered_and_the_stream_goes_on(stub: det_grpc.DetectionServiceStub) -> None:
    def mixed() -> Iterator[det.StreamFrame]:
        yield det.StreamFrame(model_name="det_v5", sequence=1, image=det.Image(encoded=JPEG[:300]))
        yield det.StreamFrame(sequence=2, image=det.Image(encoded=JPEG), options=det.DetectOptions(iou_threshold=3))
        yield det.StreamFrame(sequence=2, image=det.Image(encoded=JPEG))  # not increasing
        yield det.StreamFrame(sequence=3, image=raw(ROCKET), options=det.DetectOptions())  # back to defaults

    results = list(stub.DetectStream(mixed(), timeout=60))
    assert [r.sequence for r in results] == [1, 2, 2, 3]
    assert [r.status for r in results] == [Status.ERROR, Status.ERROR, Status.ERROR, Status.OK]
    assert {r.error_code for r in results[:3]} == {grpc.StatusCode.INVALID_ARGUMENT.value[0]}
    assert results[3].detections.boxes


def test_stream_frame_ids_are_echoed_dropped_frames_included_and_bounded(
        channel: grpc.Channel, stub: det_grpc.DetectionServiceStub) -> None:
    def named() -> Iterator[det.StreamFrame]:
        for i in range(4):  # det_slow: the middle frames are dropped (latest frame wins)
            yield det.StreamFrame(model_name="det_slow" if i == 0 else "", sequence=i, frame_id=f"cam_{i}",
                                  image=det.Image(encoded=JPEG))
        yield det.StreamFrame(sequence=9, frame_id="x" * 257, image=det.Image(encoded=JPEG))  # over the bound

    results = list(stub.DetectStream(named(), timeout=60))
    assert [r.frame_id for r in results[:4]] == ["cam_0", "cam_1", "cam_2", "cam_3"]
    assert Status.DROPPED in {r.status for r in results[:4]}  # a dropped frame still says which it was
    assert results[4].status == Status.ERROR and results[4].frame_id == ""
    assert results[4].error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "frame_id: expected at most 256 bytes" in results[4].error_message


def test_stream_to_unknown_model_answers_each_frame(stub: det_grpc.DetectionServiceStub) -> None:
    results = list(stub.DetectStream(frames("no_such_model", 3), timeout=30))
    assert [r.status for r in results] == [Status.ERROR] * 3
    assert {r.error_code for r in results} == {grpc.StatusCode.NOT_FOUND.value[0]}


def test_cancelled_stream_leaves_the_server_serving(stub: det_grpc.DetectionServiceStub) -> None:
    stop = threading.Event()

    def endless() -> Iterator[det.StreamFrame]:
        i = 0
        while not stop.is_set():
            i += 1
            yield det.StreamFrame(model_name="det_slow", sequence=i, image=det.Image(encoded=JPEG))
            if i >= 50:
                stop.wait(5)

    call = stub.DetectStream(endless(), timeout=60)
    first = next(call)
    assert first.sequence == 1
    call.cancel()
    stop.set()
    response = stub.Detect(det.DetectRequest(model_name="det_v5", images=[raw(ROCKET)]), timeout=30)
    assert response.results[0].boxes


def test_stage_times_reach_prometheus(detection_server: PeregrineServer, stub: det_grpc.DetectionServiceStub) -> None:
    import urllib.request

    stub.Detect(det.DetectRequest(model_name="det_v5", images=[det.Image(encoded=JPEG)]), timeout=30)
    list(stub.DetectStream(frames("det_v5", 2), timeout=30))
    text = urllib.request.urlopen(f"http://127.0.0.1:{detection_server.http_port}/metrics", timeout=10).read().decode()
    for stage in ("decode", "queue", "pre", "infer", "post"):
        assert f'peregrine_pipeline_stage_seconds_count{{model="det_v5",stage="{stage}",version="1"}}' in text
    assert 'peregrine_request_duration_seconds_count{model="det_v5",status="OK"}' in text


def test_stream_settings_carry_over_to_later_frames(stub: det_grpc.DetectionServiceStub) -> None:
    def two() -> Iterator[det.StreamFrame]:
        yield det.StreamFrame(model_name="det_v5", sequence=1, image=det.Image(encoded=JPEG),
                              options=det.DetectOptions(score_threshold=0.6, max_detections=3))
        yield det.StreamFrame(sequence=2, image=det.Image(encoded=JPEG))
        yield det.StreamFrame(sequence=3, image=det.Image(encoded=JPEG), options=det.DetectOptions())

    first, second, third = list(stub.DetectStream(two(), timeout=60))
    assert 0 < len(first.detections.boxes) <= 3
    assert [(b.x1, b.score) for b in second.detections.boxes] == [(b.x1, b.score) for b in first.detections.boxes]
    assert min(b.score for b in second.detections.boxes) > 0.6
    assert len(third.detections.boxes) > 3  # an explicit empty options message restores the defaults


def test_a_long_stream_holds_only_its_frames_in_flight(stub: det_grpc.DetectionServiceStub) -> None:
    """Memory of a stream stays bounded however many frames it carries: answered frames (their pixels,
    their decoded arrays) are let go. Measured with tracemalloc over 640x480 JPEG frames (0.9 MB decoded)."""
    import tracemalloc

    frame = np.ascontiguousarray(np.resize(ROCKET, (480, 640, 3)))
    encoded = det.Image(encoded=jpeg(frame))
    marks: dict[int, int] = {}

    def camera(count: int) -> Iterator[det.StreamFrame]:
        for i in range(count):
            if i in (30, count - 1):
                marks[i] = tracemalloc.get_traced_memory()[0]
            yield det.StreamFrame(model_name="det_v5" if i == 0 else "", sequence=i + 1, image=encoded,
                                  max_in_flight=2)

    tracemalloc.start()
    try:
        results = list(stub.DetectStream(camera(150), timeout=120))
    finally:
        tracemalloc.stop()
    assert len(results) == 150 and results[-1].status == Status.OK
    growth = marks[149] - marks[30]
    assert growth < 10 * frame.nbytes, f"stream memory grew by {growth / 1e6:.0f} MB over 119 frames"


def test_the_only_pipeline_is_chosen_when_none_is_named(tmp_path, start_server) -> None:  # type: ignore[no-untyped-def]
    """A server with one detection pipeline runs it for Detect, DetectStream and DetectionClient calls that
    name no model; one with several answers INVALID_ARGUMENT naming them."""
    from peregrine.client import DetectionClient
    from peregrine.modelgen import yolov5_detector
    from pipeline_support import pipeline_config, write_pipeline
    from support import onnx_models

    onnx_models.write(tmp_path, "v5", yolov5_detector(0, imgsz=320))
    onnx_models.write(tmp_path, "plain", onnx_models.identity("FP32", ["N", 4]))
    write_pipeline(tmp_path, "only", pipeline_config("v5"))
    server = start_server(tmp_path)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=OPTIONS) as ch:
        one = det_grpc.DetectionServiceStub(ch)
        response = one.Detect(det.DetectRequest(images=[raw(ROCKET)]), timeout=30)
        assert (response.model_name, len(response.results)) == ("only", 1)
        answers = list(one.DetectStream(iter([det.StreamFrame(sequence=i, image=raw(ROCKET)) for i in range(3)]),
                                        timeout=30))
        assert [a.status for a in answers] == [Status.OK] * 3
    with DetectionClient(f"127.0.0.1:{server.port}") as client:
        assert client.detect(ROCKET) == client.detect(ROCKET, model="only")


def test_no_model_named_with_several_pipelines(stub: det_grpc.DetectionServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Detect(det.DetectRequest(images=[raw(ROCKET)]), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "det_v8" in info.value.details() and "det_v5" in info.value.details()


def test_inverted_boxes_are_answered_as_given_and_counted(tmp_path, start_server) -> None:  # type: ignore[no-untyped-def]
    """A head may give a box with x2 < x1: Peregrine answers it as the model gave it (mapped back to the
    frame, not reordered) and counts it in peregrine_detection_inverted_boxes."""
    import urllib.request

    import onnx
    from onnx import TensorProto, helper
    from pipeline_support import pipeline_config, write_pipeline
    from support import onnx_models

    rows = [[40.0, 10.0, 20.0, 30.0, 0.9, 0.0],  # x2 < x1
            [10.0, 10.0, 30.0, 30.0, 0.8, 1.0]]
    nodes = [
        helper.make_node("Constant", [], ["rows"], value=helper.make_tensor("v", TensorProto.FLOAT, [1, 2, 6],
                                                                            [v for row in rows for v in row])),
        helper.make_node("Shape", ["images"], ["shape"], start=0, end=1),
        helper.make_node("Constant", [], ["ones"], value=helper.make_tensor("o", TensorProto.INT64, [2], [1, 1])),
        helper.make_node("Concat", ["shape", "ones"], ["reps"], axis=0),
        helper.make_node("Tile", ["rows", "reps"], ["output0"]),
    ]
    graph = helper.make_graph(nodes, "fixed_boxes",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 64, 64])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", 2, 6])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx_models.write(tmp_path, "fixed", model)
    write_pipeline(tmp_path, "p", pipeline_config("fixed"))
    server = start_server(tmp_path, http_port=0)
    frame = np.full((64, 64, 3), 80, np.uint8)  # no resize, no padding: boxes come back as the head gave them
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        response = det_grpc.DetectionServiceStub(ch).Detect(det.DetectRequest(model_name="p", images=[raw(frame)]),
                                                            timeout=30)
    boxes = [(b.x1, b.y1, b.x2, b.y2) for b in response.results[0].boxes]
    assert boxes == [(40.0, 10.0, 20.0, 30.0), (10.0, 10.0, 30.0, 30.0)]
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10).read().decode()
    assert 'peregrine_detection_inverted_boxes_total{model="p",version="1"} 1.0' in text


# -- limits: what the kernels refuse, decoded bytes (issue 14, findings 3 and 5) ---------------------------
def test_a_batch_failing_on_one_request_answers_the_others_and_counts_what_ran(
        detection_server: PeregrineServer, caplog: pytest.LogCaptureFixture) -> None:
    """Defence in depth behind validation: requests handed to the pipeline as frames (no validation), one of
    them a frame the letterbox kernel refuses (a side over 2^20), share a batch (det_slow waits 400 ms for
    company). The batch fails, each request runs again alone: the good ones are answered, the bad one fails
    (INTERNAL), and the statistics count the three batches of one that ran, not the batch that failed."""
    from peregrine.server.core.errors import ModelExecutionError
    from peregrine.server.core.types import FrameRequest

    model = detection_server.repository.get("det_slow", "")
    stats = model.stats
    before = (stats.execution_count, stats.inference_count, stats.success.count, stats.fail.count)
    poison = np.zeros((1, (1 << 20) + 1, 3), np.uint8)
    frames = [ROCKET, ROCKET, poison, PHOTOS["coffee_tiny"]]
    with caplog.at_level("WARNING", logger="peregrine"):
        calls = [detection_server.loop.submit(model.detect(FrameRequest("det_slow", frames=[f],
                                                                        options=model.default_options())))
                 for f in frames]
        results = [c.exception(timeout=60) or c.result() for c in calls]
    assert isinstance(results[2], ModelExecutionError)
    for i in (0, 1, 3):
        assert results[i].sizes == [frames[i].shape[:2]] and results[i].times.batch_size == 1  # type: ignore[union-attr]
    assert any("batch of 4 requests failed" in r.getMessage() for r in caplog.records)
    after = (stats.execution_count, stats.inference_count, stats.success.count, stats.fail.count)
    assert [b - a for a, b in zip(before, after, strict=True)] == [3, 3, 3, 1]


def test_the_in_flight_budget_refuses_at_once_and_frees_what_answered_requests_held(
        detection_server: PeregrineServer, stub: det_grpc.DetectionServiceStub) -> None:
    """With the server's budget of decoded bytes nearly full, a Detect (raw or encoded) and an OIP IMAGE
    request are RESOURCE_EXHAUSTED at once (admission, not queueing); once the bytes are given back they
    run. Every request gives back what it held once it is answered: run, refused, past its deadline in the
    queue, or a stream frame that never ran."""
    import gc
    import time

    from peregrine.server.pipeline import images

    budget = images.IN_FLIGHT
    assert budget.held == 0
    hold = budget.hold(budget.limit - ROCKET.nbytes // 2, "test")
    try:
        for image in (raw(ROCKET), det.Image(encoded=JPEG)):
            assert code_of(stub, det.DetectRequest(model_name="det_v5", images=[image])) == \
                grpc.StatusCode.RESOURCE_EXHAUSTED
        client = triton.InferenceServerClient(f"127.0.0.1:{detection_server.port}")
        image = triton.InferInput("IMAGE", [1, *ROCKET.shape], "UINT8")
        image.set_data_from_numpy(ROCKET[None])
        with pytest.raises(triton.InferenceServerException) as info:
            client.infer("det_v5", [image])
        assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    finally:
        hold.release()
    assert stub.Detect(det.DetectRequest(model_name="det_v5", images=[raw(ROCKET)]), timeout=30).results
    assert code_of(stub, BAD_REQUESTS["truncated png"]) == grpc.StatusCode.INVALID_ARGUMENT  # fails decoding
    with pytest.raises(grpc.RpcError):  # queued in det_slow's 400 ms window past its 100 ms deadline
        stub.Detect(det.DetectRequest(model_name="det_slow", images=[raw(ROCKET)]), timeout=0.1)
    list(stub.DetectStream(frames("det_slow", 1, deadline_us=50_000), timeout=60))  # validated, never run
    deadline = time.monotonic() + 10
    while budget.held and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    assert budget.held == 0
    # A request validated and then dropped unrun (a stream frame superseded, a call gone before it was
    # queued) gives its bytes back when it is freed.
    from peregrine.server.core.types import DetectRequest, RawImage

    model = detection_server.repository.get("det_v5", "")
    prepared = model.validate(DetectRequest("det_v5", images=[RawImage(ROCKET.tobytes(), *ROCKET.shape, "images[0]")]))
    assert budget.held == ROCKET.nbytes
    del prepared
    gc.collect()
    assert budget.held == 0


def test_decoded_bytes_per_request_are_bounded_from_the_headers(tmp_path, start_server) -> None:  # type: ignore[no-untyped-def]
    """detection.max_decoded_bytes_per_request bounds the sum of height x width x 3 over a request's images,
    read from their headers (Detect raw and encoded, OIP IMAGE and ENCODED): one photograph fits, two do
    not."""
    from peregrine.modelgen import yolov5_detector
    from pipeline_support import pipeline_config, write_pipeline
    from support import onnx_models

    onnx_models.write(tmp_path, "v5", yolov5_detector(0, imgsz=320))
    write_pipeline(tmp_path, "bounded", pipeline_config("v5", f"max_decoded_bytes_per_request = {ROCKET.nbytes}\n"))
    server = start_server(tmp_path)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=OPTIONS) as ch:
        one = det_grpc.DetectionServiceStub(ch)
        for image in (raw(ROCKET), det.Image(encoded=JPEG), det.Image(encoded=png(ROCKET))):
            assert one.Detect(det.DetectRequest(model_name="bounded", images=[image]), timeout=30).results
            with pytest.raises(grpc.RpcError) as info:
                one.Detect(det.DetectRequest(model_name="bounded", images=[image, image]), timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "max_decoded_bytes_per_request" in info.value.details()
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    image = triton.InferInput("IMAGE", [2, *ROCKET.shape], "UINT8")
    image.set_data_from_numpy(np.stack([ROCKET, ROCKET]))
    encoded = triton.InferInput("ENCODED", [2, 1], "BYTES")
    encoded.set_data_from_numpy(np.array([[JPEG], [JPEG]], dtype=object))
    for tensor in (image, encoded):
        with pytest.raises(triton.InferenceServerException) as err:
            client.infer("bounded", [tensor])
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_the_in_flight_budget_is_a_server_option() -> None:
    from peregrine.server.cli import parse_args
    from peregrine.server.config import ServerConfig

    assert ServerConfig().max_decoded_bytes_in_flight == 2 << 30
    assert parse_args(["--max-decoded-mb-in-flight", "64"]).max_decoded_bytes_in_flight == 64 << 20


def test_a_frames_bad_options_answer_that_frame_and_are_not_kept(stub: det_grpc.DetectionServiceStub) -> None:
    """Options stay in force for later frames, but only good ones: a frame whose threshold is NaN is answered
    INVALID_ARGUMENT naming it, and the next frame without options runs with the options before it."""
    def frames() -> Iterator[det.StreamFrame]:
        yield det.StreamFrame(model_name="det_v5", sequence=1, image=det.Image(encoded=JPEG),
                              options=det.DetectOptions(max_detections=3))
        yield det.StreamFrame(sequence=2, image=det.Image(encoded=JPEG),
                              options=det.DetectOptions(score_threshold=float("nan")))
        yield det.StreamFrame(sequence=3, image=det.Image(encoded=JPEG))

    first, bad, after = list(stub.DetectStream(frames(), timeout=60))
    assert bad.status == det.StreamResult.ERROR and bad.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "options.score_threshold" in bad.error_message
    assert [(b.x1, b.score) for b in after.detections.boxes] == [(b.x1, b.score) for b in first.detections.boxes]
