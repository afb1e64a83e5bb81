"""Where jobs' payloads and results live: the spool directory (one server, or a volume several mount), or an
object store (``--job-objects file:///dir`` or ``s3://bucket/prefix``) that several servers share.

:class:`JobFiles` is what the job service needs of that place; :class:`SpoolFiles` keeps everything in the
spool, :class:`StoreFiles` keeps payloads and results in an object store (through obstore, the ``[objectstore]``
extra) and the spool only for a server's working files. The store's layout, under its URL's prefix::

    jobs/<job id>/payload/<part, 6 digits>         the upload, in parts read back in order (each a whole object)
    jobs/<job id>/checkpoint/<file>/<i>-<j>.<run>   a running job's result for items i..j-1, one per checkpoint
    jobs/<job id>/result.<run>.jsonl | .npz        the result of a job that SUCCEEDED

**Uploads.** An object cannot be appended to (an S3 multipart upload is finished once, and its parts are not
readable before), so a payload is a sequence of objects: the bytes received go to a working file in the spool
and, each time it holds ``part_bytes``, become the next part; when the stream ends, cut or whole, the rest
becomes the last part. Only what is in the store counts as received: a resumed upload continues from the
store's parts (the part holding ``resume_offset`` is taken back into the working file and written again), and
after ``kill -9`` what had not reached the store is sent again. The SHA-256 is computed over the bytes as they
go to the store (on a resume, over the parts already there first) and checked before the job is queued.

**Running.** The payload is read by ranged reads (:class:`StoredFile`), so tar, zip, ``.npz`` and ``.npy``
payloads are never copied whole; recordings and videos (their readers need a file) are first downloaded into
the job's working directory, ``payload.cache``, at most the payload limit, removed when the job ends. The
result is written in the working directory as in the spool; at each checkpoint the bytes it gained go to the
store as one object per file, named by the items they hold and by the run (a claim of the job) that wrote
them. The record lists the runs and the item each started from, so a server that claims the job rebuilds the
working files from exactly the checkpoints that were committed (an object a server wrote after it lost its
lease is ignored), and carries on. A finished result is uploaded whole (a streamed multipart upload) and the
record names it; then the job's other objects go.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import io
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlsplit

import numpy as np

from ..core.errors import InvalidArgument, NotFound, Unavailable, clipped
from .results import result_path
from .sources import Payload
from .store import SUCCEEDED, JobRecord

log = logging.getLogger(__name__)

PART_BYTES = 8 << 20  # default size of a payload's parts (--job-object-part-mb)
READ_BUFFER = 1 << 20  # bytes per ranged read of a payload
TRANSFER_CHUNK = 8 << 20  # a multipart upload's part; 2 in flight at once: what an upload holds in memory
_JOB_ID = re.compile(r"[0-9a-f]{32}")
_SEGMENT = re.compile(r"(\d{12})-(\d{12})\.([0-9a-f]+)")
_STAGING = re.compile(r".+#\d+")  # a file:// store's object being written: <key>#<n>, renamed to <key> when whole


# -- the store at a URL -----------------------------------------------------------------------------

def split_url(url: str, what: str) -> tuple[str, str, str]:
    """(scheme, bucket or directory, key prefix) of an object-store URL: ``file:///dir`` or
    ``s3://bucket/prefix``; ValueError naming ``what`` otherwise."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(f"{what}: expected file:///absolute/directory, got '{clipped(url)}'")
        return "file", parts.path, ""
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"{what}: expected s3://bucket/prefix (a bucket name), got '{clipped(url)}'")
        prefix = parts.path.strip("/")
        if prefix and any(segment in ("", ".", "..") for segment in prefix.split("/")):
            raise ValueError(f"{what}: expected a key prefix without empty, '.' or '..' segments, got "
                             f"'{clipped(url)}'")
        return "s3", parts.netloc, prefix
    raise ValueError(f"{what}: expected a file:///directory or s3://bucket/prefix URL, got '{clipped(url)}'")


