"""The job service over real gRPC on loopback: uploads checked and resumable, jobs run through the data
plane, results fetched from any offset, every state and bound (issue 17)."""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from peregrine.client.errors import PeregrineClientError
from peregrine.client.jobs import JobClient
from peregrine.proto import detection_pb2 as det
from peregrine.proto import detection_pb2_grpc as det_grpc
from peregrine.proto import jobs_pb2 as pb
from peregrine.proto import jobs_pb2_grpc as pb_grpc
from peregrine.server.app import PeregrineServer
from support import jobs

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def served(tmp_path: Path, start_server: Callable[..., PeregrineServer]) -> Callable[..., PeregrineServer]:
    repo = jobs.repository(tmp_path / "models")

    def serve(**options: object) -> PeregrineServer:
        return start_server(repo, job_spool=tmp_path / "spool", **options)

    return serve


def _stub(server: PeregrineServer) -> pb_grpc.JobServiceStub:
    return pb_grpc.JobServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))


def _chunks(payload: bytes, spec: pb.JobSpec, size: int = 65536) -> Iterator[pb.SubmitChunk]:
    yield pb.SubmitChunk(spec=spec)
    for start in range(0, len(payload), size):
        yield pb.SubmitChunk(data=payload[start:start + size])


def _spec(model: str, payload: bytes, **fields: object) -> pb.JobSpec:
    return pb.JobSpec(model_name=model, total_bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest(),
                      **fields)  # type: ignore[arg-type]


