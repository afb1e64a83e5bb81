"""Hostile images against a real server on loopback (issue 14, findings 3 and 5): frames the letterbox kernel
refuses, decompression bombs within the pixel limit, and a failing batch that must fail only its bad request.

Only what the server offered before the fixes is used (``PeregrineServer``, ``ServerConfig``, the protos, the
config keys of the time), so that every test can be run against the old code and seen to fail there:
``PYTHONPATH=/tmp/origsite .venv/bin/python -m pytest tests/hardening/test_hostile_images.py``.
"""

from __future__ import annotations

import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from peregrine.modelgen import yolov5_detector
from peregrine.proto import detection_pb2 as det
from peregrine.proto import detection_pb2_grpc as det_grpc
from peregrine.proto import grpc_service_pb2 as pb
from peregrine.proto import grpc_service_pb2_grpc as pb_grpc
from peregrine.server.app import PeregrineServer
from peregrine.server.config import ServerConfig
from support import onnx_models

sys.path.insert(0, str(Path(__file__).parent.parent / "pipeline"))

from pipeline_support import photographs, pipeline_config, png, write_pipeline

pytestmark = pytest.mark.timeout(180)

CALL_S = 60.0  # each call's own deadline: an old server decoding a bomb answers, slowly
KERNEL_SIDE = 1 << 20  # the letterbox kernels take frames with sides up to 2^20 pixels, and refuse longer ones
WINDOW_US = 300_000  # the batching window: concurrent requests share batches
PHOTO = photographs()["coffee_tiny"]  # 60 x 40


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile_images")
    onnx_models.write(root, "yolov5n", yolov5_detector(0, imgsz=320), "max_batch_size = 16\n")
    write_pipeline(root, "det", pipeline_config("yolov5n", window_us=WINDOW_US))
    # A tensor model whose run fails on one request's content (an index out of range), not its shape: what
    # validation cannot see, so only the batcher can keep it from failing the others.
    onnx_models.write(root, "gather", onnx_models.gather(), "max_batch_size = 8\n[instance_group]\ndevice = 'cpu'\n"
                      f"[dynamic_batching]\nmax_queue_delay_us = {WINDOW_US}\n")
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[PeregrineServer]:
    s = PeregrineServer(ServerConfig(model_repository=repo, grpc_port=0, http_port=None))
    s.start()
    yield s
    s.stop(grace=1.0)


@pytest.fixture(scope="module")
def channel(server: PeregrineServer) -> Iterator[grpc.Channel]:
    options = [("grpc.max_send_message_length", 1 << 28), ("grpc.max_receive_message_length", 1 << 28)]
    with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=options) as ch:
        yield ch


@pytest.fixture(scope="module")
def detect(channel: grpc.Channel) -> Callable[[det.DetectRequest], grpc.StatusCode]:
    stub = det_grpc.DetectionServiceStub(channel)

    def call(request: det.DetectRequest) -> grpc.StatusCode:
        try:
            stub.Detect(request, timeout=CALL_S)
        except grpc.RpcError as e:
            return e.code()
        return grpc.StatusCode.OK

    return call


def raw(rgb: np.ndarray) -> det.Image:
    return det.Image(raw=det.RawImage(height=rgb.shape[0], width=rgb.shape[1], channels=rgb.shape[2],
                                      data=rgb.tobytes()))