class ObjectBucket:
    """An object store location (a directory, or an S3 bucket and key prefix) through obstore; keys are
    relative to it. ``endpoint``: an S3-compatible server's URL (MinIO, SeaweedFS, ...); credentials, region
    and a default endpoint come from the standard AWS environment variables (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``, ...). Errors of the
    store become :class:`Unavailable` (its client already retried them), a missing object FileNotFoundError."""

    def __init__(self, url: str, endpoint: str = "", what: str = "--job-objects") -> None:
        try:
            import obstore
            from obstore.store import LocalStore, S3Store
        except ImportError:
            raise ValueError(f"{what}: object stores need obstore: pip install 'peregrine[objectstore]'") from None
        self._obstore = obstore
        scheme, location, prefix = split_url(url, what)
        self.url = url.rstrip("/")
        self.store: Any
        self._root = Path(location) if scheme == "file" else None
        if scheme == "file":
            self.store = LocalStore(location, mkdir=True, automatic_cleanup=True)
        else:
            options: dict[str, Any] = {}
            if endpoint:
                if not endpoint.startswith(("http://", "https://")):
                    raise ValueError(f"{what}: the S3 endpoint must be an http:// or https:// URL, got "
                                     f"'{clipped(endpoint)}'")
                options["endpoint"] = endpoint
                options["client_options"] = {"allow_http": endpoint.startswith("http://")}
            self.store = S3Store(location, prefix=prefix or None, **options)

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self.store, *args, **kwargs)
        except FileNotFoundError:
            raise
        except Exception as e:
            log.warning("object store %s: %s failed: %s", self.url, what, e)
            raise Unavailable(f"job objects: {what} in {self.url} failed ({type(e).__name__}); retry later") from None

    def check(self) -> None:
        """Ask the store something, so that a wrong URL, endpoint or credentials show at start-up."""
        self._call("listing", self._obstore.list_with_delimiter, "jobs/")

    def put(self, key: str, data: bytes) -> None:
        self._call(f"writing {key}", self._obstore.put, key, data, use_multipart=False)

    def put_file(self, key: str, path: Path, start: int = 0, end: int | None = None) -> int:
        """Upload bytes ``start..end`` of a local file to ``key`` (atomically: the object appears whole or not
        at all), streamed in ``TRANSFER_CHUNK`` parts when larger; the bytes uploaded."""
        end = os.path.getsize(path) if end is None else end
        size = end - start
        if size <= TRANSFER_CHUNK:
            with open(path, "rb") as f:
                f.seek(start)
                self.put(key, f.read(size))
            return size

        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as f:
                f.seek(start)
                left = size
                while left > 0:
                    chunk = f.read(min(left, TRANSFER_CHUNK))
                    if not chunk:
                        raise OSError(f"{path} ended {left} bytes early")
                    left -= len(chunk)
                    yield chunk

        self._call(f"writing {key}", self._obstore.put, key, chunks(), chunk_size=TRANSFER_CHUNK, max_concurrency=2)
        return size

    def read(self, key: str, offset: int, size: int) -> bytes:
        """Bytes ``offset..offset+size`` of ``key``, which the caller knows to be there."""
        if size <= 0:
            return b""
        return bytes(self._call(f"reading {key}", self._obstore.get_range, key, start=offset, end=offset + size))

    def size(self, key: str) -> int | None:
        try:
            return int(self._call(f"reading {key}", self._obstore.head, key)["size"])
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> list[tuple[str, int]]:
        """(key, size) of every object under ``prefix``, sorted by key."""
        found = [(m["path"], int(m["size"])) for batch in self._call(f"listing {prefix}", self._obstore.list, prefix)
                 for m in batch]
        return sorted(found)

    def children(self, prefix: str) -> list[str]:
        """The names one level below ``prefix`` ("jobs/" -> job ids)."""
        answer = self._call(f"listing {prefix}", self._obstore.list_with_delimiter, prefix)
        return [p.rstrip("/").rsplit("/", 1)[-1] for p in answer["common_prefixes"]]

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            self._call("deleting", self._obstore.delete, keys[start:start + 1000])

    def delete_prefix(self, prefix: str, keep: str = "") -> None:
        self.delete([key for key, _ in self.list(prefix) if key != keep])
        self.discard_staging(prefix)

    def discard_staging(self, prefix: str) -> None:
        """A file:// store's leftovers under ``prefix``: it writes an object to ``<key>#<n>`` and renames it,
        so a process killed while writing leaves that file behind, which the store neither lists nor deletes.
        Called where the one writer of those keys starts again or is done with them (an upload opened or
        resumed, a job's objects deleted). S3 has none: an unfinished upload is not an object."""
        if self._root is None or not (base := self._root / prefix).is_dir():
            return
        for path in base.rglob("*#*"):
            if _STAGING.fullmatch(path.name) and path.is_file():
                log.info("object store %s: removing %s, an object whose writing was cut", self.url, path)
                path.unlink(missing_ok=True)

    def download(self, parts: list[tuple[str, int]], f: BinaryIO) -> None:
        """The objects ``parts`` (key, size) one after the other into an open file, ``TRANSFER_CHUNK`` at a
        time."""
        for key, size in parts:
            for offset in range(0, size, TRANSFER_CHUNK):
                f.write(self.read(key, offset, min(TRANSFER_CHUNK, size - offset)))


