"""Asynchronous inference: jobs uploaded now, run beside real-time traffic, fetched later.

:class:`JobService` is the transport-free core behind ``peregrine.v1.JobService``: it takes uploads into
the spool (checking their declared size and SHA-256), keeps every job's record in a :class:`~.store.JobStore`,
runs queued jobs and serves their results. It runs on the server's event loop; disk and database work goes
to one I/O thread, so a job never holds up a real-time request on the loop.

Running a job: its payload is opened as its kind (:mod:`.sources`) and its items go through the data plane
like any request (admission aside: a job is the server's own work), as *background* requests: the
batchers run them behind every real-time request, never inside a real-time batch, and one at a time while
real-time requests keep coming (scheduling/policy.py); each job keeps at most ``items_in_flight`` items
queued. Results are written in item order and committed at checkpoints (every ``checkpoint_s``): a restart
resumes each running job from its last checkpoint. With a shared store (PostgreSQL) several servers work one
queue, each running job held by a lease its server renews; an ended job's outcome may be POSTed to a webhook
(:mod:`.webhooks`).

Payloads and results are files in the spool, or objects in an object store (``objects_url``) that several
servers share, the spool then holding only each server's working files (:mod:`.objects`).

Lifecycle: UPLOADING → QUEUED → RUNNING → SUCCEEDED | FAILED | CANCELLED. An upload cut short stays
UPLOADING, resumable with the job id and the bytes received, until ``upload_timeout_s`` passes without a
byte; an ended job's result is kept ``result_ttl_s``; then both are removed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..core.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PeregrineError,
    ResourceExhausted,
    clipped,
)
from ..core.types import DetectRequest, EncodedImage, FrameResult, InferRequest, InferResponse, RawImage
from ..dataplane.dataplane import DataPlane, RequestScope
from . import sources
from .objects import PART_BYTES, InputPrefixes, JobFiles, ObjectBucket, RunFiles, SpoolFiles, StoredPayload, StoreFiles
from .results import ResultWriter, Tally
from .store import (
    CANCELLED,
    ENDED,
    FAILED,
    QUEUED,
    RUNNING,
    STATES,
    SUCCEEDED,
    UPLOADING,
    JobRecord,
    JobStore,
    now_ms,
)
from .webhooks import Webhooks

log = logging.getLogger(__name__)
T = TypeVar("T")

GIB = 1024 ** 3
RESULT_CHUNK = 1 << 20  # bytes per GetResult message
_JOB_ID = re.compile(r"[0-9a-f]{32}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class JobSettings:
    """The job service's bounds and timings (docs/JOBS.md; flags ``--job-*``)."""

    spool: Path
    max_payload_bytes: int = GIB
    quota_bytes: int = 16 * GIB  # payloads and results in the spool, all jobs together
    result_ttl_s: float = 24 * 3600
    upload_timeout_s: float = 3600  # an unfinished upload with no byte for this long is removed
    default_time_limit_s: int = 3600
    max_time_limit_s: int = 6 * 3600
    workers: int = 1  # jobs running at once
    items_in_flight: int = 8  # items of one job queued or running at once
    checkpoint_s: float = 0.5
    sweep_s: float = 5.0
    lease_s: float = 10.0  # a running job's lease (renewed every third of it); shared stores only matter
    input_roots: tuple[Path, ...] = ()  # where input_location paths and "images" lists may point
    input_prefixes: tuple[str, ...] = ()  # s3://bucket/prefix URLs input_location may name objects under
    webhooks: Webhooks | None = None  # where jobs may send their outcome, and the secret that signs it
    objects_url: str = ""  # payloads and results in this object store (file:///dir, s3://bucket/prefix), not the spool
    s3_endpoint: str = ""  # an S3-compatible server's endpoint URL (default: AWS's, or AWS_ENDPOINT_URL)
    object_part_bytes: int = PART_BYTES  # an uploaded payload goes to the object store in parts of this size

    def __post_init__(self) -> None:
        for name in ("max_payload_bytes", "quota_bytes", "workers", "items_in_flight", "default_time_limit_s",
                     "max_time_limit_s", "object_part_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"job settings: {name} must be positive, got {getattr(self, name)}")
        if self.object_part_bytes < 64 * 1024:  # a 1 GiB payload in at most 16384 parts
            raise ValueError(f"job settings: object_part_bytes must be at least 65536, got {self.object_part_bytes}")


@dataclass
class JobSpec:
    """What a client asks for when it submits (jobs.proto's JobSpec, as plain data)."""

    model_name: str = ""
    model_version: str = ""
    kind: str = ""
    total_bytes: int = 0
    sha256: str = ""
    input_location: str = ""
    job_id: str = ""
    resume_offset: int = 0
    parameters: dict[str, str] = field(default_factory=dict)
    time_limit_s: int = 0
    client_tag: str = ""
    notify_url: str = ""


class LocalCall:
    """The data plane's view of requests the server makes of itself (a job's items, ``peregrine batch``, a
    Spark worker): no client connection; ``who`` names them in the data plane's bounds; ``deadline`` on the
    time.monotonic() clock (a job's time limit), or None."""

    def __init__(self, who: str, deadline: float | None = None) -> None:
        self.connection = self.identity = who
        self.deadline = deadline
        self.started_ns = time.monotonic_ns()

    def header(self, name: str) -> str | None:
        return None


class JobService:
    """See the module docstring."""

    def __init__(self, plane: DataPlane, store: JobStore, settings: JobSettings) -> None:
        self.plane = plane
        self.store = store
        self.settings = settings
        self.files: JobFiles = SpoolFiles(store.spool)
        try:
            if settings.objects_url:
                self.files = StoreFiles(ObjectBucket(settings.objects_url, settings.s3_endpoint), store.spool,
                                        settings.object_part_bytes)
            self.inputs = InputPrefixes(settings.input_prefixes, settings.s3_endpoint)
        except BaseException:
            store.close()
            raise
        self._io_pool = ThreadPoolExecutor(1, thread_name_prefix="peregrine-jobs")
        self._transfer_pool = self._io_pool  # what moves payload and result bytes (object stores: its own threads)
        if settings.objects_url or settings.input_prefixes:  # a slow store must not hold up the records
            self._transfer_pool = ThreadPoolExecutor(4, thread_name_prefix="peregrine-job-objects")
        self._webhook_pool = ThreadPoolExecutor(2, thread_name_prefix="peregrine-webhooks")
        self._wake = asyncio.Event()
        self._changed = asyncio.Condition()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._uploading: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self.owner = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"  # this worker, in leases

    # -- start and stop ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Recover what a previous process left (running jobs queue again, to resume from their checkpoint)
        and start the workers and the sweeper."""
        await self._transfer(self.files.check)  # a wrong object-store URL or credentials: say so now
        for record in await self._io(self.store.with_state, UPLOADING):  # what reached the disk (store) counts
            size = await self._transfer(self.files.received, record.job_id)
            await self._io(self.store.transition, record.job_id, {UPLOADING}, received_bytes=size)
        if not self.store.shared:  # this process was the only worker: what ran was its own, and is resumed
            for record in await self._io(self.store.with_state, RUNNING):  # (a shared store's leases run out)
                await self._io(self.store.transition, record.job_id, {RUNNING}, state=QUEUED)
        for record in [r for state in ENDED for r in await self._io(self.store.list, state, "", 1_000_000)]:
            if record.notify_url and not record.notified:  # ended before its webhook went out
                self._send_webhook(record)
        self._tasks = [asyncio.ensure_future(self._worker()) for _ in range(self.settings.workers)]
        self._tasks.append(asyncio.ensure_future(self._sweeper()))
        self._wake.set()

    async def stop(self) -> None:
        """Stop running jobs where they are (their records stay RUNNING: the next start resumes them)."""
        for task in [*self._tasks, *self._running.values()]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._running.values(), return_exceptions=True)
        self._io_pool.shutdown(wait=True)
        self._transfer_pool.shutdown(wait=True)
        self._webhook_pool.shutdown(wait=False, cancel_futures=True)  # undelivered ones go at the next start
        self.store.close()

    def _io(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Awaitable[T]:
        return asyncio.get_running_loop().run_in_executor(self._io_pool, lambda: fn(*args, **kwargs))

    def _transfer(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Awaitable[T]:
        """``fn`` where payload and result bytes move: the I/O thread for the spool, threads of their own for
        an object store."""
        return asyncio.get_running_loop().run_in_executor(self._transfer_pool, lambda: fn(*args, **kwargs))

    async def _io_open(self, fn: Callable[..., T], *args: Any, pool: ThreadPoolExecutor | None = None) -> T:
        """``fn(*args)`` in the I/O thread (or ``pool``), for what opens files (its result has ``close``): if
        the caller is cancelled meanwhile, what it opened is closed once it is open."""
        future = asyncio.get_running_loop().run_in_executor(pool or self._io_pool, fn, *args)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(lambda f: None if f.exception() else f.result().close())  # type: ignore[attr-defined]
            raise

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def directory(self, job_id: str) -> Path:
        """The job's directory in the spool (with an object store: its working files on this server)."""
        return self.files.workdir(job_id)

    # -- submit -----------------------------------------------------------------------------------
    async def submit(self, chunks: AsyncIterator[tuple[JobSpec | None, bytes]],
                     created: Callable[[str], Awaitable[None]] | None = None) -> JobRecord:
        """Take an upload (the first chunk carries the spec) and queue its job; see jobs.proto's Submit.
        ``created`` is told the job's id as soon as it has one (before the payload arrives), so that a
        client whose upload breaks off knows which job to resume."""
        iterator = chunks.__aiter__()
        try:
            spec, data = await iterator.__anext__()
        except StopAsyncIteration:
            raise InvalidArgument("spec: expected a JobSpec in the first message, got no message") from None
        if spec is None:
            raise InvalidArgument("spec: expected a JobSpec in the first message, got data only")
        if spec.input_location:
            if data:
                raise InvalidArgument("input_location: the payload is read from there; send no data with it")
            return await self._submit_location(spec)
        record, offset = await self._begin_upload(spec)
        if created is not None:
            await created(record.job_id)
        self._uploading.add(record.job_id)
        try:
            record = await self._receive(record, offset, data, iterator)
        finally:
            self._uploading.discard(record.job_id)
        await self._notify()
        self._wake.set()
        return record

    def _check_spec(self, spec: JobSpec) -> None:
        s = self.settings
        if not spec.model_name:
            raise InvalidArgument("spec.model_name: expected the model to run, got an empty string")
        names = {row[0] for row in self.plane.repository_index()}
        if spec.model_name not in names:
            raise NotFound(f"spec.model_name: no model '{clipped(spec.model_name)}' in the repository")
        if spec.kind and spec.kind not in sources.KINDS:
            raise InvalidArgument(f"spec.kind: expected one of {', '.join(sources.KINDS)} or empty, got "
                                  f"'{clipped(spec.kind)}'")
        if spec.time_limit_s and not 1 <= spec.time_limit_s <= s.max_time_limit_s:
            raise InvalidArgument(f"spec.time_limit_s: expected 1..{s.max_time_limit_s} (0: {s.default_time_limit_s}),"
                                  f" got {spec.time_limit_s}")
        if spec.sha256 and not _SHA256.fullmatch(spec.sha256.lower()):
            raise InvalidArgument(f"spec.sha256: expected 64 hexadecimal digits, got '{clipped(spec.sha256)}'")
        if len(spec.parameters) > 32 or any(len(k) > 64 or len(v) > 4096 for k, v in spec.parameters.items()):
            raise InvalidArgument("spec.parameters: at most 32, names up to 64 characters, values up to 4096")
        if len(spec.client_tag) > 256:
            raise InvalidArgument(f"spec.client_tag: at most 256 characters, got {len(spec.client_tag)}")
        if spec.notify_url:
            hooks = self.settings.webhooks
            if hooks is None:
                raise InvalidArgument("spec.notify_url: this server sends no webhooks (start it with "
                                      "--job-webhook-secret-file and --job-webhook-allow)")
            if len(spec.notify_url) > 2048 or not hooks.allows(spec.notify_url):
                raise InvalidArgument(f"spec.notify_url: '{clipped(spec.notify_url)}' is not under an allowed "
                                      f"webhook prefix ({', '.join(hooks.allowed_prefixes)})")

    async def _begin_upload(self, spec: JobSpec) -> tuple[JobRecord, int]:
        """The job the upload is for (new, or one to resume) and the offset its bytes start from."""
        s = self.settings
        if spec.job_id:  # a resumed upload
            record = await self.get(spec.job_id)
            if record.state != UPLOADING:
                raise FailedPrecondition(f"job {record.job_id}: its upload is over ({record.state}); nothing to resume")
            if record.job_id in self._uploading:
                raise FailedPrecondition(f"job {record.job_id}: another stream is uploading it now")
            received = await self._transfer(self.files.received, record.job_id)
            if spec.resume_offset > received:
                raise InvalidArgument(f"spec.resume_offset: job {record.job_id} has {received} bytes; resume from "
                                      f"there or before, got {spec.resume_offset}")
            if (spec.total_bytes and spec.total_bytes != record.total_bytes) or \
                    (spec.sha256 and spec.sha256.lower() != record.sha256):
                raise InvalidArgument(f"spec: a resumed upload must declare what job {record.job_id} declared "
                                      f"({record.total_bytes} bytes, sha256 {record.sha256})")
            return record, spec.resume_offset
        self._check_spec(spec)
        if spec.resume_offset:
            raise InvalidArgument("spec.resume_offset: only with the job_id of an upload to resume")
        if not spec.total_bytes:
            raise InvalidArgument("spec.total_bytes: expected the payload's size in bytes, got 0")
        if spec.total_bytes > s.max_payload_bytes:
            raise InvalidArgument(f"spec.total_bytes: at most {s.max_payload_bytes} bytes, got {spec.total_bytes}")
        if not spec.sha256:
            raise InvalidArgument("spec.sha256: expected the payload's SHA-256 (hex), got an empty string")
        used = await self._io(self._spool_usage)
        if used + spec.total_bytes > s.quota_bytes:
            raise ResourceExhausted(f"job spool: {spec.total_bytes} more bytes do not fit the quota ({used} of "
                                    f"{s.quota_bytes} used); fetch and delete finished jobs, or retry later")
        record = self._new_record(spec, UPLOADING)
        # The record first: the sweeper removes a job directory (or objects) that no record owns.
        await self._io(self.store.create, record)
        return record, 0

    def _new_record(self, spec: JobSpec, state: str) -> JobRecord:
        return JobRecord(job_id=uuid.uuid4().hex, model_name=spec.model_name, model_version=spec.model_version,
                         kind=spec.kind, state=state, total_bytes=spec.total_bytes, sha256=spec.sha256.lower(),
                         input_location=spec.input_location, parameters=dict(spec.parameters),
                         time_limit_s=spec.time_limit_s or self.settings.default_time_limit_s,
                         client_tag=spec.client_tag, notify_url=spec.notify_url)

    async def _receive(self, record: JobRecord, offset: int, first: bytes,
                       iterator: AsyncIterator[tuple[JobSpec | None, bytes]]) -> JobRecord:
        job_id, total = record.job_id, record.total_bytes
        # Taken back to the offset: what the client sends again replaces the rest.
        upload = await self._transfer(self.files.open_upload, job_id, offset)
        position = committed = offset  # bytes taken from the stream; bytes the record says were received
        last_commit = time.monotonic()
        try:
            data = first
            while True:
                if data:
                    if position + len(data) > total:
                        await self._transfer(upload.abort)
                        await self._io(self._remove, job_id)
                        raise InvalidArgument(f"data: the payload is longer than spec.total_bytes ({total}); "
                                              "the job is removed")
                    await self._transfer(upload.write, data)
                    position += len(data)
                    if upload.received != committed and time.monotonic() - last_commit > 1.0:
                        last_commit, committed = time.monotonic(), upload.received  # what a resuming client reads
                        await self._io(self.store.update, job_id, received_bytes=committed)
                try:
                    spec, data = await iterator.__anext__()
                except StopAsyncIteration:
                    break
                if spec is not None:
                    raise InvalidArgument("spec: only the first message carries a JobSpec")
        finally:
            await self._transfer(upload.close)  # what arrived is kept (an object store: its last part goes there)
            await self._io(self.store.transition, job_id, {UPLOADING}, received_bytes=upload.received)
        received_bytes = upload.received
        if received_bytes < total:
            raise FailedPrecondition(f"job {job_id}: the upload ended at {received_bytes} of {total} bytes; resume it "
                                     f"with spec.job_id = '{job_id}' and spec.resume_offset = {received_bytes}")
        digest = await self._transfer(upload.sha256)
        if digest != record.sha256:
            await self._io(self._remove, job_id)
            raise InvalidArgument(f"spec.sha256: the payload's SHA-256 is {digest}, the spec declared "
                                  f"{record.sha256}; the job is removed and nothing was run")
        await self._transfer(self.files.payload_done, job_id)
        queued = await self._io(self.store.transition, job_id, {UPLOADING}, state=QUEUED)
        if queued is None:  # cancelled while it uploaded
            raise Cancelled(f"job {job_id}: cancelled during its upload")
        return queued

    async def _submit_location(self, spec: JobSpec) -> JobRecord:
        self._check_spec(spec)
        payload = await self._location(spec.input_location, "spec.input_location")
        size = await self._transfer(lambda: payload.size)
        if size > self.settings.max_payload_bytes:
            raise InvalidArgument(f"spec.input_location: {size} bytes, at most {self.settings.max_payload_bytes}")
        if spec.sha256:
            digest = await self._transfer(_sha256_of, payload)
            if digest != spec.sha256.lower():
                raise InvalidArgument(f"spec.sha256: {clipped(spec.input_location)} has SHA-256 {digest}, the spec "
                                      f"declared {spec.sha256.lower()}")
        spec.total_bytes = size
        spec.input_location = payload.name
        record = self._new_record(spec, QUEUED)
        record.received_bytes = size
        await self._io(self.store.create, record)  # before its directory (see _begin_upload)
        await self._io(self.directory(record.job_id).mkdir, parents=True, exist_ok=True)
        await self._notify()
        self._wake.set()
        return record

    async def _location(self, location: str, what: str, cache: Path | None = None
                        ) -> sources.LocalPayload | StoredPayload:
        """An input location, checked against the allowed roots and prefixes: a local file, or an object
        (``s3://``) read through the object store (``cache``: where to download it for the kinds that need a
        file)."""
        if not location.startswith("s3://"):
            return sources.LocalPayload(self._allowed(location, what))
        bucket, key = self.inputs.resolve(location, what)
        size = await self._transfer(bucket.size, key)
        if size is None:
            raise NotFound(f"{what}: no object '{clipped(location)}'")
        return StoredPayload(bucket, [(key, size)], cache or Path("payload.cache"), location)

    def _allowed(self, location: str, what: str) -> Path:
        if location.startswith("file://"):
            location = location[len("file://"):]
        if "://" in location:
            raise InvalidArgument(f"{what}: only local paths, file:// and s3:// URLs are read here, got "
                                  f"'{clipped(location)}'")
        roots = tuple(r.resolve() for r in self.settings.input_roots)
        if not roots:
            raise InvalidArgument(f"{what}: this server reads no input locations (start it with --job-input-root)")
        path = Path(location).resolve()
        if not any(path.is_relative_to(root) for root in roots):
            raise InvalidArgument(f"{what}: '{clipped(location)}' is not under an allowed input root")
        if not path.is_file():
            raise NotFound(f"{what}: no file '{clipped(location)}'")
        return path

    def _spool_usage(self) -> int:
        return self.store.spool_bytes()

    # -- queries ----------------------------------------------------------------------------------
    async def get(self, job_id: str) -> JobRecord:
        if not _JOB_ID.fullmatch(job_id):
            raise InvalidArgument(f"job_id: expected 32 hexadecimal digits, got '{clipped(job_id)}'")
        record = await self._io(self.store.get, job_id)
        if record is None:
            raise NotFound(f"job_id: no job '{job_id}' (never submitted, deleted, or its result expired)")
        return record

    async def watch(self, job_id: str) -> AsyncIterator[JobRecord]:
        """The job now, then each change, until it ends."""
        record = await self.get(job_id)
        seen = None
        while True:
            key = (record.state, record.items_done, record.items_failed, record.received_bytes, record.items_total)
            if key != seen:
                seen = key
                yield record
            if record.ended:
                return
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 1.0)
            record = await self.get(job_id)

    async def list(self, state: str, model_name: str, page_size: int, page_token: str
                   ) -> tuple[list[JobRecord], str]:
        if state and state not in STATES:
            raise InvalidArgument(f"state: expected one of {', '.join(STATES)}, got '{clipped(state)}'")
        if not 0 <= page_size <= 1000:
            raise InvalidArgument(f"page_size: expected 0..1000 (0: 100), got {page_size}")
        size = page_size or 100
        before = _decode_token(page_token) if page_token else None
        records = await self._io(self.store.list, state, model_name, size + 1, before)
        more = len(records) > size
        records = records[:size]
        token = _encode_token(records[-1]) if more and records else ""
        return records, token

    @staticmethod
    def eta_s(record: JobRecord) -> float:
        """Seconds left for a running job, at the rate its items have gone since it first started."""
        if record.state != RUNNING or not record.items_done or not record.started_ms:
            return 0.0
        rate = record.items_done / max(now_ms() - record.started_ms, 1)  # items per millisecond
        return (record.items_total - record.items_done) / rate / 1000

    # -- results ----------------------------------------------------------------------------------
    async def result(self, job_id: str, offset: int) -> AsyncIterator[tuple[int, bytes, str]]:
        """(offset, bytes, summary JSON) chunks of the result from ``offset``; the summary on the last."""
        record = await self.get(job_id)
        if record.state != SUCCEEDED:
            raise FailedPrecondition(f"job {job_id}: is {record.state}; its result is ready once it has SUCCEEDED"
                                     + (f" (it failed: {record.error})" if record.state == FAILED else ""))
        size = record.result_bytes
        if not 0 <= offset <= size:
            raise OutOfRange(f"offset: expected 0..{size} (the result's length), got {offset}")
        summary = json.dumps(record.summary, separators=(",", ":"))
        while True:  # each chunk read on its own (no file held open while a slow client reads)
            wanted = min(RESULT_CHUNK, size - offset)
            data = await self._transfer(self.files.read_result, record, offset, wanted) if wanted else b""
            last = offset + len(data) >= size or not data
            yield offset, data, summary if last else ""
            offset += len(data)
            if last:
                return

    # -- cancel and delete ------------------------------------------------------------------------
    async def cancel(self, job_id: str) -> JobRecord:
        record = await self.get(job_id)
        if record.ended:
            raise FailedPrecondition(f"job {job_id}: already ended ({record.state}); nothing to cancel")
        stamp = now_ms()
        cancelled = await self._io(self.store.transition, job_id, {UPLOADING, QUEUED, RUNNING}, state=CANCELLED,
                                   ended_ms=stamp, expires_ms=stamp + int(self.settings.result_ttl_s * 1000),
                                   error="cancelled by the client")
        if cancelled is None:  # it ended meanwhile
            raise FailedPrecondition(f"job {job_id}: already ended; nothing to cancel")
        task = self._running.get(job_id)
        if task is not None:  # stopped before its files go, so that it writes nothing after
            task.cancel()
            await asyncio.wait({task}, timeout=30)
        await self._transfer(self.files.ended, cancelled)
        self._send_webhook(cancelled)
        await self._notify()
        return cancelled

    async def delete(self, job_id: str) -> None:
        record = await self.get(job_id)
        if record.state in (QUEUED, RUNNING):
            raise FailedPrecondition(f"job {job_id}: is {record.state}; cancel it before deleting it")
        if job_id in self._uploading:
            raise FailedPrecondition(f"job {job_id}: a stream is uploading it now; cancel it first")
        await self._io(self._remove, job_id)
        await self._notify()

    def _remove(self, job_id: str) -> None:
        """The job's record and files (objects), gone (record first: a crash between leaves only files to
        sweep)."""
        self.store.delete(job_id)
        self.files.remove(job_id)

    # -- the sweeper ------------------------------------------------------------------------------
    async def _sweeper(self) -> None:
        while True:
            try:
                await self._io(self.sweep)
            except Exception:
                log.exception("job sweeper")
            await asyncio.sleep(self.settings.sweep_s)

    def sweep(self, now: int | None = None) -> list[str]:
        """Remove expired jobs, abandoned uploads and files no record owns; the ids removed."""
        now = now_ms() if now is None else now
        removed = []
        for state in ENDED:
            for record in self.store.list(state=state, limit=1_000_000):
                if record.expires_ms and record.expires_ms <= now:
                    self._remove(record.job_id)
                    removed.append(record.job_id)
        stale = now - int(self.settings.upload_timeout_s * 1000)
        for record in self.store.with_state(UPLOADING):
            if record.updated_ms <= stale and record.job_id not in self._uploading:
                self._remove(record.job_id)
                removed.append(record.job_id)
        self.files.sweep(self.store.get)
        if removed:
            log.info("jobs removed (expired or abandoned): %s", ", ".join(removed))
        return removed

    # -- running ----------------------------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            record = await self._io(self.store.claim, self.owner, self.settings.lease_s)
            if record is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):  # a shared queue also fills from other servers
                    await asyncio.wait_for(self._wake.wait(), 0.5 if self.store.shared else 2.0)
                continue
            log.info("job %s: claimed by %s", record.job_id, self.owner)
            if record.started_ms != record.updated_ms:  # it ran before (this claim stamped both, for a new job)
                log.info("job %s: resumes from item %d of %d", record.job_id, record.items_done, record.items_total)
            task = asyncio.ensure_future(self._run(record))
            self._running[record.job_id] = task
            lease = asyncio.ensure_future(self._hold_lease(record.job_id, task))
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.done():  # the service stops: the job stays RUNNING, resumed at the next start
                    task.cancel()
                    raise
            finally:
                lease.cancel()
                self._running.pop(record.job_id, None)
            await self._notify()

    async def _hold_lease(self, job_id: str, task: asyncio.Task[None]) -> None:
        """Renew the running job's lease; stop the job if the lease is lost (cancelled, or taken over)."""
        while not task.done():
            await asyncio.sleep(self.settings.lease_s / 3)
            if not await self._io(self.store.heartbeat, job_id, self.owner, self.settings.lease_s):
                task.cancel()
                return

    async def _run(self, record: JobRecord) -> None:
        job_id = record.job_id
        started = time.monotonic()
        limit_left = record.time_limit_s - record.run_ms / 1000
        try:
            await asyncio.wait_for(self._execute(record, started), max(limit_left, 0.001))
        except TimeoutError:
            await self._end(job_id, FAILED, f"time limit: the job ran {record.time_limit_s} s without finishing "
                                            f"({record.items_done} of {record.items_total} items at its last "
                                            "checkpoint)", started)
        except asyncio.CancelledError:
            raise
        except PeregrineError as e:
            await self._end(job_id, FAILED, e.message, started)
        except Exception as e:
            log.exception("job %s failed", job_id)
            await self._end(job_id, FAILED, f"internal error: {type(e).__name__}; see the server log", started)

    async def _end(self, job_id: str, state: str, error: str, started: float, **changes: Any) -> None:
        stamp = now_ms()
        record = await self._io(self.store.get, job_id)
        run_ms = (record.run_ms if record else 0) + int((time.monotonic() - started) * 1000)
        ended = await self._io(self.store.transition, job_id, {RUNNING}, self.owner, state=state, error=error,
                               ended_ms=stamp, expires_ms=stamp + int(self.settings.result_ttl_s * 1000),
                               run_ms=run_ms, lease_owner="", **changes)
        if ended is not None:
            await self._transfer(self.files.ended, ended)
            log.info("job %s: %s%s", job_id, state, f" ({error})" if error else "")
            self._send_webhook(ended)
        await self._notify()

    def _send_webhook(self, record: JobRecord) -> None:
        """POST an ended job's outcome to its notify_url, in the background; recorded once delivered (or
        given up), so that one cut off by a restart goes out at the next start."""
        hooks = self.settings.webhooks
        if not record.notify_url or hooks is None:
            return
        outcome = {"job_id": record.job_id, "state": record.state, "error": record.error,
                   "model_name": record.model_name, "items_total": record.items_total,
                   "items_done": record.items_done, "items_failed": record.items_failed,
                   "result_bytes": record.result_bytes, "result_format": record.result_format,
                   "summary": record.summary, "ended_unix_ms": record.ended_ms, "client_tag": record.client_tag}

        async def send() -> None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._webhook_pool, hooks.deliver, record.notify_url, record.job_id, outcome)
            await self._io(self.store.transition, record.job_id, ENDED, notified=1)

        task = asyncio.ensure_future(send())
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    async def _execute(self, record: JobRecord, started: float) -> None:
        job_id = record.job_id
        # This run is listed before it writes anything: the checkpoints it keeps are told from a dead run's.
        run = RunFiles(uuid.uuid4().hex[:12])
        record = await self._running_update(record, checkpoint_runs=[*record.checkpoint_runs,
                                                                     [run.token, record.items_done]])
        if not await self._transfer(self.files.prepare_run, record, run):
            log.warning("job %s: its checkpoint could not be restored; it starts over", job_id)
            record = await self._running_update(record, items_done=0, items_failed=0, result_bytes=0, summary={},
                                                checkpoint_runs=[[run.token, 0]])
            await self._transfer(self.files.prepare_run, record, run)
        if record.input_location:
            payload: Path | sources.Payload = await self._location(record.input_location, "input_location",
                                                                   self.directory(job_id) / "payload.cache")
        else:
            payload = await self._transfer(self.files.payload, record)
        remote = isinstance(payload, StoredPayload)
        reads = self._transfer_pool if remote else self._io_pool  # a payload in a store is read by its threads
        source = await self._io_open(sources.open_source, payload, record.kind, record.parameters,
                                     self.settings.input_roots, pool=reads)
        tensors = source.kind == "tensor"
        try:
            if not tensors:  # boxes come only from a detection pipeline: say so before running anything
                model = await self.plane.lifecycle.acquire(record.model_name, record.model_version, None)
                try:
                    self.plane.require_detection(model)
                finally:
                    self.plane.lifecycle.release(model.name)
            record = await self._running_update(record, kind=source.kind, items_total=source.total)
            writer = await self._io_open(ResultWriter, self.directory(job_id), source.total, record.result_bytes,
                                         tensors)
            try:
                record = await self._items(record, run, source, writer, reads)
                fmt, size = await self._io(writer.finish)
            finally:
                writer.close()  # here, not in a thread: a second cancellation must not leave it open
        finally:
            source.close()
        current = await self._io(self.store.get, job_id)
        summary = dict(current.summary if current else {})
        if summary.get("items") and summary.get("failed") == summary["items"]:
            raise InvalidArgument(f"every item failed; the first: {summary.get('first_error', '')}")
        result_key = await self._transfer(self.files.store_result, record, run, fmt)
        summary["seconds"] = round(((current.run_ms if current else 0) + (time.monotonic() - started) * 1000) / 1000,
                                   3)
        summary["items_per_s"] = round(summary.get("items", 0) / summary["seconds"], 2) if summary["seconds"] else 0
        await self._end(job_id, SUCCEEDED, "", started, result_format=fmt, result_bytes=size, summary=summary,
                        result_key=result_key)

    async def _running_update(self, record: JobRecord, **changes: Any) -> JobRecord:
        """Change this worker's running job; cancelled when it is no longer its (cancelled, deleted, or its
        lease taken over)."""
        updated = await self._io(self.store.transition, record.job_id, {RUNNING}, self.owner, **changes)
        if updated is None:
            raise asyncio.CancelledError
        return updated

    async def _items(self, record: JobRecord, run: RunFiles, source: sources.Source, writer: ResultWriter,
                     reads: ThreadPoolExecutor) -> JobRecord:
        """Run the items past the record's checkpoint, checkpointing as they end; the record at the last."""
        job_id = record.job_id
        tally = Tally(writer, record.summary)
        call = LocalCall(f"job:{job_id}", time.monotonic() + record.time_limit_s - record.run_ms / 1000)
        iterator = source.items(record.items_done)
        last_checkpoint = time.monotonic()
        every = max(self.settings.checkpoint_s, self.files.checkpoint_s)
        loop = asyncio.get_running_loop()
        outcomes = run_in_order(self.plane, call, record.model_name, record.model_version,
                                lambda: loop.run_in_executor(reads, next, iterator, None),
                                self.settings.items_in_flight, background=True, request_prefix=f"{job_id}/")
        async with contextlib.aclosing(outcomes):
            async for item, result, error, last in outcomes:
                await self._io(tally.add, item, result, error)
                if time.monotonic() - last_checkpoint >= every or last:
                    last_checkpoint = time.monotonic()
                    committed = await self._io(writer.checkpoint)
                    summary = tally.summary
                    # An object store keeps what the result gained before the record says it has it.
                    await self._transfer(self.files.checkpoint, record, run, summary["items"], committed)
                    record = await self._running_update(record, items_done=summary["items"],
                                                        items_failed=summary["failed"], result_bytes=committed,
                                                        summary=summary)
                    await self._notify()
        return record