def _code(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code(), e.value.details()


def test_an_archive_of_photographs_gives_the_boxes_detect_gives(served: Callable[..., PeregrineServer]) -> None:
    server = served()
    files = {f"{name}.jpg": jobs.photo(name) for name in jobs.PHOTOS} | {"notes/readme.txt": b"not an image",
                                                                        "broken.png": b"\x89PNG broken"}
    payload = jobs.tar_of(files)
    with JobClient(f"127.0.0.1:{server.port}") as client:
        job = client.submit(payload, "cam", chunk_bytes=100_000)
        assert jobs_state(job) in ("QUEUED", "RUNNING", "SUCCEEDED")
        seen: list[pb.Job] = []
        done = client.wait(job.job_id, progress=seen.append)
        assert jobs_state(done) == "SUCCEEDED", done.error
        assert done.items_total == len(jobs.PHOTOS) + 1 and done.items_done == done.items_total
        assert done.items_failed == 1 and done.kind == "archive" and done.result_format == "jsonl"
        assert seen[-1].state == pb.SUCCEEDED
        lines = [json.loads(x) for x in b"".join(c.data for c in client.result(job.job_id)).splitlines()]
    assert [line["source"] for line in lines] == sorted(n for n in files if not n.endswith(".txt"))
    broken = next(line for line in lines if line["source"] == "broken.png")
    assert "broken.png" in broken["error"] and "expected JPEG, PNG" in broken["error"]
    stub = det_grpc.DetectionServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
    for line in lines:
        if line is broken:
            continue
        answer = stub.Detect(det.DetectRequest(model_name="cam", images=[det.Image(encoded=files[line["source"]])]))
        expected = [(round(d.x1, 3), round(d.score, 4), d.class_id) for d in answer.results[0].boxes]
        assert [(round(b["x1"], 3), round(b["score"], 4), b["class_id"]) for b in line["boxes"]] == expected
        assert (line["height"], line["width"]) == (answer.results[0].height, answer.results[0].width)


def jobs_state(job: pb.Job) -> str:
    return pb.JobState.Name(job.state)


def test_a_tensor_job_splits_rows_and_returns_them_as_npz(served: Callable[..., PeregrineServer]) -> None:
    server = served()
    x = np.random.default_rng(0).standard_normal((37, 4)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, x)
    with JobClient(f"127.0.0.1:{server.port}") as client:
        job = client.wait(client.submit(buf.getvalue(), "id").job_id)
        assert jobs_state(job) == "SUCCEEDED" and job.kind == "tensor" and job.result_format == "npz"
        result = np.load(io.BytesIO(b"".join(c.data for c in client.result(job.job_id))))
        np.testing.assert_array_equal(result["OUTPUT0"], x)
        # An .npz names its inputs; a compressed one is streamed as well.
        a = np.arange(5 * 16, dtype=np.int32).reshape(5, 16)
        buf = io.BytesIO()
        np.savez_compressed(buf, INPUT0=a, INPUT1=np.ones_like(a))
        job = client.wait(client.submit(buf.getvalue(), "two").job_id)
        assert jobs_state(job) == "SUCCEEDED", job.error
        with zipfile.ZipFile(io.BytesIO(b"".join(c.data for c in client.result(job.job_id)))) as z:
            assert sorted(z.namelist()) == ["OUTPUT0.npy", "OUTPUT1.npy"]
        # An unnamed .npy for a model of two inputs: the job fails saying which parameter names it.
        buf = io.BytesIO()
        np.save(buf, a)
        job = client.wait(client.submit(buf.getvalue(), "two").job_id)
        assert jobs_state(job) == "FAILED" and "parameters.input" in job.error
        job = client.wait(client.submit(buf.getvalue(), "two", parameters={"input": "INPUT0"}).job_id)
        # The model needs both: every item fails, and so does the job, with the first item's reason.
        assert jobs_state(job) == "FAILED" and job.error.startswith("every item failed") and "INPUT1" in job.error


def test_uploads_are_checked_before_anything_runs(served: Callable[..., PeregrineServer]) -> None:
    server = served()
    stub = _stub(server)
    payload = jobs.photo_archive()
    # A wrong SHA-256: rejected, nothing kept.
    spec = _spec("cam", payload)
    spec.sha256 = "0" * 64
    code, text = _code(lambda: stub.Submit(_chunks(payload, spec)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "spec.sha256" in text and "nothing was run" in text
    # Longer than declared.
    spec = _spec("cam", payload)
    code, text = _code(lambda: stub.Submit(_chunks(payload + b"x", spec)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "longer than spec.total_bytes" in text
    assert list(stub.ListJobs(pb.ListJobsRequest()).jobs) == []
    assert [p.name for p in (server.config.job_spool or Path()).iterdir() if len(p.name) == 32] == []
    # Field by field.
    for spec, field in [(pb.JobSpec(total_bytes=1, sha256="a" * 64), "spec.model_name"),
                        (pb.JobSpec(model_name="nope", total_bytes=1, sha256="a" * 64), "spec.model_name"),
                        (pb.JobSpec(model_name="cam", sha256="a" * 64), "spec.total_bytes"),
                        (pb.JobSpec(model_name="cam", total_bytes=1), "spec.sha256"),
                        (pb.JobSpec(model_name="cam", total_bytes=1, sha256="xyz"), "spec.sha256"),
                        (pb.JobSpec(model_name="cam", total_bytes=1, sha256="a" * 64, kind="video3d"), "spec.kind"),
                        (pb.JobSpec(model_name="cam", total_bytes=1, sha256="a" * 64, time_limit_s=10 ** 6),
                         "spec.time_limit_s"),
                        (pb.JobSpec(model_name="cam", total_bytes=2 << 30, sha256="a" * 64), "spec.total_bytes"),
                        (pb.JobSpec(model_name="cam", input_location="/etc/passwd"), "spec.input_location")]:
        code, text = _code(lambda spec=spec: stub.Submit(iter([pb.SubmitChunk(spec=spec)])))
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (field, code)
        assert text.startswith(field), (field, text)
    code, text = _code(lambda: stub.Submit(iter([pb.SubmitChunk(data=b"x")])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "JobSpec" in text
    code, text = _code(lambda: stub.Submit(iter([])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "JobSpec" in text


def test_a_cut_upload_is_resumed_from_what_arrived(served: Callable[..., PeregrineServer]) -> None:
    server = served()
    stub = _stub(server)
    payload = jobs.photo_archive()
    spec = _spec("cam", payload)
    half = len(payload) // 2
    call = stub.Submit.future(_chunks(payload[:half], spec))
    with pytest.raises(grpc.RpcError) as e:
        call.result()
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "resume it" in e.value.details()
    job_id = dict(call.initial_metadata())["peregrine-job-id"]
    job = stub.GetJob(pb.JobRef(job_id=job_id))
    assert jobs_state(job) == "UPLOADING" and job.received_bytes == half
    # Resuming past what arrived is refused; from an earlier offset, the rest is taken again.
    code, text = _code(lambda: stub.Submit(iter([pb.SubmitChunk(spec=pb.JobSpec(job_id=job_id,
                                                                                resume_offset=half + 1))])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "resume_offset" in text
    job = stub.Submit(_chunks(payload[half - 1000:], pb.JobSpec(job_id=job_id, resume_offset=half - 1000)))
    assert job.job_id == job_id and jobs_state(job) in ("QUEUED", "RUNNING", "SUCCEEDED")
    with JobClient(f"127.0.0.1:{server.port}") as client:
        assert jobs_state(client.wait(job_id)) == "SUCCEEDED"
    code, _ = _code(lambda: stub.Submit(iter([pb.SubmitChunk(spec=pb.JobSpec(job_id=job_id))])))
    assert code == grpc.StatusCode.FAILED_PRECONDITION  # its upload is over


def test_cancel_in_every_state(served: Callable[..., PeregrineServer]) -> None:
    server = served(job_workers=1, job_items_in_flight=1)
    stub = _stub(server)
    big = jobs.photo_archive(copies=20)  # 120 images, a job of several seconds
    with JobClient(f"127.0.0.1:{server.port}") as client:
        # UPLOADING
        call = stub.Submit.future(_chunks(big[:1000], _spec("cam", big)))
        with pytest.raises(grpc.RpcError):
            call.result()
        uploading = dict(call.initial_metadata())["peregrine-job-id"]
        assert jobs_state(client.cancel(uploading)) == "CANCELLED"
        # RUNNING, and QUEUED behind it (one worker)
        running = client.submit(big, "cam").job_id
        queued = client.submit(big, "cam").job_id
        deadline = time.monotonic() + 60
        while client.get(running).items_done == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert jobs_state(client.get(queued)) == "QUEUED"
        assert jobs_state(client.cancel(queued)) == "CANCELLED"
        cancelled = client.cancel(running)
        assert jobs_state(cancelled) == "CANCELLED" and cancelled.error == "cancelled by the client"
        time.sleep(1.0)
        after = client.get(running)
        assert jobs_state(after) == "CANCELLED" and after.items_done < after.items_total  # it stopped
        # Ended: nothing to cancel; its result is not served.
        for job_id in (uploading, queued, running):
            with pytest.raises(PeregrineClientError) as e:
                client.cancel(job_id)
            assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION and "already ended" in e.value.details
            with pytest.raises(PeregrineClientError) as e:
                list(client.result(job_id))
            assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
        # A job that finished: cancel is refused, its result stays.
        small = client.wait(client.submit(jobs.photo_archive(), "cam").job_id)
        with pytest.raises(PeregrineClientError):
            client.cancel(small.job_id)
        assert jobs_state(client.get(small.job_id)) == "SUCCEEDED"


def test_unknown_and_malformed_job_ids(served: Callable[..., PeregrineServer]) -> None:
    stub = _stub(served())
    for rpc in (stub.GetJob, stub.CancelJob, stub.DeleteJob):
        code, text = _code(lambda rpc=rpc: rpc(pb.JobRef(job_id="0" * 32)))
        assert code == grpc.StatusCode.NOT_FOUND and "no job" in text
        code, text = _code(lambda rpc=rpc: rpc(pb.JobRef(job_id="../../etc")))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and text.startswith("job_id")
    for stream in (lambda: list(stub.WatchJob(pb.JobRef(job_id="f" * 32))),
                   lambda: list(stub.GetResult(pb.ResultRequest(job_id="f" * 32)))):
        assert _code(stream)[0] == grpc.StatusCode.NOT_FOUND


def test_results_resume_from_any_offset_and_expire(served: Callable[..., PeregrineServer]) -> None:
    server = served(job_result_ttl_s=3600)
    stub = _stub(server)
    with JobClient(f"127.0.0.1:{server.port}") as client:
        job = client.wait(client.submit(jobs.photo_archive(), "cam").job_id)
        whole = b"".join(c.data for c in client.result(job.job_id))
        assert len(whole) == job.result_bytes
        for offset in (0, 1, len(whole) // 2, len(whole)):
            chunks = list(client.result(job.job_id, offset))
            assert b"".join(c.data for c in chunks) == whole[offset:]
            summary = json.loads(chunks[-1].summary_json)
            assert summary["items"] == len(jobs.PHOTOS) and summary["failed"] == 0
            assert summary["detections"] == sum(len(json.loads(x)["boxes"]) for x in whole.splitlines())
        code, text = _code(lambda: list(stub.GetResult(pb.ResultRequest(job_id=job.job_id, offset=len(whole) + 1))))
        assert code == grpc.StatusCode.OUT_OF_RANGE and "offset" in text
        # The TTL: once past, the sweeper removes the job and its files.
        assert server.jobs is not None
        spool = server.config.job_spool or Path()
        assert (spool / job.job_id).is_dir()
        removed = server.jobs.sweep(now=job.expires_unix_ms + 1)
        assert job.job_id in removed and not (spool / job.job_id).exists()
        with pytest.raises(PeregrineClientError) as e:
            client.get(job.job_id)
        assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_the_spool_quota_refuses_before_writing(served: Callable[..., PeregrineServer]) -> None:
    payload = jobs.photo_archive()
    server = served(job_quota_bytes=len(payload) + 1000)
    with JobClient(f"127.0.0.1:{server.port}") as client:
        first = client.submit(payload, "cam")
        with pytest.raises(PeregrineClientError) as e:
            client.submit(payload, "cam")  # the first still holds its payload (or its result)
        assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "quota" in e.value.details
        assert len(list(client.list())) == 1
        client.wait(first.job_id)
        client.delete(first.job_id)  # room again
        assert jobs_state(client.wait(client.submit(payload, "cam").job_id)) == "SUCCEEDED"


def test_a_job_past_its_time_limit_fails_with_the_reason(served: Callable[..., PeregrineServer]) -> None:
    server = served(job_items_in_flight=1)
    with JobClient(f"127.0.0.1:{server.port}") as client:
        job = client.wait(client.submit(jobs.photo_archive(copies=40), "cam", time_limit_s=1).job_id)
    assert jobs_state(job) == "FAILED" and job.error.startswith("time limit: the job ran 1 s")


def test_list_pages_newest_first_and_filters(served: Callable[..., PeregrineServer]) -> None:
    server = served()
    x = io.BytesIO()
    np.save(x, np.ones((2, 4), np.float32))
    with JobClient(f"127.0.0.1:{server.port}") as client:
        ids = [client.submit(x.getvalue(), "id", client_tag=str(i)).job_id for i in range(5)]
        for job_id in ids:
            client.wait(job_id)
        assert [j.job_id for j in client.list(page_size=2)] == ids[::-1]
        assert [j.job_id for j in client.list(model="id", state="SUCCEEDED")] == ids[::-1]
        assert list(client.list(model="cam")) == [] and list(client.list(state="RUNNING")) == []
        stub = _stub(server)
        code, text = _code(lambda: stub.ListJobs(pb.ListJobsRequest(page_token="garbage")))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and text.startswith("page_token")
        code, text = _code(lambda: stub.ListJobs(pb.ListJobsRequest(page_size=5000)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and text.startswith("page_size")
        client.delete(ids[0])
        assert ids[0] not in [j.job_id for j in client.list()]


def test_input_locations_are_read_only_under_allowed_roots(tmp_path: Path,
                                                           served: Callable[..., PeregrineServer]) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "photos.tar").write_bytes(jobs.photo_archive())
    for name in jobs.PHOTOS[:2]:
        (inputs / f"{name}.jpg").write_bytes(jobs.photo(name))
    (inputs / "list.txt").write_text(f"{inputs / 'astronaut.jpg'}\n# a comment\n{inputs / 'chelsea.jpg'}\n"
                                     "/etc/hostname\n")
    server = served(job_input_roots=(inputs,))
    with JobClient(f"127.0.0.1:{server.port}") as client:
        job = client.wait(client.submit_location(f"file://{inputs / 'photos.tar'}", "cam").job_id)
        assert jobs_state(job) == "SUCCEEDED" and job.items_done == len(jobs.PHOTOS)
        assert (inputs / "photos.tar").exists()  # the server's input is not its to remove
        job = client.wait(client.submit_location(str(inputs / "list.txt"), "cam", kind="images").job_id)
        assert jobs_state(job) == "SUCCEEDED" and (job.items_done, job.items_failed) == (3, 1)
        lines = [json.loads(x) for x in b"".join(c.data for c in client.result(job.job_id)).splitlines()]
        assert "not under an allowed input root" in lines[2]["error"]
        for location in ("/etc/passwd", str(inputs / ".." / "spool"), "s3://bucket/key"):
            with pytest.raises(PeregrineClientError) as e:
                client.submit_location(location, "cam")
            assert e.value.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
            assert e.value.details.startswith("spec.input_location")


def test_a_video_gives_every_strideth_frame_with_its_time(tmp_path: Path,
                                                          served: Callable[..., PeregrineServer]) -> None:
    import cv2

    video = tmp_path / "drive.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (320, 240))
    for i in range(10):
        frame = cv2.imdecode(np.frombuffer(jobs.photo(jobs.PHOTOS[i % 3]), np.uint8), cv2.IMREAD_COLOR)
        writer.write(cv2.resize(frame, (320, 240)))
    writer.release()
    server = served()
    with JobClient(f"127.0.0.1:{server.port}") as client:
        job = client.wait(client.submit(video, "cam", parameters={"stride": "2"}).job_id)
        assert jobs_state(job) == "SUCCEEDED", job.error
        assert job.kind == "video" and job.items_total == 5
        lines = [json.loads(x) for x in b"".join(c.data for c in client.result(job.job_id)).splitlines()]
        assert [x["source"] for x in lines] == [f"frame {i}" for i in range(0, 10, 2)]
        assert [x["stamp_ns"] for x in lines] == [i * 200_000_000 for i in range(0, 10, 2)]  # 5 fps
        assert all((x["height"], x["width"]) == (240, 320) for x in lines)
        bad = client.wait(client.submit(b"RIFF\x00\x00\x00\x00AVI not really", "cam").job_id)
        assert jobs_state(bad) == "FAILED" and "kind 'video'" in bad.error