class StoredFile(io.RawIOBase):
    """Objects read one after the other as one seekable, read-only file, by ranged reads (a payload's parts;
    or one object, an input location). Wrap it in :class:`io.BufferedReader` (:func:`open_stored`)."""

    def __init__(self, bucket: ObjectBucket, parts: list[tuple[str, int]]) -> None:
        super().__init__()
        self.bucket, self.parts = bucket, parts
        self.starts: list[int] = []
        total = 0
        for _, size in parts:
            self.starts.append(total)
            total += size
        self.length, self.position = total, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.length}[whence]
        if base + offset < 0:
            raise OSError(f"seek to {base + offset}: before the start")
        self.position = base + offset
        return self.position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self.position >= self.length or not len(view):
            return 0
        index = bisect.bisect_right(self.starts, self.position) - 1
        key, size = self.parts[index]
        within = self.position - self.starts[index]
        data = self.bucket.read(key, within, min(len(view), size - within))
        if not data:
            raise OSError(f"{key}: ended before its listed size ({size} bytes)")
        view[:len(data)] = data
        self.position += len(data)
        return len(data)


class StoredPayload:
    """A payload in the store, as sources read it (:class:`.sources.Payload`): a buffered reader over its
    objects, or a local copy in ``cache`` for the kinds whose readers need a file."""

    def __init__(self, bucket: ObjectBucket, parts: list[tuple[str, int]], cache: Path, name: str) -> None:
        self.bucket, self.parts, self.cache, self.name = bucket, parts, cache, name
        self.size = sum(size for _, size in parts)

    def open(self) -> BinaryIO:
        return io.BufferedReader(StoredFile(self.bucket, self.parts), READ_BUFFER)  # type: ignore[return-value]

    def local_path(self) -> Path:
        if not (self.cache.exists() and self.cache.stat().st_size == self.size):
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            with open(self.cache, "wb") as f:
                self.bucket.download(self.parts, f)
        return self.cache


# -- what the job service needs of where payloads and results live -----------------------------------

class Upload(Protocol):
    """One Submit stream's bytes on their way to where payloads live."""

    received: int  # the bytes that count as received (durable where payloads live)

    def write(self, data: bytes) -> None: ...

    def close(self) -> None:
        """The stream ended (whole or cut): keep what arrived."""
        ...

    def abort(self) -> None:
        """The upload is refused: keep nothing more."""
        ...

    def sha256(self) -> str:
        """The payload's SHA-256 (hex), once closed."""
        ...


@dataclass
class RunFiles:
    """What one run of a job (a claim) knows of its checkpoints: its token, and, per result file already in
    the store, the header length and row size that place item i in it (JSON Lines: none)."""

    token: str
    npy: dict[str, tuple[int, int]] = field(default_factory=dict)


