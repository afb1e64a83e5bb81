"""Asynchronous jobs (``peregrine.v1.JobService``): send a payload now, fetch the result later.

::

    from peregrine.client.jobs import JobClient

    with JobClient("127.0.0.1:8001") as jobs:
        job = jobs.submit("photos.tar", model="yolov8n_detect")   # uploads in 1 MiB chunks, with its SHA-256
        job = jobs.wait(job.job_id, progress=print)               # follows WatchJob until it ends
        jobs.download(job.job_id, "detections.jsonl")             # resumes a partial file where it stopped

An upload that breaks off (the connection, the server restarting) is resumed by :meth:`JobClient.submit`
itself, from what the server has, up to ``retries`` times; :meth:`JobClient.download` appends to a partial
file from its length. Jobs are the server's to keep: they survive its restarts.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from peregrine.proto import jobs_pb2 as pb
from peregrine.proto import jobs_pb2_grpc as pb_grpc

from .channel import MAX_MESSAGE_BYTES
from .errors import PeregrineClientError

CHUNK_BYTES = 1 << 20
JOB_ID_HEADER = "peregrine-job-id"  # Submit's initial metadata: the job being uploaded
ENDED = {pb.SUCCEEDED, pb.FAILED, pb.CANCELLED}


def state_name(job: pb.Job) -> str:
    return pb.JobState.Name(job.state)


class JobClient:
    """A client of one server's job service (see the module docstring)."""

    def __init__(self, address: str, *, channel: grpc.Channel | None = None, retries: int = 5,
                 retry_wait_s: float = 1.0) -> None:
        self.address = address
        self._own = channel is None
        self.channel = channel or grpc.insecure_channel(address, options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
        self.stub = pb_grpc.JobServiceStub(self.channel)
        self.retries = retries
        self.retry_wait_s = retry_wait_s

    def __enter__(self) -> JobClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._own:
            self.channel.close()

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self.stub, method)(*args, **kwargs)
        except grpc.RpcError as e:
            raise PeregrineClientError.from_rpc_error(e, method) from None

    # -- submit -----------------------------------------------------------------------------------
    def submit(self, payload: str | Path | bytes, model: str, *, kind: str = "", version: str = "",
               parameters: dict[str, str] | None = None, time_limit_s: int = 0, client_tag: str = "",
               notify_url: str = "", chunk_bytes: int = CHUNK_BYTES) -> pb.Job:
        """Upload ``payload`` (a file, or bytes) and queue a job of ``model`` over it; the queued job.
        ``notify_url``: where the server POSTs the outcome when the job ends (a webhook)."""
        size, digest = _measure(payload)
        spec = pb.JobSpec(model_name=model, model_version=version, kind=kind, total_bytes=size, sha256=digest,
                          parameters=parameters or {}, time_limit_s=time_limit_s, client_tag=client_tag,
                          notify_url=notify_url)
        return self._upload(payload, spec, "", chunk_bytes)

    def resume(self, job_id: str, payload: str | Path | bytes, chunk_bytes: int = CHUNK_BYTES) -> pb.Job:
        """Finish the upload of job ``job_id`` (one whose upload broke off, e.g. when this client or the
        server stopped) from the bytes the server has."""
        return self._upload(payload, None, job_id, chunk_bytes)

    def _upload(self, payload: str | Path | bytes, spec: pb.JobSpec | None, job_id: str, chunk_bytes: int) -> pb.Job:
        attempt = 0
        while True:
            offset = 0
            if job_id:
                offset = self.get(job_id).received_bytes
                spec = pb.JobSpec(job_id=job_id, resume_offset=offset)
            assert spec is not None
            stream = _Chunks(payload, offset, chunk_bytes, pb.SubmitChunk(spec=spec))
            call = self.stub.Submit.future(iter(stream))
            try:
                for key, value in call.initial_metadata() or ():  # the job's id, before the payload goes
                    if key == JOB_ID_HEADER:
                        job_id = str(value)
                return call.result()
            except grpc.RpcError as e:
                retryable = e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION,
                                         grpc.StatusCode.CANCELLED)
                if not job_id or not retryable or attempt >= self.retries:
                    raise PeregrineClientError.from_rpc_error(e, "Submit") from None
                attempt += 1
                self._wait_for_server(job_id)

    def submit_location(self, location: str, model: str, *, kind: str = "", version: str = "",
                        parameters: dict[str, str] | None = None, sha256: str = "") -> pb.Job:
        """Queue a job over a file the server reads itself (under its ``--job-input-root``)."""
        spec = pb.JobSpec(model_name=model, model_version=version, kind=kind, input_location=location,
                          parameters=parameters or {}, sha256=sha256)
        return self._call("Submit", iter([pb.SubmitChunk(spec=spec)]))

    def _wait_for_server(self, job_id: str) -> None:
        deadline = time.monotonic() + 60
        while True:
            time.sleep(self.retry_wait_s)
            try:
                self.stub.GetJob(pb.JobRef(job_id=job_id), timeout=5)
                return
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise PeregrineClientError.from_rpc_error(e, "GetJob") from None

    # -- follow and fetch -------------------------------------------------------------------------
    def get(self, job_id: str) -> pb.Job:
        return self._call("GetJob", pb.JobRef(job_id=job_id))

    def watch(self, job_id: str) -> Iterator[pb.Job]:
        try:
            yield from self.stub.WatchJob(pb.JobRef(job_id=job_id))
        except grpc.RpcError as e:
            raise PeregrineClientError.from_rpc_error(e, "WatchJob") from None

    def wait(self, job_id: str, progress: Callable[[pb.Job], None] | None = None, timeout_s: float = 0) -> pb.Job:
        """Follow the job until it ends (reconnecting if the server restarts); the ended job."""
        deadline = time.monotonic() + timeout_s if timeout_s else None
        job = self.get(job_id)
        while job.state not in ENDED:
            try:
                for job in self.stub.WatchJob(pb.JobRef(job_id=job_id),
                                              timeout=max(deadline - time.monotonic(), 0.001) if deadline else None):
                    if progress is not None:
                        progress(job)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise PeregrineClientError.from_rpc_error(e, "WatchJob") from None
                self._wait_for_server(job_id)
                job = self.get(job_id)
        return job

    def result(self, job_id: str, offset: int = 0) -> Iterator[pb.ResultChunk]:
        try:
            yield from self.stub.GetResult(pb.ResultRequest(job_id=job_id, offset=offset))
        except grpc.RpcError as e:
            raise PeregrineClientError.from_rpc_error(e, "GetResult") from None

    def download(self, job_id: str, path: str | Path) -> dict[str, Any]:
        """Write the job's result to ``path`` (appending to a partial file from its length, resuming after
        a broken stream); the job's summary."""
        import json

        path = Path(path)
        attempt = 0
        while True:
            offset = path.stat().st_size if path.exists() else 0
            try:
                with open(path, "ab") as f:
                    for chunk in self.stub.GetResult(pb.ResultRequest(job_id=job_id, offset=offset)):
                        f.write(chunk.data)
                        if chunk.summary_json:
                            return dict(json.loads(chunk.summary_json))
                return {}
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or attempt >= self.retries:
                    raise PeregrineClientError.from_rpc_error(e, "GetResult") from None
                attempt += 1
                self._wait_for_server(job_id)

    # -- manage -----------------------------------------------------------------------------------
    def cancel(self, job_id: str) -> pb.Job:
        return self._call("CancelJob", pb.JobRef(job_id=job_id))

    def delete(self, job_id: str) -> None:
        self._call("DeleteJob", pb.JobRef(job_id=job_id))

    def list(self, state: str = "", model: str = "", page_size: int = 0) -> Iterator[pb.Job]:
        """Every job (newest first), page by page."""
        token = ""
        while True:
            page = self._call("ListJobs", pb.ListJobsRequest(state=pb.JobState.Value(state) if state else 0,
                                                             model_name=model, page_size=page_size, page_token=token))
            yield from page.jobs
            token = page.next_page_token
            if not token:
                return


def _measure(payload: str | Path | bytes) -> tuple[int, str]:
    digest = hashlib.sha256()
    if isinstance(payload, bytes):
        digest.update(payload)
        return len(payload), digest.hexdigest()
    with open(payload, "rb") as f:
        while chunk := f.read(4 << 20):
            digest.update(chunk)
    return os.path.getsize(payload), digest.hexdigest()


class _Chunks:
    """The messages of one Submit stream from ``offset``; remembers nothing but where it is."""

    def __init__(self, payload: str | Path | bytes, offset: int, chunk_bytes: int, first: pb.SubmitChunk) -> None:
        self.payload, self.offset, self.chunk_bytes, self.first = payload, offset, chunk_bytes, first

    def __iter__(self) -> Iterator[pb.SubmitChunk]:
        yield self.first
        if isinstance(self.payload, bytes):
            for start in range(self.offset, len(self.payload), self.chunk_bytes):
                yield pb.SubmitChunk(data=self.payload[start:start + self.chunk_bytes])
            return
        with open(self.payload, "rb") as f:
            f.seek(self.offset)
            while chunk := f.read(self.chunk_bytes):
                yield pb.SubmitChunk(data=chunk)