def one_bit_png(width: int, height: int) -> bytes:
    """A black one-bit greyscale PNG of any size: a few hundred bytes per megapixel (zlib of zero rows)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    raw_size = height * (1 + (width + 7) // 8)  # every row: filter byte 0, then packed pixels, all zero
    z, out, block = zlib.compressobj(9), [], bytes(1 << 22)
    for start in range(0, raw_size, len(block)):
        out.append(z.compress(block[: min(len(block), raw_size - start)]))
    out.append(z.flush())
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(out)) + chunk(b"IEND", b"")


class PeakRss:
    """This process's resident memory, sampled every 5 ms from /proc/self/statm while in the block: the
    server runs in this process, so its decoding shows here."""

    PAGE = 4096

    def __enter__(self) -> PeakRss:
        self.start = self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def now(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.PAGE

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.now())

    @property
    def growth(self) -> int:
        return self.peak - self.start


# -- finding 3: a frame the kernel refuses --------------------------------------------------------------
def test_a_frame_the_letterbox_refuses_fails_alone_and_the_good_requests_of_other_clients_do_not(
        detect: Callable[[det.DetectRequest], grpc.StatusCode]) -> None:
    """A 1 x (2^20 + 1) raw frame (3 MB, far under max_pixels) sent among 20 concurrent good Detects that
    share its batch: the good ones answer OK, the bad one INVALID_ARGUMENT (before: INTERNAL, and its batch
    failed with it)."""
    bad = det.DetectRequest(model_name="det", images=[raw(np.zeros((1, KERNEL_SIDE + 1, 3), np.uint8))])
    good = det.DetectRequest(model_name="det", images=[raw(PHOTO)])
    with ThreadPoolExecutor(21) as pool:
        goods = [pool.submit(detect, good) for _ in range(10)]
        bad_call = pool.submit(detect, bad)
        goods += [pool.submit(detect, good) for _ in range(10)]
        codes = [f.result() for f in goods]
        bad_code = bad_call.result()
    assert codes == [grpc.StatusCode.OK] * 20, f"{20 - codes.count(grpc.StatusCode.OK)} of 20 good requests failed"
    assert bad_code == grpc.StatusCode.INVALID_ARGUMENT
    assert detect(good) == grpc.StatusCode.OK


@pytest.mark.parametrize("shape", [(1, KERNEL_SIDE + 1), (KERNEL_SIDE + 1, 1)], ids=["wide", "tall"])
def test_a_frame_with_a_side_over_the_kernel_limit_is_invalid(
        detect: Callable[[det.DetectRequest], grpc.StatusCode], shape: tuple[int, int]) -> None:
    frame = np.zeros((*shape, 3), np.uint8)
    assert detect(det.DetectRequest(model_name="det", images=[raw(frame)])) == grpc.StatusCode.INVALID_ARGUMENT
    # The same as a PNG (it decodes to the same frame): refused from its header.
    bomb = det.DetectRequest(model_name="det", images=[det.Image(encoded=one_bit_png(shape[1], shape[0]))])
    assert detect(bomb) == grpc.StatusCode.INVALID_ARGUMENT


def test_a_frame_at_the_kernel_limit_is_answered(detect: Callable[[det.DetectRequest], grpc.StatusCode]) -> None:
    """The bound is the kernel's, not stricter: a 1 x 2^20 frame (it letterboxes into one row) is answered."""
    assert detect(det.DetectRequest(model_name="det", images=[raw(np.zeros((1, KERNEL_SIDE, 3), np.uint8))])) \
        == grpc.StatusCode.OK