class JobFiles(Protocol):
    """Where payloads and results live (see the module docstring). ``workdir(job_id)``: the job's working
    directory in the spool."""

    checkpoint_s: float  # the shortest time between two checkpoints

    def workdir(self, job_id: str) -> Path: ...

    def check(self) -> None: ...

    def received(self, job_id: str) -> int: ...

    def open_upload(self, job_id: str, offset: int) -> Upload:
        """Take the upload back to ``offset`` (at most what was received) and append from there."""
        ...

    def payload_done(self, job_id: str) -> None:
        """The whole payload arrived and was checked."""
        ...

    def payload(self, record: JobRecord) -> Path | Payload: ...

    def prepare_run(self, record: JobRecord, run: RunFiles) -> bool:
        """Make the working directory hold the result up to the record's checkpoint; False when what is
        kept does not add up (the job then starts over)."""
        ...

    def checkpoint(self, record: JobRecord, run: RunFiles, items: int, result_bytes: int) -> None:
        """Keep the result from the record's checkpoint up to ``items`` items (``result_bytes`` of JSON)."""
        ...

    def store_result(self, record: JobRecord, run: RunFiles, fmt: str) -> str:
        """Keep the finished result; the key the record names it by ("" for the spool)."""
        ...

    def read_result(self, record: JobRecord, offset: int, size: int) -> bytes: ...

    def ended(self, record: JobRecord) -> None:
        """The job ended: remove what it no longer needs (its payload, working files)."""
        ...

    def remove(self, job_id: str) -> None: ...

    def sweep(self, lookup: Callable[[str], JobRecord | None]) -> None:
        """Remove what no record owns."""
        ...


def _read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class _SpoolUpload:
    def __init__(self, part: Path, offset: int) -> None:
        self.part = part
        self.file = open(part, "ab")  # noqa: SIM115  # closed by close()
        self.file.truncate(offset)  # what the client sends again replaces the rest
        self.received = offset

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.received += len(data)

    def close(self) -> None:
        self.file.close()

    abort = close

    def sha256(self) -> str:
        return _sha256_of(self.part)


class SpoolFiles:
    """Payloads and results as files in the spool: ``<job id>/payload`` (``payload.part`` while it uploads),
    ``result.jsonl`` or ``result.npz`` beside it."""

    checkpoint_s = 0.0

    def __init__(self, spool: Path) -> None:
        self.spool = spool

    def workdir(self, job_id: str) -> Path:
        return self.spool / job_id

    def check(self) -> None:
        pass

    def received(self, job_id: str) -> int:
        part = self.workdir(job_id) / "payload.part"
        return part.stat().st_size if part.exists() else 0

    def open_upload(self, job_id: str, offset: int) -> Upload:
        self.workdir(job_id).mkdir(parents=True, exist_ok=True)
        return _SpoolUpload(self.workdir(job_id) / "payload.part", offset)

    def payload_done(self, job_id: str) -> None:
        os.replace(self.workdir(job_id) / "payload.part", self.workdir(job_id) / "payload")

    def payload(self, record: JobRecord) -> Path | Payload:
        return self.workdir(record.job_id) / "payload"

    def prepare_run(self, record: JobRecord, run: RunFiles) -> bool:
        return True  # the result file is where the last run left it (ResultWriter cuts it to the checkpoint)

    def checkpoint(self, record: JobRecord, run: RunFiles, items: int, result_bytes: int) -> None:
        pass  # the result writer's fsync was the checkpoint

    def store_result(self, record: JobRecord, run: RunFiles, fmt: str) -> str:
        return ""

    def read_result(self, record: JobRecord, offset: int, size: int) -> bytes:
        return _read_at(result_path(self.workdir(record.job_id), record.result_format), offset, size)

    def ended(self, record: JobRecord) -> None:
        for name in ("payload", "payload.part"):
            with contextlib.suppress(FileNotFoundError):
                (self.workdir(record.job_id) / name).unlink()

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.workdir(job_id), ignore_errors=True)

    def sweep(self, lookup: Callable[[str], JobRecord | None]) -> None:
        for entry in self.spool.iterdir():
            if entry.is_dir() and _JOB_ID.fullmatch(entry.name) and lookup(entry.name) is None:
                shutil.rmtree(entry, ignore_errors=True)


