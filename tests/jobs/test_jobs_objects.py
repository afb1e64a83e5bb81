"""Jobs' payloads and results in an object store (issue 17): a ``file://`` store in a directory apart from the
spool, always; an ``s3://`` one against a real S3-compatible server (SeaweedFS) where it is installed. Uploads
go to the store in parts and resume from what the store holds, jobs run from it and checkpoint into it, results
are served from it, TTL, delete and cancel remove its objects, a server killed with SIGKILL loses nothing, and
two servers sharing PostgreSQL and the store serve one queue with nothing on a shared disk."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from peregrine.client.errors import PeregrineClientError
from peregrine.client.jobs import JobClient, state_name
from peregrine.proto import jobs_pb2 as pb
from peregrine.proto import jobs_pb2_grpc as pb_grpc
from peregrine.server.app import PeregrineServer
from support import jobs

pytest.importorskip("obstore", reason="the [objectstore] extra (obstore) is not installed")
pytestmark = pytest.mark.timeout(300)

PART = 64 * 1024  # small parts, so that every payload here spans several


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return jobs.repository(tmp_path / "models")


@pytest.fixture
def served(tmp_path: Path, repo: Path, start_server: Callable[..., PeregrineServer]) -> Callable[..., PeregrineServer]:
    """A server whose payloads and results are in ``tmp_path/objects`` (its spool is ``tmp_path/spool``)."""

    def serve(**options: object) -> PeregrineServer:
        settings: dict[str, object] = {"job_spool": tmp_path / "spool", "job_objects": f"file://{tmp_path}/objects",
                                       "job_object_part_bytes": PART, **options}
        return start_server(repo, **settings)

    return serve


def _objects(root: Path, job_id: str = "") -> list[str]:
    """The object keys under ``root`` (a file:// store), or under one job's prefix: its files but the ones it
    is writing (``<key>#<n>``, see _staging)."""
    base = root / "jobs" / job_id if job_id else root
    return sorted(str(p.relative_to(root)) for p in base.rglob("*") if p.is_file() and p not in _staging(base))


def _staging(base: Path) -> list[Path]:
    """The files a file:// store was writing under ``base`` (``<key>#<n>``, renamed to ``<key>`` when whole):
    a server killed while writing a part leaves one."""
    return [p for p in base.rglob("*#*") if re.fullmatch(r".+#\d+", p.name)] if base.exists() else []


def _spec(model: str, payload: bytes) -> pb.JobSpec:
    return pb.JobSpec(model_name=model, total_bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest())


def _chunks(payload: bytes, spec: pb.JobSpec, size: int = 10_000) -> Iterator[pb.SubmitChunk]:
    yield pb.SubmitChunk(spec=spec)
    for start in range(0, len(payload), size):
        yield pb.SubmitChunk(data=payload[start:start + size])


def _result(client: JobClient, job_id: str) -> bytes:
    return b"".join(c.data for c in client.result(job_id))


def _video(path: Path) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (320, 240))
    for i in range(10):
        frame = cv2.imdecode(np.frombuffer(jobs.photo(jobs.PHOTOS[i % 3]), np.uint8), cv2.IMREAD_COLOR)
        writer.write(cv2.resize(frame, (320, 240)))
    writer.release()
    return path


def test_jobs_run_from_the_store_and_give_what_the_spool_gives(tmp_path: Path, repo: Path,
                                                               served: Callable[..., PeregrineServer],
                                                               start_server: Callable[..., PeregrineServer]) -> None:
    objects = tmp_path / "objects"
    server = served()
    reference_server = start_server(repo, job_spool=tmp_path / "reference-spool")  # payloads in its spool
    archive = jobs.photo_archive()  # 14 parts
    a = np.arange(2000 * 16, dtype=np.int32).reshape(2000, 16)
    npz = io.BytesIO()
    np.savez(npz, INPUT0=a, INPUT1=np.full_like(a, 7))  # a zip read by ranged reads across 4 parts
    video = _video(tmp_path / "drive.avi").read_bytes()  # downloaded whole first: OpenCV reads files
    payloads = [(archive, "cam", {}), (npz.getvalue(), "two", {}), (video, "cam", {"stride": "2"})]
    results = []
    with JobClient(f"127.0.0.1:{server.port}") as client, \
            JobClient(f"127.0.0.1:{reference_server.port}") as reference:
        for payload, model, parameters in payloads:
            job = client.wait(client.submit(payload, model, parameters=parameters, chunk_bytes=50_000).job_id)
            assert state_name(job) == "SUCCEEDED", job.error
            expected = reference.wait(reference.submit(payload, model, parameters=parameters).job_id)
            assert (job.kind, job.items_total, job.items_failed) == (expected.kind, expected.items_total,
                                                                     expected.items_failed)
            result, reference_result = _result(client, job.job_id), _result(reference, expected.job_id)
            if job.result_format == "npz":  # the same arrays (a zip's members carry the time they were written)
                with np.load(io.BytesIO(result)) as got, np.load(io.BytesIO(reference_result)) as want:
                    assert sorted(got.files) == sorted(want.files)
                    for name in got.files:
                        np.testing.assert_array_equal(got[name], want[name])
            else:
                assert result == reference_result
            # The store keeps the result alone (the payload and checkpoints went when the job ended), the spool
            # nothing of the job: any server with the store serves it.
            stored = _objects(objects, job.job_id)
            assert len(stored) == 1 and re.fullmatch(rf"jobs/{job.job_id}/result\.[0-9a-f]+\.(jsonl|npz)", stored[0])
            assert (objects / stored[0]).read_bytes() == result
            assert not (tmp_path / "spool" / job.job_id).exists()
            for offset in (1, len(result) // 2, len(result)):
                assert b"".join(c.data for c in client.result(job.job_id, offset)) == result[offset:]
            results.append(result)
    with zipfile.ZipFile(io.BytesIO(results[1])) as z:
        np.testing.assert_array_equal(np.load(z.open("OUTPUT0.npy")), a + 7)


def test_a_cut_upload_resumes_from_what_the_store_holds(tmp_path: Path, served: Callable[..., PeregrineServer]) -> None:
    objects = tmp_path / "objects"
    server = served()
    stub = pb_grpc.JobServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
    payload = jobs.photo_archive()
    half = len(payload) // 2
    call = stub.Submit.future(_chunks(payload[:half], _spec("cam", payload)))
    with pytest.raises(grpc.RpcError) as e:
        call.result()
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "resume it" in e.value.details()
    job_id = dict(call.initial_metadata())["peregrine-job-id"]
    # The stream ended: what arrived is in the store, as whole parts and the rest as the last one.
    parts = _objects(objects, job_id)
    assert parts == [f"jobs/{job_id}/payload/{i:06d}" for i in range(half // PART + 1)]
    assert b"".join((objects / p).read_bytes() for p in parts) == payload[:half]
    assert stub.GetJob(pb.JobRef(job_id=job_id)).received_bytes == half
    with pytest.raises(grpc.RpcError) as e:
        stub.Submit(iter([pb.SubmitChunk(spec=pb.JobSpec(job_id=job_id, resume_offset=half + 1))]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "resume_offset" in e.value.details()
    # Resumed from inside an earlier part: that part is written again, the ones after it replaced.
    offset = 3 * PART + 100
    job = stub.Submit(_chunks(payload[offset:], pb.JobSpec(job_id=job_id, resume_offset=offset)))
    assert job.job_id == job_id and state_name(job) in ("QUEUED", "RUNNING", "SUCCEEDED")
    with JobClient(f"127.0.0.1:{server.port}") as client:
        done = client.wait(job_id)
        assert state_name(done) == "SUCCEEDED", done.error
        reference = client.wait(client.submit(payload, "cam").job_id)
        assert _result(client, job_id) == _result(client, reference.job_id)
    # A resumed upload whose bytes differ from the declared SHA-256: refused, and nothing of it stays.
    call = stub.Submit.future(_chunks(payload[:half], _spec("cam", payload)))
    with pytest.raises(grpc.RpcError):
        call.result()
    bad = dict(call.initial_metadata())["peregrine-job-id"]
    corrupt = payload[:half] + bytes(len(payload) - half)
    with pytest.raises(grpc.RpcError) as e:
        stub.Submit(_chunks(corrupt[half:], pb.JobSpec(job_id=bad, resume_offset=half)))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details().startswith("spec.sha256")
    assert _objects(objects, bad) == []


def test_ttl_delete_cancel_and_the_quota_remove_or_refuse_objects(tmp_path: Path,
                                                                    served: Callable[..., PeregrineServer]) -> None:
    objects = tmp_path / "objects"
    payload = jobs.photo_archive()
    server = served(job_quota_bytes=len(payload) + 100_000)  # one payload, and a few results
    assert server.jobs is not None
    stub = pb_grpc.JobServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
    with JobClient(f"127.0.0.1:{server.port}") as client:
        expiring = client.wait(client.submit(payload, "cam").job_id)
        deleted = client.wait(client.submit(payload, "cam").job_id)
        assert _objects(objects, expiring.job_id) and _objects(objects, deleted.job_id)
        # An upload cut short holds its declared size of the quota...
        call = stub.Submit.future(_chunks(payload[:3 * PART], _spec("cam", payload)))
        with pytest.raises(grpc.RpcError):
            call.result()
        cancelled = dict(call.initial_metadata())["peregrine-job-id"]
        assert len(_objects(objects, cancelled)) == 3
        # ... so another is refused before a byte of it is written, in the store or the spool.
        with pytest.raises(PeregrineClientError) as e:
            client.submit(payload, "cam")
        assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "quota" in e.value.details
        assert len(list(client.list())) == 3 and len(os.listdir(objects / "jobs")) == 3
        # A cancelled upload's parts go with it.
        assert state_name(client.cancel(cancelled)) == "CANCELLED"
        assert _objects(objects, cancelled) == []
        # Past its TTL the sweeper removes the job and its objects; a deleted job's go at once.
        assert expiring.job_id in server.jobs.sweep(now=expiring.expires_unix_ms + 1)
        assert _objects(objects, expiring.job_id) == []
        client.delete(deleted.job_id)
        assert _objects(objects, deleted.job_id) == []
        client.delete(cancelled)
    # Objects no record owns (left by a crash between a record's removal and its objects') are swept.
    stray = objects / "jobs" / ("e" * 32) / "payload" / "000000"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"left over")
    server.jobs.sweep()
    assert not (objects / "jobs" / ("e" * 32)).exists()
    assert _objects(objects) == []


def test_checkpoints_rebuild_a_tensor_result_and_ignore_a_dead_runs_late_writes(tmp_path: Path) -> None:
    """The object store's checkpoints of a tensor result, restored by another server's working directory:
    rows and failed items' lines come back exactly, and what a run wrote after its last committed
    checkpoint (it died, or lost its lease) is not taken."""
    from peregrine.server.core.types import InferResponse
    from peregrine.server.jobs.objects import ObjectBucket, RunFiles, StoreFiles
    from peregrine.server.jobs.results import ResultWriter, Tally
    from peregrine.server.jobs.sources import Item
    from peregrine.server.jobs.store import RUNNING, JobRecord

    bucket = ObjectBucket(f"file://{tmp_path}/objects")
    rows = np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32)

    def run(files: StoreFiles, record: JobRecord, token: str, stop: int, checkpoints: tuple[int, ...]) -> JobRecord:
        record.checkpoint_runs = [*record.checkpoint_runs, [token, record.items_done]]
        files_run = RunFiles(token)
        assert files.prepare_run(record, files_run)
        writer = ResultWriter(files.workdir(record.job_id), 10, record.result_bytes, True)
        tally = Tally(writer, record.summary)
        for i in range(record.items_done, stop):
            item = Item(i, f"row {i}", error="unreadable" if i in (2, 7) else "")
            tally.add(item, InferResponse("m", "1", "", outputs={"OUT": rows[i:i + 1]}), "")
            if i + 1 in checkpoints:
                committed = writer.checkpoint()
                files.checkpoint(record, files_run, i + 1, committed)
                record.items_done, record.result_bytes, record.summary = i + 1, committed, dict(tally.summary)
        writer.checkpoint()
        writer.close()
        return record

    first = StoreFiles(bucket, tmp_path / "spool-a")
    record = JobRecord("a" * 32, "m", state=RUNNING)
    # Run 1 commits items 0..5, then writes items 5..8 as a checkpoint it never commits (it died first).
    committed = run(first, record, "1111", 5, (3, 5))
    late = JobRecord(**{**record.__dict__, "checkpoint_runs": list(record.checkpoint_runs)})
    run(first, late, "1111", 8, (8,))
    # Run 2, on another server, resumes from item 5 and finishes.
    second = StoreFiles(bucket, tmp_path / "spool-b")
    record = run(second, committed, "2222", 10, (10,))
    writer = ResultWriter(second.workdir(record.job_id), 10, record.result_bytes, True)
    fmt, _ = writer.finish()
    with np.load(second.workdir(record.job_id) / f"result.{fmt}") as result:
        expected = rows.copy()
        expected[[2, 7]] = 0
        np.testing.assert_array_equal(result["OUT"], expected)
        errors = [json.loads(line) for line in result["errors.jsonl"].splitlines()]
    assert [e["index"] for e in errors] == [2, 7]
    # A record whose checkpoints are not all there is refused (the job starts over).
    gone = next(k for k, _ in bucket.list(f"jobs/{record.job_id}/checkpoint/output.OUT.npy/") if "-000000000003." in k)
    bucket.delete([gone])
    assert not StoreFiles(bucket, tmp_path / "spool-c").prepare_run(record, RunFiles("3333"))


@pytest.mark.slow
def test_a_part_cut_while_it_was_written_is_cleared_when_the_upload_resumes(tmp_path: Path) -> None:
    """A file:// store writes each object to ``<key>#<n>`` and renames it whole: a server killed meanwhile
    leaves that file, which the store neither lists nor deletes. The parts count without it, the resumed
    upload clears it, and so does deleting a job's objects."""
    from peregrine.server.jobs.objects import ObjectBucket, StoreFiles

    objects = tmp_path / "objects"
    files = StoreFiles(ObjectBucket(f"file://{objects}"), tmp_path / "spool", part_bytes=1000)
    job_id = "ab" * 16
    upload = files.open_upload(job_id, 0)
    for size in (1000, 1000, 500):  # two whole parts; the last 500 bytes wait in the working file
        upload.write(bytes(size))
    payload = objects / "jobs" / job_id / "payload"
    (payload / "000002#7").write_bytes(bytes(300))  # the third part, cut while it was written
    assert files.received(job_id) == 2000 and len(_staging(objects)) == 1
    upload.abort()  # the server's end: what had not reached the store is sent again
    resumed = files.open_upload(job_id, 2000)
    assert _staging(objects) == [] and resumed.received == 2000
    resumed.write(bytes(700))
    resumed.close()
    assert files.received(job_id) == 2700
    (payload / "000003#1").write_bytes(bytes(10))
    files.remove(job_id)
    assert _objects(objects) == [] and _staging(objects) == []


def test_kill_9_during_upload_run_and_download_loses_nothing(tmp_path: Path, repo: Path) -> None:
    objects = tmp_path / "objects"
    # 900 photographs, 130 parts of 1 MiB: a job long enough for several of the store's 2 s checkpoints even
    # where it runs at 100 photographs a second (items done move only at checkpoints)
    copies = 150
    items = copies * len(jobs.PHOTOS)
    payload = jobs.photo_archive(copies=copies)
    server = jobs.ServerProcess(repo, tmp_path / "spool", tmp_path / "server.log", "--job-items-in-flight", "2",
                                "--job-objects", f"file://{objects}", "--job-object-part-mb", "1").start()
    try:
        with JobClient(server.address) as client:
            reference_job = client.wait(client.submit(payload, "cam").job_id)
            assert state_name(reference_job) == "SUCCEEDED", reference_job.error
            reference = _result(client, reference_job.job_id)

        # 1. Killed during the upload: only whole parts in the store count as received.
        channel = grpc.insecure_channel(server.address)
        half = len(payload) // 2 + 12345

        def upload() -> Iterator[pb.SubmitChunk]:
            yield from _chunks(payload[:half], _spec("cam", payload), 65536)
            deadline = time.monotonic() + 30  # the parts before the cut have reached the store
            while len(_objects(objects)) < half // (1 << 20) + 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            server.kill()
            time.sleep(60)

        call = pb_grpc.JobServiceStub(channel).Submit.future(upload())
        job_id = dict(call.initial_metadata())["peregrine-job-id"]
        with pytest.raises(grpc.RpcError):
            call.result(timeout=60)
        channel.close()
        server.start()
        with JobClient(server.address) as client:
            job = client.get(job_id)
            stored = _objects(objects, job_id)
            assert state_name(job) == "UPLOADING" and 0 < job.received_bytes <= half
            assert job.received_bytes % (1 << 20) == 0 and job.received_bytes == len(stored) << 20
            assert client.resume(job_id, payload).job_id == job_id

            # 2. Killed while it runs, twice: it resumes from its last checkpoint in the store.
            done_before = 0
            for kills in range(2):
                deadline = time.monotonic() + 120
                while (job := client.get(job_id)).items_done <= done_before:
                    assert time.monotonic() < deadline and job.state in (pb.QUEUED, pb.RUNNING), job
                    time.sleep(0.02)
                assert job.items_done < job.items_total, "the job ended before it could be killed"
                done_before = job.items_done
                server.kill()
                server.start()
                assert client.get(job_id).items_done >= done_before
                line = f"job {job_id}: resumes from item "
                deadline = time.monotonic() + 60
                while (log := (tmp_path / "server.log").read_text()).count(line) < kills + 1:
                    assert time.monotonic() < deadline, log
                    time.sleep(0.05)
                assert int(log.rsplit(line, 1)[1].split()[0]) >= done_before
            done = client.wait(job_id, timeout_s=240)
            assert state_name(done) == "SUCCEEDED", done.error
            assert done.items_done == done.items_total == items
            assert "could not be restored" not in (tmp_path / "server.log").read_text()

        # 3. Killed during the download: the client appends from where its file stops.
        out = tmp_path / "result.jsonl"
        with JobClient(server.address) as client:
            first = next(iter(client.result(job_id)))
            out.write_bytes(first.data[: len(first.data) // 2])
            server.kill()
            server.start()
            summary = client.download(job_id, out)
        assert out.read_bytes() == reference
        assert summary["items"] == items and summary["failed"] == 0
        assert [k.rsplit("/", 1)[0] for k in _objects(objects, job_id)] == [f"jobs/{job_id}"]  # the result alone
        assert _staging(objects) == []  # nor a part a kill cut while it was written
    finally:
        server.stop()


@pytest.fixture
def postgres() -> Iterator[jobs.PostgresServer]:
    pytest.importorskip("psycopg", reason="the [postgres] extra (psycopg) is not installed")
    try:
        server = jobs.PostgresServer()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    yield server
    server.stop()


def _claims(logs: list[Path]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for log in logs:
        for job_id, owner in re.findall(r"job ([0-9a-f]{32}): claimed by (\S+)", log.read_text()):
            found.setdefault(job_id, []).append(owner)
    return found


@pytest.mark.slow
def test_two_servers_share_postgres_and_the_store_with_spools_of_their_own(tmp_path: Path, repo: Path,
                                                                           postgres: jobs.PostgresServer) -> None:
    objects = tmp_path / "objects"
    shared = ("--job-store", postgres.url, "--job-objects", f"file://{objects}", "--job-object-part-mb", "1",
              "--job-lease", "2", "--job-items-in-flight", "2")
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    a = jobs.ServerProcess(repo, tmp_path / "spool-a", logs[0], *shared).start()
    b = jobs.ServerProcess(repo, tmp_path / "spool-b", logs[1], *shared).start()
    try:
        payload = jobs.photo_archive(copies=5)  # 30 photographs, 5 parts
        with JobClient(a.address) as client_a, JobClient(b.address) as client_b:
            # An upload cut on A is finished on B: the parts are in the store, not on A's disk.
            stub = pb_grpc.JobServiceStub(client_a.channel)
            call = stub.Submit.future(_chunks(payload[:3 << 20], _spec("cam", payload), 65536))
            with pytest.raises(grpc.RpcError):
                call.result()
            cut = dict(call.initial_metadata())["peregrine-job-id"]
            assert client_b.get(cut).received_bytes == 3 << 20
            client_b.resume(cut, payload)
            ids = [cut, *(client_a.submit(payload, "cam").job_id for _ in range(5))]
            done = [client_b.wait(job_id, timeout_s=200) for job_id in ids]
            assert [state_name(j) for j in done] == ["SUCCEEDED"] * 6, [j.error for j in done]
            reference = _result(client_b, ids[1])
            assert all(_result(client_a, i) == reference == _result(client_b, i) for i in ids)
        claims = _claims(logs)
        assert all(len(claims[i]) == 1 for i in ids), claims
        assert len({owners[0] for owners in claims.values()}) == 2  # both servers worked

        # A long job; the server running it is killed; the other resumes it from the store's checkpoint.
        long_payload = jobs.photo_archive(copies=50)  # 300 photographs: several of the store's 2 s checkpoints
        with JobClient(a.address) as client:
            job_id = client.submit(long_payload, "cam").job_id
            deadline = time.monotonic() + 120
            while client.get(job_id).items_done == 0:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            first = _claims(logs)[job_id][0]
        victim, survivor = (a, b) if first in logs[0].read_text() else (b, a)
        victim.kill()
        with JobClient(survivor.address) as client:
            job = client.wait(job_id, timeout_s=200)
            assert state_name(job) == "SUCCEEDED", job.error
            assert job.items_done == job.items_total == 300
            reference_job = client.wait(client.submit(long_payload, "cam").job_id, timeout_s=200)
            assert _result(client, job_id) == _result(client, reference_job.job_id)
        owners = _claims(logs)[job_id]
        assert len(owners) == 2 and owners[0] != owners[1], owners
        survivor_log = (logs[1] if victim is a else logs[0]).read_text()
        assert f"job {job_id}: resumes from item" in survivor_log and "could not be restored" not in survivor_log
    finally:
        a.stop()
        b.stop()


def test_object_store_options_are_checked_naming_them(tmp_path: Path) -> None:
    from peregrine.server.app import job_service
    from peregrine.server.config import ServerConfig

    def build(**options: object) -> object:
        config = ServerConfig(model_repository=tmp_path, **options)  # type: ignore[arg-type]
        return job_service(config, None, None)  # type: ignore[arg-type]  # refused before it needs a data plane

    for url in ("ftp://host/dir", "file://relative/dir", "s3://", "s3://bucket/a/../b", str(tmp_path)):
        with pytest.raises(ValueError, match=r"^--job-objects: expected"):
            build(job_spool=tmp_path / "spool", job_objects=url)
    with pytest.raises(ValueError, match=r"^--job-objects needs --job-spool"):
        build(job_objects=f"file://{tmp_path}/objects")
    with pytest.raises(ValueError, match=r"^--job-objects: the S3 endpoint"):
        build(job_spool=tmp_path / "spool", job_objects="s3://bucket/jobs", job_s3_endpoint="minio:9000")
    with pytest.raises(ValueError, match=r"^job settings: object_part_bytes"):
        build(job_spool=tmp_path / "spool", job_objects=f"file://{tmp_path}/o", job_object_part_bytes=0)
    with pytest.raises(ValueError, match=r"^--job-input-root: expected"):
        build(job_spool=tmp_path / "spool", job_input_prefixes=("s3://",))


@pytest.mark.slow
def test_s3_payloads_results_and_input_locations_on_a_real_s3_server(
        tmp_path: Path, repo: Path, start_server: Callable[..., PeregrineServer],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import obstore
    from support import s3

    try:
        seaweed = s3.SeaweedS3()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    try:
        for name, value in seaweed.environment().items():  # credentials the standard way
            monkeypatch.setenv(name, value)
        bucket = seaweed.store("peregrine")
        photos = jobs.photo_archive()
        obstore.put(bucket, "inputs/day1/photos.tar", photos)
        obstore.put(bucket, "private/photos.tar", photos)
        server = start_server(repo, job_spool=tmp_path / "spool", job_objects="s3://peregrine/jobs",
                              job_s3_endpoint=seaweed.endpoint, job_object_part_bytes=PART,
                              job_input_prefixes=("s3://peregrine/inputs",))

        def keys(prefix: str) -> list[str]:
            return sorted(m["path"] for batch in obstore.list(bucket, prefix) for m in batch)

        stub = pb_grpc.JobServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
        with JobClient(f"127.0.0.1:{server.port}") as client:
            # Uploaded in parts, cut, resumed, run, served.
            half = len(photos) // 2
            call = stub.Submit.future(_chunks(photos[:half], _spec("cam", photos)))
            with pytest.raises(grpc.RpcError):
                call.result()
            job_id = dict(call.initial_metadata())["peregrine-job-id"]
            assert len(keys(f"jobs/jobs/{job_id}/payload/")) == half // PART + 1
            assert client.get(job_id).received_bytes == half
            client.resume(job_id, photos)
            job = client.wait(job_id)
            assert state_name(job) == "SUCCEEDED", job.error
            result = _result(client, job_id)
            assert len(result.splitlines()) == len(jobs.PHOTOS)
            assert [k.rsplit(".", 1)[-1] for k in keys(f"jobs/jobs/{job_id}/")] == ["jsonl"]
            # An input location in the bucket, under the allowed prefix: read where it is, not copied.
            located = client.wait(client.submit_location("s3://peregrine/inputs/day1/photos.tar", "cam",
                                                         sha256=hashlib.sha256(photos).hexdigest()).job_id)
            assert state_name(located) == "SUCCEEDED" and _result(client, located.job_id) == result
            assert keys("inputs/") == ["inputs/day1/photos.tar"]
            for location, code in [("s3://peregrine/private/photos.tar", grpc.StatusCode.INVALID_ARGUMENT),
                                   ("s3://peregrine/inputs-2/photos.tar", grpc.StatusCode.INVALID_ARGUMENT),
                                   ("s3://other/inputs/photos.tar", grpc.StatusCode.INVALID_ARGUMENT),
                                   ("s3://peregrine/inputs/none.tar", grpc.StatusCode.NOT_FOUND)]:
                with pytest.raises(PeregrineClientError) as e:
                    client.submit_location(location, "cam")
                assert e.value.code == code and e.value.details.startswith("spec.input_location"), location
            client.delete(job_id)
            client.delete(located.job_id)
        assert keys("jobs/") == []
    finally:
        seaweed.stop()