def test_an_oip_image_the_kernel_refuses_is_invalid(channel: grpc.Channel) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    tensor = pb.ModelInferRequest.InferInputTensor(name="IMAGE", datatype="UINT8", shape=[1, 1, KERNEL_SIDE + 1, 3])
    request = pb.ModelInferRequest(model_name="det", inputs=[tensor], raw_input_contents=[bytes(3 * (KERNEL_SIDE + 1))])
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=CALL_S)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_failing_batch_is_run_again_so_that_only_its_bad_request_fails(channel: grpc.Channel) -> None:
    """A request that passes validation and still breaks the model (an index out of range): it shares a batch
    with seven good requests of other clients; they get their own answers, it gets INTERNAL (before: the
    whole batch failed)."""
    stub = pb_grpc.GRPCInferenceServiceStub(channel)

    def infer(row: int, index: int) -> tuple[grpc.StatusCode, float | None]:
        data = np.arange(4, dtype=np.float32) + 10 * row
        request = pb.ModelInferRequest(model_name="gather", inputs=[
            pb.ModelInferRequest.InferInputTensor(name="DATA", datatype="FP32", shape=[1, 4]),
            pb.ModelInferRequest.InferInputTensor(name="INDEX", datatype="INT64", shape=[1, 1]),
        ], raw_input_contents=[data.tobytes(), np.array([[index]], np.int64).tobytes()])
        try:
            response = stub.ModelInfer(request, timeout=CALL_S)
        except grpc.RpcError as e:
            return e.code(), None
        return grpc.StatusCode.OK, float(np.frombuffer(response.raw_output_contents[0], np.float32)[0])

    with ThreadPoolExecutor(8) as pool:
        calls = [pool.submit(infer, row, 99 if row == 3 else row % 4) for row in range(8)]
        outcomes = [c.result() for c in calls]
    assert outcomes[3][0] == grpc.StatusCode.INTERNAL
    good = [o for row, o in enumerate(outcomes) if row != 3]
    assert good == [(grpc.StatusCode.OK, 10.0 * row + row % 4) for row in range(8) if row != 3]


# -- finding 5: decompression bombs within the limits --------------------------------------------------
RSS_BOUND = 256 << 20  # a request's decoded bytes may reach the default per-request limit; the bombs: 3.2 GB


def test_sixteen_one_bit_png_bombs_in_one_request_are_refused_from_their_headers(
        detect: Callable[[det.DetectRequest], grpc.StatusCode]) -> None:
    """16 PNGs of 8192 x 8192 one-bit pixels (each at max_pixels, 132 KB for all): 3.2 GB of frames. Refused
    INVALID_ARGUMENT from their headers, within seconds, with the server's RSS growing less than 256 MiB
    (before: decoded, peaking at gigabytes)."""
    bomb = one_bit_png(8192, 8192)
    request = det.DetectRequest(model_name="det", images=[det.Image(encoded=bomb)] * 16)
    assert request.ByteSize() < 200_000
    with PeakRss() as rss:
        started = time.monotonic()
        code = detect(request)
        took = time.monotonic() - started
    assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{code} after {took:.1f} s, RSS +{rss.growth / 2**20:.0f} MiB"
    assert rss.growth < RSS_BOUND, f"RSS grew {rss.growth / 2**20:.0f} MiB"
    assert took < 5.0


def test_a_60000_square_png_is_invalid_argument(detect: Callable[[det.DetectRequest], grpc.StatusCode]) -> None:
    """A 60000 x 60000 one-bit PNG (440 KB): over max_pixels, INVALID_ARGUMENT from its header (before:
    Pillow's DecompressionBombError, answered INTERNAL)."""
    request = det.DetectRequest(model_name="det", images=[det.Image(encoded=one_bit_png(60000, 60000))])
    with PeakRss() as rss:
        assert detect(request) == grpc.StatusCode.INVALID_ARGUMENT
    assert rss.growth < RSS_BOUND


def test_png_bombs_through_oip_are_refused(channel: grpc.Channel) -> None:
    """The same bound for OIP's ENCODED input: 16 bombs in one request are INVALID_ARGUMENT."""
    from tritonclient.utils import serialize_byte_tensor

    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    payload = serialize_byte_tensor(np.array([[one_bit_png(8192, 8192)]] * 16, dtype=object)).item()
    tensor = pb.ModelInferRequest.InferInputTensor(name="ENCODED", datatype="BYTES", shape=[16, 1])
    with PeakRss() as rss, pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(pb.ModelInferRequest(model_name="det", inputs=[tensor], raw_input_contents=[payload]),
                        timeout=CALL_S)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rss.growth < RSS_BOUND


def test_the_server_still_answers_correctly_after(detect: Callable[[det.DetectRequest], grpc.StatusCode]) -> None:
    assert detect(det.DetectRequest(model_name="det", images=[det.Image(encoded=png(PHOTO)), raw(PHOTO)])) \
        == grpc.StatusCode.OK