class _StoreUpload:
    """An upload as numbered parts (see the module docstring): ``buffer`` holds part ``index``, which starts
    at byte ``base`` of the payload."""

    def __init__(self, bucket: ObjectBucket, prefix: str, buffer: Path, part_bytes: int, offset: int) -> None:
        self.bucket, self.prefix, self.part_bytes = bucket, prefix, part_bytes
        bucket.discard_staging(prefix)  # a part a killed server was writing
        parts = _parts(bucket, prefix)
        self.digest = hashlib.sha256()
        self.index, self.base = 0, 0
        for key, size in parts:  # the parts wholly before the offset stay; their bytes start the digest
            if self.base + size > offset:
                break
            for start in range(0, size, TRANSFER_CHUNK):
                self.digest.update(bucket.read(key, start, min(TRANSFER_CHUNK, size - start)))
            self.index, self.base = self.index + 1, self.base + size
        head = b""
        if offset > self.base:  # the part holding the offset comes back, up to it, to be written again
            if self.index >= len(parts):
                raise InvalidArgument(f"spec.resume_offset: the object store holds {self.base} bytes of the "
                                      f"payload; resume from there or before, got {offset}")
            head = bucket.read(parts[self.index][0], 0, offset - self.base)
            self.digest.update(head)
        bucket.delete([key for key, _ in parts[self.index + (1 if head else 0):]])
        buffer.parent.mkdir(parents=True, exist_ok=True)
        self.buffer = open(buffer, "w+b")  # noqa: SIM115  # closed by close()
        self.buffer.write(head)
        self.received = offset

    def _flush(self) -> None:
        size = self.buffer.tell()
        if size:
            self.buffer.flush()
            self.bucket.put_file(f"{self.prefix}{self.index:06d}", Path(self.buffer.name), 0, size)
            self.index, self.base = self.index + 1, self.base + size
            self.buffer.seek(0)
            self.buffer.truncate()
        self.received = self.base

    def write(self, data: bytes) -> None:
        self.buffer.write(data)
        self.digest.update(data)
        if self.buffer.tell() >= self.part_bytes:
            self._flush()

    def close(self) -> None:
        if not self.buffer.closed:
            try:
                self._flush()
            finally:
                self.buffer.close()
                Path(self.buffer.name).unlink(missing_ok=True)

    def abort(self) -> None:
        if not self.buffer.closed:
            self.buffer.close()
            Path(self.buffer.name).unlink(missing_ok=True)

    def sha256(self) -> str:
        return self.digest.hexdigest()


def _parts(bucket: ObjectBucket, prefix: str) -> list[tuple[str, int]]:
    """A payload's parts in order, up to the first one missing."""
    numbered = sorted((int(key[len(prefix):]), key, size) for key, size in bucket.list(prefix)
                      if key[len(prefix):].isdigit())
    parts: list[tuple[str, int]] = []
    for number, key, size in numbered:
        if number != len(parts):
            break
        parts.append((key, size))
    return parts


