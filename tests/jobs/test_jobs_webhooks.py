"""Webhooks: when a job ends its outcome is POSTed to the URL it named, signed with the server's secret,
retried with backoff while the receiver fails, and only to allowed prefixes (issue 17, notifications)."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import numpy as np
import pytest
from peregrine.client.errors import PeregrineClientError
from peregrine.client.jobs import JobClient
from peregrine.server.app import PeregrineServer
from peregrine.server.jobs.webhooks import SIGNATURE_HEADER, verify
from support import jobs

pytestmark = pytest.mark.timeout(120)
SECRET = b"a webhook secret of some length"


class Receiver:
    """A local HTTP server that answers each POST with the next status in ``statuses`` (then 200)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.calls: list[tuple[str, dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append((self.path, dict(self.headers), body))
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def wait(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.calls) < n:
            assert time.monotonic() < deadline, self.calls
            time.sleep(0.05)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver([503, 503])  # fails twice, then takes it
    yield r
    r.http.shutdown()
    r.http.server_close()


def _tensor() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ones((3, 4), np.float32))
    return buf.getvalue()


def test_the_outcome_is_posted_signed_and_retried(tmp_path: Path, receiver: Receiver,
                                                  start_server: Callable[..., PeregrineServer]) -> None:
    (tmp_path / "secret").write_bytes(SECRET + b"\n")
    server = start_server(jobs.repository(tmp_path / "models"), job_spool=tmp_path / "spool",
                          job_webhook_secret_file=tmp_path / "secret", job_webhook_allow=(receiver.url,))
    with JobClient(f"127.0.0.1:{server.port}") as client:
        job = client.wait(client.submit(_tensor(), "id", client_tag="run 7",
                                        notify_url=receiver.url + "done?k=1").job_id)
        receiver.wait(3)  # 503, 503, then 200 (after 1 s and 2 s)
        paths = [c[0] for c in receiver.calls]
        assert paths == ["/done?k=1"] * 3
        for attempt, (_, headers, body) in enumerate(receiver.calls, 1):
            assert verify(SECRET, body, headers[SIGNATURE_HEADER])  # signed with the secret, stripped of its newline
            assert headers["X-Peregrine-Job"] == job.job_id and headers["X-Peregrine-Delivery"] == str(attempt)
        outcome = json.loads(receiver.calls[-1][2])
        assert outcome["state"] == "SUCCEEDED" and outcome["items_done"] == 3 and outcome["client_tag"] == "run 7"
        assert not verify(b"another secret......", receiver.calls[-1][2], receiver.calls[-1][1][SIGNATURE_HEADER])
        # A cancelled job notifies too; a refusal (4xx) is not retried.
        receiver.statuses = [410]
        queued = client.submit(jobs.photo_archive(copies=30), "cam", notify_url=receiver.url)
        client.cancel(queued.job_id)
        receiver.wait(4)
        time.sleep(1.5)
        assert len(receiver.calls) == 4 and json.loads(receiver.calls[3][2])["state"] == "CANCELLED"
        # Anywhere else: refused before anything is uploaded.
        for url in ("http://169.254.169.254/latest/meta-data", "file:///etc/passwd", receiver.url[:-2]):
            with pytest.raises(PeregrineClientError) as e:
                client.submit(_tensor(), "id", notify_url=url)
            assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and e.value.details.startswith("spec.notify_url")


def test_a_server_without_a_secret_sends_no_webhooks(tmp_path: Path,
                                                      start_server: Callable[..., PeregrineServer]) -> None:
    server = start_server(jobs.repository(tmp_path / "models"), job_spool=tmp_path / "spool")
    with JobClient(f"127.0.0.1:{server.port}") as client, pytest.raises(PeregrineClientError) as e:
        client.submit(_tensor(), "id", notify_url="http://127.0.0.1:9/")
    assert "sends no webhooks" in e.value.details
    with pytest.raises(ValueError, match="needs --job-webhook-secret-file"):
        start_server(tmp_path / "models", job_spool=tmp_path / "spool2", job_webhook_allow=("http://x/",))
