"""Nothing is lost: the server process is killed with SIGKILL during an upload, during processing and during
a result download, started again over the same spool, and every job completes with the result an
uninterrupted run gives (issue 17, durability)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from peregrine.client.jobs import JobClient
from peregrine.proto import jobs_pb2 as pb
from peregrine.proto import jobs_pb2_grpc as pb_grpc
from support import jobs

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


def test_kill_9_at_any_moment_loses_nothing(tmp_path: Path) -> None:
    repo = jobs.repository(tmp_path / "models")
    payload = jobs.photo_archive(copies=60)  # 360 photographs: several 0.5 s checkpoints even on a fast machine
    server = jobs.ServerProcess(repo, tmp_path / "spool", tmp_path / "server.log",
                                "--job-items-in-flight", "2").start()
    try:
        # The reference: the same payload, uninterrupted.
        with JobClient(server.address) as client:
            reference_job = client.wait(client.submit(payload, "cam").job_id)
            assert pb.JobState.Name(reference_job.state) == "SUCCEEDED", reference_job.error
            reference = b"".join(c.data for c in client.result(reference_job.job_id))

        # 1. Killed during the upload: the client resumes from what reached the server's disk.
        stub_channel = grpc.insecure_channel(server.address)
        stub = pb_grpc.JobServiceStub(stub_channel)
        spec = pb.JobSpec(model_name="cam", total_bytes=len(payload), sha256=_sha(payload))
        half = len(payload) // 2

        def upload() -> Iterator[pb.SubmitChunk]:
            yield pb.SubmitChunk(spec=spec)
            for start in range(0, half, 65536):
                yield pb.SubmitChunk(data=payload[start:min(start + 65536, half)])
            server.kill()  # mid-stream: the rest never comes
            time.sleep(60)

        call = stub.Submit.future(upload())
        job_id = dict(call.initial_metadata())["peregrine-job-id"]
        with pytest.raises(grpc.RpcError):
            call.result(timeout=30)
        stub_channel.close()
        server.start()
        with JobClient(server.address) as client:
            job = client.get(job_id)
            # What reached its disk before the kill (what was still in the socket's buffers is sent again).
            assert pb.JobState.Name(job.state) == "UPLOADING" and job.received_bytes <= half
            resumed = client.resume(job_id, payload)
            assert resumed.job_id == job_id

            # 2. Killed while it runs, twice: it resumes from its checkpoint, nothing redone or lost.
            done_before = 0
            for kills in range(2):
                deadline = time.monotonic() + 120
                while (job := client.get(job_id)).items_done <= done_before:  # a checkpoint past the last
                    assert time.monotonic() < deadline and job.state in (pb.QUEUED, pb.RUNNING), job
                    time.sleep(0.02)
                assert job.items_done < job.items_total, "the job ended before it could be killed"
                done_before = job.items_done
                server.kill()
                server.start()
                assert client.get(job_id).items_done >= done_before  # the checkpoint survived
                # and the job went on from it (what was done after it, before the kill, is done again)
                line = f"job {job_id}: resumes from item "
                deadline = time.monotonic() + 60
                while (log := (tmp_path / "server.log").read_text()).count(line) < kills + 1:
                    assert time.monotonic() < deadline, log
                    time.sleep(0.05)
                assert int(log.rsplit(line, 1)[1].split()[0]) >= done_before
            done = client.wait(job_id, timeout_s=240)
            assert pb.JobState.Name(done.state) == "SUCCEEDED", done.error
            assert done.items_done == done.items_total == 360

        # 3. Killed during the download: the client appends from where its file stops.
        out = tmp_path / "result.jsonl"
        with JobClient(server.address) as client:
            chunks = client.result(job_id)
            first = next(iter(chunks))
            out.write_bytes(first.data[: len(first.data) // 2])
            server.kill()
            server.start()
            summary = client.download(job_id, out)
        assert out.read_bytes() == reference
        assert summary["items"] == 360 and summary["failed"] == 0
    finally:
        server.stop()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