class StoreFiles:
    """Payloads and results in an object store, working files in the spool (see the module docstring)."""

    def __init__(self, bucket: ObjectBucket, spool: Path, part_bytes: int = PART_BYTES,
                 checkpoint_s: float = 2.0) -> None:
        self.bucket, self.spool, self.part_bytes = bucket, spool, part_bytes
        self.checkpoint_s = checkpoint_s  # each checkpoint is an object per result file: not every half second

    def workdir(self, job_id: str) -> Path:
        return self.spool / job_id

    @staticmethod
    def _key(job_id: str, rest: str) -> str:
        return f"jobs/{job_id}/{rest}"

    def check(self) -> None:
        self.bucket.check()

    def received(self, job_id: str) -> int:
        return sum(size for _, size in _parts(self.bucket, self._key(job_id, "payload/")))

    def open_upload(self, job_id: str, offset: int) -> Upload:
        return _StoreUpload(self.bucket, self._key(job_id, "payload/"), self.workdir(job_id) / "payload.part",
                            self.part_bytes, offset)

    def payload_done(self, job_id: str) -> None:
        pass  # the record's state says the parts are complete

    def payload(self, record: JobRecord) -> Path | Payload:
        parts = _parts(self.bucket, self._key(record.job_id, "payload/"))
        stored = StoredPayload(self.bucket, parts, self.workdir(record.job_id) / "payload.cache", "the payload")
        if stored.size != record.total_bytes:
            raise NotFound(f"job {record.job_id}: the object store holds {stored.size} of its payload's "
                           f"{record.total_bytes} bytes (removed outside the server?)")
        return stored

    # -- results: checkpoints -------------------------------------------------------------------------
    def prepare_run(self, record: JobRecord, run: RunFiles) -> bool:
        workdir = self.workdir(record.job_id)
        workdir.mkdir(parents=True, exist_ok=True)
        for stale in [*workdir.glob("result.*"), *workdir.glob("output.*.npy")]:  # the store holds the truth
            stale.unlink()
        if not record.items_done and not record.result_bytes:
            return True
        segments = _committed_segments(self.bucket.list(self._key(record.job_id, "checkpoint/")),
                                       record.checkpoint_runs, record.items_done)
        for name, pieces in segments.items():
            path = workdir / name
            with open(path, "wb") as f:
                cursor = 0
                for first, last, key, size in pieces:
                    if name.endswith(".npy") and first != cursor:
                        log.warning("job %s: checkpoint of %s lacks items %d..%d", record.job_id, name, cursor, first)
                        return False
                    self.bucket.download([(key, size)], f)
                    cursor = last
            if name.endswith(".npy"):
                if cursor != record.items_done:
                    log.warning("job %s: checkpoint of %s ends at item %d, not %d", record.job_id, name, cursor,
                                record.items_done)
                    return False
                header, row, rows = _npy_layout(path)
                if path.stat().st_size != header + record.items_done * row:
                    return False
                os.truncate(path, header + rows * row)  # the rows to come, as ResultWriter made them
                run.npy[name] = (header, row)
        jsonl = workdir / "result.jsonl"
        if (jsonl.stat().st_size if jsonl.exists() else 0) != record.result_bytes:
            log.warning("job %s: its checkpoints hold %d bytes of JSON Lines, its record %d", record.job_id,
                        jsonl.stat().st_size if jsonl.exists() else 0, record.result_bytes)
            return False
        return True

    def checkpoint(self, record: JobRecord, run: RunFiles, items: int, result_bytes: int) -> None:
        workdir, first = self.workdir(record.job_id), record.items_done
        if result_bytes > record.result_bytes:
            self.bucket.put_file(self._segment(record.job_id, "result.jsonl", first, items, run.token),
                                 workdir / "result.jsonl", record.result_bytes, result_bytes)
        for path in sorted(workdir.glob("output.*.npy")):
            known = run.npy.get(path.name)
            if known is None:  # new in this run: from its first byte (its header and any rows before)
                header, row, _ = _npy_layout(path)
                run.npy[path.name] = (header, row)
                start, since = 0, 0
            else:
                header, row = known
                start, since = header + first * row, first
            self.bucket.put_file(self._segment(record.job_id, path.name, since, items, run.token), path, start,
                                 header + items * row)

    def _segment(self, job_id: str, name: str, first: int, last: int, token: str) -> str:
        return self._key(job_id, f"checkpoint/{name}/{first:012d}-{last:012d}.{token}")

    def store_result(self, record: JobRecord, run: RunFiles, fmt: str) -> str:
        key = self._key(record.job_id, f"result.{run.token}.{fmt}")
        self.bucket.put_file(key, result_path(self.workdir(record.job_id), fmt))
        return key

    def read_result(self, record: JobRecord, offset: int, size: int) -> bytes:
        return self.bucket.read(record.result_key, offset, size)

    def ended(self, record: JobRecord) -> None:
        keep = record.result_key if record.state == SUCCEEDED else ""
        self.bucket.delete_prefix(self._key(record.job_id, ""), keep=keep)
        shutil.rmtree(self.workdir(record.job_id), ignore_errors=True)

    def remove(self, job_id: str) -> None:
        self.bucket.delete_prefix(self._key(job_id, ""))
        shutil.rmtree(self.workdir(job_id), ignore_errors=True)

    def sweep(self, lookup: Callable[[str], JobRecord | None]) -> None:
        for entry in self.spool.iterdir():  # working files of jobs that ended (or were taken over and ended)
            if entry.is_dir() and _JOB_ID.fullmatch(entry.name):
                record = lookup(entry.name)
                if record is None or record.ended:
                    shutil.rmtree(entry, ignore_errors=True)
        for job_id in self.bucket.children("jobs/"):  # a record goes first, so objects no record owns are left over
            if _JOB_ID.fullmatch(job_id) and lookup(job_id) is None:
                self.bucket.delete_prefix(self._key(job_id, ""))