async def run_in_order(plane: DataPlane, call: Any, model_name: str, model_version: str,
                       next_item: Callable[[], Awaitable[sources.Item | None]], in_flight: int, *,
                       background: bool, request_prefix: str = ""
                       ) -> AsyncIterator[tuple[sources.Item, FrameResult | InferResponse | None, str, bool]]:
    """Run items through the data plane with up to ``in_flight`` of them queued at once (while the next
    ones are read: ``next_item`` gives None when there are no more), and yield each as it ends, in item
    order: (item, result, the model's refusal of it or "", whether it is the last). What is still queued
    when the caller stops is cancelled."""
    pending: collections.deque[tuple[sources.Item, asyncio.Task[Any]]] = collections.deque()
    exhausted = False

    async def fill() -> None:
        nonlocal exhausted
        while not exhausted and len(pending) < in_flight:
            queued = await next_item()
            if queued is None:
                exhausted = True
                return
            pending.append((queued, asyncio.ensure_future(run_item(plane, call, model_name, model_version, queued,
                                                                   f"{request_prefix}{queued.index}", background))))

    try:
        while pending or not exhausted:
            await fill()
            if not pending:
                return
            item, task = pending.popleft()
            try:
                result, error = await task, ""
            except InvalidArgument as e:  # this item is bad; the others go on
                result, error = None, e.message
            await fill()  # before saying whether it is the last (with nothing queued behind it, not known yet)
            yield item, result, error, exhausted and not pending
    finally:
        for _, task in pending:
            task.cancel()


