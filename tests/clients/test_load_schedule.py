"""The open-loop scheduler keeps its schedule when the server stalls, and latencies count from the
intended send time (no coordinated omission).

The server is a fake that takes 200 ms per request on 2 threads: it completes at most 10 requests/s.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from client_support import SlowServicer, serve, serve_detection
from peregrine.client.channel import ChannelSettings
from peregrine.client.load import LoadConfig, run_load
from peregrine.client.load.camera import run_camera
from peregrine.proto import detection_pb2 as det
from peregrine.proto import detection_pb2_grpc as det_grpc

DELAY_S = 0.2
X = {"INPUT0": np.zeros((1, 4), np.float32)}


def test_open_loop_sends_on_schedule_while_the_server_stalls() -> None:
    slow = SlowServicer(DELAY_S)
    with serve(slow, workers=2) as port:
        config = LoadConfig("m", ChannelSettings(f"127.0.0.1:{port}"), mode="open", rate=40.0, warmup_s=0.0,
                            duration_s=1.0, drain_s=15.0)
        result = run_load(config, X)
    r = result.records
    order = np.argsort(r.intended_s)
    intended, sent, latency = r.intended_s[order], r.sent_s[order], r.latency_s[order]
    # Offered load: 40 requests at k/40 s, all sent on time although the server keeps up with a quarter.
    assert result.sent == 40 and result.ok == 40 and result.errors == {}
    np.testing.assert_allclose(intended, np.arange(40) / 40)
    assert (sent - intended).max() < 0.1
    assert result.send_lag_ms["max"] < 100
    # Latency from the intended time includes the time spent queued behind earlier requests: the server
    # needs 4 s for 40 requests, so the last ones wait about 3 s; none is faster than the server's 200 ms.
    assert latency.min() >= DELAY_S * 0.9
    assert latency[-5:].min() > 2.0
    assert result.latency_ms["max"] > 2000
    assert np.all(np.diff(latency[::8]) > 0)  # the queue only grows


def test_open_loop_counts_deadline_misses() -> None:
    with serve(SlowServicer(DELAY_S), workers=2) as port:
        config = LoadConfig("m", ChannelSettings(f"127.0.0.1:{port}"), mode="open", rate=20.0, warmup_s=0.0,
                            duration_s=1.0, deadline_ms=500.0)
        result = run_load(config, X)
    expired = result.errors.get("DEADLINE_EXCEEDED", 0)
    assert result.sent == 20 and expired > 0
    assert result.ok + expired == result.sent
    # A miss is an expired call, or an OK answer the client only saw after the deadline (on a loaded
    # machine the event loop can take the answer in a little late): those count as misses, not as expired.
    assert expired <= result.deadline_misses <= expired + 2
    assert result.latency_ms["max"] <= 500 * 1.5  # expired calls are misses, not latencies


def test_closed_loop_waits_for_each_answer() -> None:
    with serve(SlowServicer(DELAY_S), workers=2) as port:
        config = LoadConfig("m", ChannelSettings(f"127.0.0.1:{port}"), mode="closed", concurrency=2,
                            warmup_s=0.0, duration_s=1.0)
        result = run_load(config, X)
    # Two workers, 200 ms each: about 10 requests in a second, each measured from its own send.
    assert 6 <= result.sent <= 12 and result.ok == result.sent
    assert result.latency_ms["p50"] == pytest.approx(DELAY_S * 1000, rel=0.5)


class BreakingStreams(det_grpc.DetectionServiceServicer):
    """The first DetectStream answers three frames, then fails UNAVAILABLE (a server restarting); later
    streams answer every frame."""

    def __init__(self) -> None:
        self.streams = 0
        self._lock = threading.Lock()

    def DetectStream(self, request_iterator: Iterator[det.StreamFrame],
                     context: grpc.ServicerContext) -> Iterator[det.StreamResult]:
        with self._lock:
            self.streams += 1
            first = self.streams == 1
        for i, frame in enumerate(request_iterator):
            if first and i == 3:
                context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
            yield det.StreamResult(sequence=frame.sequence, status=det.StreamResult.OK)


def test_camera_mode_reopens_a_broken_stream_and_counts_what_it_lost() -> None:
    servicer = BreakingStreams()
    with serve_detection(servicer) as port:
        config = LoadConfig("m", ChannelSettings(f"127.0.0.1:{port}"), mode="camera", cameras=1, fps=20.0,
                            warmup_s=0.0, duration_s=1.0, drain_s=5.0)
        result = run_camera(config, [np.zeros((8, 8, 3), np.uint8)])
    assert servicer.streams >= 2  # a new stream after the first broke
    assert result.sent == 20 and result.ok + sum(result.errors.values()) == 20
    assert 1 <= result.errors.get("UNAVAILABLE", 0) <= 3  # the frames the broken stream left unanswered
    assert result.ok >= 15  # the camera went on over the new stream
