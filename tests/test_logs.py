"""The server's log: JSON lines with request and trace ids, and repeated errors held back."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from peregrine.server.observability.logs import RepeatFilter, trace_id_of
from support import onnx_models

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def _record(msg: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord("peregrine.x", level, __file__, 1, msg, (), None)


def test_a_repeated_error_is_let_through_a_few_times_per_window_then_counted() -> None:
    now = [0.0]
    f = RepeatFilter(burst=3, window_s=10.0, clock=lambda: now[0])
    passed = [f.filter(_record("disk full on %s")) for _ in range(10)]
    assert passed == [True] * 3 + [False] * 7
    assert f.filter(_record("another error"))  # another message is its own
    assert f.filter(_record("disk full on %s", logging.INFO))  # below WARNING: never held back
    now[0] = 10.5
    later = _record("disk full on %s")
    assert f.filter(later) and "7 more like this suppressed" in later.msg


def test_trace_ids_come_only_from_well_formed_traceparents() -> None:
    assert trace_id_of(f"00-{TRACE_ID}-00f067aa0ba902b7-01") == TRACE_ID
    for bad in (None, "", "garbage", f"00-{'0' * 32}-00f067aa0ba902b7-01", f"00-{TRACE_ID.upper()}-00f0-01"):
        assert trace_id_of(bad) == ""


def test_json_logs_carry_the_request_and_trace_ids(tmp_path: Path) -> None:
    onnx_models.write(tmp_path, "ident", onnx_models.identity("FP32", ["N", None]), "max_batch_size = 8\n")
    port = 18000 + os.getpid() % 2000
    server = subprocess.Popen(
        [sys.executable, "-m", "peregrine.server", "--model-repository", str(tmp_path), "--grpc-port", str(port),
         "--http-port", "-1", "--log-format", "json", "--log-level", "DEBUG"],
        stderr=subprocess.PIPE, text=True)
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.is_model_ready("ident"):
                    break
            except Exception:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "the server did not start"
            time.sleep(0.2)
        x = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), np.float32))
        client.infer("ident", [x], request_id="frame-42",
                     headers={"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"})
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=60)
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]  # every line is JSON
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in lines)
    about = [e for e in lines if e.get("request_id") == "frame-42"]
    assert about and all(e["trace_id"] == TRACE_ID for e in about)
    assert any("frame-42" in e["message"] and "OK" in e["message"] for e in about)  # the DEBUG request line


def test_the_log_context_is_set_only_for_a_request_that_names_something_and_cleared_after_one() -> None:
    """A request with neither an id nor a trace sets no log context (its task is spared a context of its
    own), but one that follows a named request in the same task (a stream's next frame) clears what that one
    left, so its lines do not carry another request's ids."""
    import contextvars
    from types import SimpleNamespace

    from peregrine.server.dataplane.dataplane import RequestScope
    from peregrine.server.observability import logs

    class Call:
        started_ns, deadline, connection, identity = 0, None, "c", "c"

        def __init__(self, traceparent: str | None) -> None:
            self.traceparent = traceparent

        def header(self, name: str) -> str | None:
            return self.traceparent if name == "traceparent" else None

    traced = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    def run() -> list[object]:
        seen = []
        for otel, request_id, traceparent in [(None, "", None), (None, "a", None), (None, "", None),
                                              ("on", "", None), ("on", "", traced), ("on", "", None)]:
            plane = SimpleNamespace(otel=otel, trace_ids=otel is not None)
            RequestScope(plane, Call(traceparent), "m")._name_in_logs(request_id)  # type: ignore[arg-type]
            seen.append(logs.request_context.get())
        return seen

    seen = contextvars.copy_context().run(run)
    assert seen == [None, ("a", ""), ("", ""), ("", ""), ("", "0af7651916cd43dd8448eb211c80319c"), ("", "")]