async def run_item(plane: DataPlane, call: Any, model_name: str, model_version: str, item: sources.Item,
                   request_id: str, background: bool) -> FrameResult | InferResponse | None:
    """Run one item through the data plane as a request of ``call``: its boxes (a FrameResult) or its
    outputs (an InferResponse); None for an item that could not be read. Raises InvalidArgument for an
    item the model refuses; a passed deadline (the job's time limit) raises TimeoutError."""
    if item.error:
        return None
    scope = RequestScope(plane, call, model_name)
    scope.kind = "Job"
    error: BaseException | None = None
    try:
        if item.tensors:
            inputs = _inputs(plane, model_name, model_version, item)
            return await scope.infer(InferRequest(model_name, model_version, request_id, inputs=inputs,
                                                  deadline=call.deadline, background=background))
        image: EncodedImage | RawImage
        if item.pixels is not None:
            rgb = np.ascontiguousarray(item.pixels[..., ::-1])
            image = RawImage(rgb.tobytes(), rgb.shape[0], rgb.shape[1], 3, f"item {item.index}")
        else:
            image = EncodedImage(item.encoded or b"", f"item {item.index} ({item.name})")
        return await scope.detect(DetectRequest(model_name, model_version, request_id, images=[image],
                                                deadline=call.deadline, background=background))
    except DeadlineExceeded:
        raise TimeoutError from None  # the job's time limit
    except BaseException as e:
        error = e
        raise
    finally:
        scope.close(error)


def _inputs(plane: DataPlane, model_name: str, model_version: str, item: sources.Item) -> dict[str, np.ndarray]:
    """A tensor item's arrays by input name (an unnamed .npy goes to the model's only input)."""
    if "" not in item.tensors:
        return item.tensors
    names = [t.name for t in plane.model(model_name, model_version).inputs]
    if len(names) != 1:
        raise InvalidArgument(f"parameters.input: model '{model_name}' has inputs {names}; name the one the .npy "
                              "is for (or send an .npz keyed by input name)")
    return {names[0]: item.tensors[""]}


def _sha256_of(payload: sources.Payload) -> str:
    digest = hashlib.sha256()
    with payload.open() as f:
        while chunk := f.read(4 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _encode_token(record: JobRecord) -> str:
    return base64.urlsafe_b64encode(f"{record.created_ms}:{record.job_id}".encode()).decode()


def _decode_token(token: str) -> tuple[int, str]:
    try:
        created, job_id = base64.urlsafe_b64decode(token.encode()).decode().split(":")
        if not _JOB_ID.fullmatch(job_id):
            raise ValueError(job_id)
        return int(created), job_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument(f"page_token: not a token this server gave, got '{clipped(token)}'") from None