def _committed_segments(listing: list[tuple[str, int]], runs: list[Any], items_done: int
                        ) -> dict[str, list[tuple[int, int, str, int]]]:
    """Per result file, the checkpoint objects that were committed, in item order: a run's object counts when
    it ends at or before the item the next run started from (the last run: the record's ``items_done``); one
    written past that was never committed (its server died or lost its lease first)."""
    ends: dict[str, int] = {}
    for i, (token, _) in enumerate(runs):
        ends[token] = runs[i + 1][1] if i + 1 < len(runs) else items_done
    found: dict[str, list[tuple[int, int, str, int]]] = {}
    for key, size in listing:
        name, _, leaf = key.rpartition("/")
        match = _SEGMENT.fullmatch(leaf)
        if match is None:
            continue
        first, last, token = int(match[1]), int(match[2]), match[3]
        if token in ends and last <= ends[token] and first < last:
            found.setdefault(name.rsplit("/", 1)[-1], []).append((first, last, key, size))
    return {name: sorted(pieces) for name, pieces in found.items()}


def _npy_layout(path: Path) -> tuple[int, int, int]:
    """(header bytes, bytes per row, rows) of an .npy file."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
        header = f.tell()
    return header, int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize, int(shape[0]) if shape else 0


# -- input locations in an object store ----------------------------------------------------------------

class InputPrefixes:
    """Where jobs may name objects as their input (``--job-input-root s3://bucket/prefix``): one bucket client
    per bucket, made when first needed."""

    def __init__(self, prefixes: tuple[str, ...], endpoint: str = "") -> None:
        self.endpoint = endpoint
        self.prefixes = []
        for prefix in prefixes:
            scheme, bucket, key_prefix = split_url(prefix, "--job-input-root")
            if scheme != "s3":
                raise ValueError(f"--job-input-root: expected a directory or an s3:// URL, got '{clipped(prefix)}'")
            self.prefixes.append((bucket, key_prefix))
        if self.prefixes:
            ObjectBucket(f"s3://{self.prefixes[0][0]}", endpoint, "--job-input-root")  # obstore there, endpoint right
        self._buckets: dict[str, ObjectBucket] = {}

    def resolve(self, url: str, what: str) -> tuple[ObjectBucket, str]:
        """The bucket and key of an ``s3://`` input location under an allowed prefix; InvalidArgument
        naming ``what`` otherwise."""
        try:
            _, bucket, key = split_url(url, what)
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
        if not self.prefixes:
            raise InvalidArgument(f"{what}: this server reads no object-store input (start it with "
                                  "--job-input-root s3://bucket/prefix)")
        if not key or not any(bucket == b and (not p or key.startswith(p + "/")) for b, p in self.prefixes):
            raise InvalidArgument(f"{what}: '{clipped(url)}' is not under an allowed input prefix")
        if bucket not in self._buckets:
            self._buckets[bucket] = ObjectBucket(f"s3://{bucket}", self.endpoint, "--job-input-root")
        return self._buckets[bucket], key
