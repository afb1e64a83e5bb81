"""Where jobs live: their records in a database; their payloads and results in a spool directory, or in an
object store (:mod:`.objects`) when several servers share the queue.

:class:`JobStore` is what the job service needs of a store; :class:`SqliteJobStore` is the default one,
an embedded SQLite database in write-ahead-log mode beside the spool (one process writes it). Every change
of state is committed, with ``synchronous=FULL``, before the service acts on it: after ``kill -9`` at any
moment the records say what was uploaded, queued, running (and how far: ``items_done`` and the result's
committed length) and ended.

Several server processes may share one queue through :class:`PostgresJobStore` (PostgreSQL, with payloads and
results in an object store they all reach, or in a spool on storage they all mount): a worker claims a job
with ``SELECT ... FOR UPDATE SKIP LOCKED`` and holds it by a lease it renews while it runs; a job whose lease
ran out (its process died) is claimed again by another, which resumes it from its checkpoint. Every update a
worker makes to its running job names its lease, so a worker that lost its lease can no longer write over the
new owner's progress.

A record's progress is a checkpoint: ``items_done`` items have their results in the first
``result_bytes`` bytes of the result file (and, for tensor results, in the first ``items_done`` rows of
each output), so a job resumed after a restart truncates its result to that length and carries on from
the next item; nothing done is redone.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

# States, as the protocol names them (jobs.proto's JobState).
UPLOADING, QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "UPLOADING", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
ENDED = frozenset({SUCCEEDED, FAILED, CANCELLED})
STATES = (UPLOADING, QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class JobRecord:
    """One job as the store keeps it."""

    job_id: str
    model_name: str
    model_version: str = ""
    kind: str = ""
    state: str = UPLOADING
    total_bytes: int = 0
    received_bytes: int = 0
    sha256: str = ""
    input_location: str = ""  # a path the payload is read from (no upload), or ""
    parameters: dict[str, str] = field(default_factory=dict)
    time_limit_s: int = 3600
    client_tag: str = ""
    items_total: int = 0
    items_done: int = 0
    items_failed: int = 0
    result_bytes: int = 0  # the result file's committed length (a checkpoint)
    result_format: str = ""
    summary: dict[str, Any] = field(default_factory=dict)  # counters kept across checkpoints; the summary
    error: str = ""
    created_ms: int = field(default_factory=now_ms)
    updated_ms: int = field(default_factory=now_ms)
    started_ms: int = 0
    ended_ms: int = 0
    expires_ms: int = 0
    run_ms: int = 0  # time spent running before the current run (a resumed job counts its earlier runs)
    notify_url: str = ""  # POST the outcome here when the job ends (webhook)
    notified: int = 0  # the webhook was delivered (or gave up): 1
    lease_owner: str = ""  # the worker running it (RUNNING only)
    lease_expires_ms: int = 0  # past it, another worker may claim it
    # Each run of the job (a claim), in order: [its token, the item it started from]; with an object store,
    # which checkpoint objects count (objects.py).
    checkpoint_runs: list[list[Any]] = field(default_factory=list)
    result_key: str = ""  # the finished result's object (object store), or ""

    @property
    def ended(self) -> bool:
        return self.state in ENDED


_COLUMNS = [f.name for f in dataclasses.fields(JobRecord)]
_JSON_COLUMNS = {"parameters", "summary", "checkpoint_runs"}


class JobStore(Protocol):
    """What the job service needs of a store of records (the spool is a directory beside it; payloads and
    results are in it or in an object store: :mod:`.objects`)."""

    spool: Path
    shared: bool  # several processes use it at once (leases matter; a start-up requeues nothing)

    def create(self, record: JobRecord) -> None: ...

    def get(self, job_id: str) -> JobRecord | None: ...

    def update(self, job_id: str, **changes: Any) -> JobRecord:
        """Change fields of a record and commit; the record as it is now. KeyError when there is none."""
        ...

    def transition(self, job_id: str, from_states: frozenset[str] | set[str], owner: str | None = None,
                   **changes: Any) -> JobRecord | None:
        """Apply ``changes`` only if the job is in one of ``from_states`` (and, with ``owner``, still leased
        by it), atomically; None if it is not."""
        ...

    def claim(self, owner: str, lease_s: float) -> JobRecord | None:
        """Take the oldest QUEUED job, or a RUNNING one whose lease ran out, and mark it RUNNING under
        ``owner``'s lease (atomically); None when there is none."""
        ...

    def heartbeat(self, job_id: str, owner: str, lease_s: float) -> bool:
        """Renew ``owner``'s lease on a running job; False when it lost it (cancelled, or taken over)."""
        ...

    def list(self, state: str = "", model_name: str = "", limit: int = 100,
             before: tuple[int, str] | None = None) -> list[JobRecord]:
        """Newest first; ``before`` (created_ms, job_id) pages on from the previous page's last job."""
        ...

    def with_state(self, *states: str) -> list[JobRecord]: ...

    def spool_bytes(self) -> int:
        """What the jobs keep in the spool or the object store: payloads of jobs that have not ended (uploaded
        ones, not those read from an input location) and every result."""
        ...

    def delete(self, job_id: str) -> None: ...

    def close(self) -> None: ...


_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM jobs"


class _SqlJobStore:
    """What the SQLite and PostgreSQL stores share: the table and every statement but the claim. ``_P`` is
    the driver's placeholder."""

    _P = "?"
    spool: Path

    def _transaction(self) -> Any:
        raise NotImplementedError

    def _query(self, sql: str, args: Any = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self._P)

    def _columns_sql(self, text: str, integer: str) -> str:
        return ", ".join(f"{c} {text if _is_text(c) else integer}" for c in _COLUMNS if c != "job_id")

    def create(self, record: JobRecord) -> None:
        values = [_to_sql(c, getattr(record, c)) for c in _COLUMNS]
        with self._transaction() as db:
            db.execute(self._sql(f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"),
                       values)

    def get(self, job_id: str) -> JobRecord | None:
        rows = self._query(self._sql(f"{_SELECT} WHERE job_id = ?"), (job_id,))
        return _record(rows[0]) if rows else None

    def update(self, job_id: str, **changes: Any) -> JobRecord:
        record = self.transition(job_id, set(STATES), **changes)
        if record is None:
            raise KeyError(job_id)
        return record

    def transition(self, job_id: str, from_states: frozenset[str] | set[str], owner: str | None = None,
                   **changes: Any) -> JobRecord | None:
        changes.setdefault("updated_ms", now_ms())
        unknown = set(changes) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"not a job field: {sorted(unknown)}")
        states = sorted(from_states)
        where = f"job_id = ? AND state IN ({', '.join('?' * len(states))})"
        args = [*(_to_sql(c, v) for c, v in changes.items()), job_id, *states]
        if owner is not None:
            where += " AND lease_owner = ?"
            args.append(owner)
        with self._transaction() as db:
            cursor = db.execute(self._sql(f"UPDATE jobs SET {', '.join(f'{c} = ?' for c in changes)} WHERE {where}"),
                                args)
            if cursor.rowcount == 0:
                return None
            row = db.execute(self._sql(f"{_SELECT} WHERE job_id = ?"), (job_id,)).fetchone()
        return _record(row)

    def heartbeat(self, job_id: str, owner: str, lease_s: float) -> bool:
        return self.transition(job_id, {RUNNING}, owner, lease_expires_ms=now_ms() + int(lease_s * 1000)) is not None

    def list(self, state: str = "", model_name: str = "", limit: int = 100,
             before: tuple[int, str] | None = None) -> list[JobRecord]:
        where: list[str] = []
        args: list[Any] = []
        if state:
            where.append("state = ?")
            args.append(state)
        if model_name:
            where.append("model_name = ?")
            args.append(model_name)
        if before is not None:
            where.append("(created_ms < ? OR (created_ms = ? AND job_id < ?))")
            args += [before[0], before[0], before[1]]
        sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY created_ms DESC, job_id DESC LIMIT ?"
        return [_record(r) for r in self._query(self._sql(sql), [*args, limit])]

    def with_state(self, *states: str) -> list[JobRecord]:
        sql = f"{_SELECT} WHERE state IN ({', '.join('?' * len(states))}) ORDER BY created_ms, job_id"
        return [_record(r) for r in self._query(self._sql(sql), states)]

    def spool_bytes(self) -> int:
        ended = sorted(ENDED)
        rows = self._query(self._sql(
            f"SELECT COALESCE(SUM(CASE WHEN input_location = '' AND state NOT IN ({', '.join('?' * len(ended))}) "
            "THEN total_bytes ELSE 0 END + result_bytes), 0) FROM jobs"), ended)
        return int(rows[0][0])

    def delete(self, job_id: str) -> None:
        with self._transaction() as db:
            db.execute(self._sql("DELETE FROM jobs WHERE job_id = ?"), (job_id,))


class SqliteJobStore(_SqlJobStore):
    """The default store: SQLite (WAL, synchronous=FULL) at ``spool/jobs.sqlite3``, for one server process
    (see the module docstring). One connection, guarded by a lock: the service calls it from the event loop
    and from worker threads."""

    shared = False

    def __init__(self, spool: Path) -> None:
        self.spool = Path(spool)
        self.spool.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.spool / "jobs.sqlite3", check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(f"CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, "
                             f"{self._columns_sql('TEXT', 'INTEGER')})")
            present = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
            for column in _COLUMNS:  # a spool made by an earlier version: its table gains the new fields
                if column not in present:
                    kind = "TEXT" if _is_text(column) else "INTEGER"
                    default = _default_sql(column)
                    self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind} NOT NULL DEFAULT {default}")
            self._db.execute("CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, created_ms)")
            self._db.execute("CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_ms, job_id)")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: Any = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    def claim(self, owner: str, lease_s: float) -> JobRecord | None:
        stamp = now_ms()
        with self._transaction() as db:
            row = db.execute("SELECT job_id FROM jobs WHERE state = ? OR (state = ? AND lease_expires_ms < ?) "
                             "ORDER BY created_ms, job_id LIMIT 1", (QUEUED, RUNNING, stamp)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = ?, lease_owner = ?, lease_expires_ms = ?, updated_ms = ?, "
                       "started_ms = CASE WHEN started_ms = 0 THEN ? ELSE started_ms END WHERE job_id = ?",
                       (RUNNING, owner, stamp + int(lease_s * 1000), stamp, stamp, row[0]))
            full = db.execute(f"{_SELECT} WHERE job_id = ?", (row[0],)).fetchone()
        return _record(full)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class PostgresJobStore(_SqlJobStore):
    """Records in PostgreSQL (``dsn``, a libpq connection string or URL), for several server processes sharing
    one queue; payloads and results in ``spool``, a directory they all mount. Needs ``psycopg`` (the
    ``[postgres]`` extra). A pool of one connection per thread that asks, each statement its own transaction."""

    _P = "%s"
    shared = True

    def __init__(self, dsn: str, spool: Path) -> None:
        try:
            import psycopg
        except ImportError:
            raise RuntimeError("the PostgreSQL job store needs psycopg: pip install 'peregrine[postgres]'") from None
        self._psycopg = psycopg
        self.dsn = dsn
        self.spool = Path(spool)
        self.spool.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()
        with self._transaction() as db:
            db.execute("SELECT pg_advisory_xact_lock(472819)")  # one process creates the table at a time
            db.execute(f"CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, "
                       f"{self._columns_sql('TEXT', 'BIGINT')})")
            for column in _COLUMNS:  # a table made by an earlier version gains the new fields
                kind, default = ("TEXT" if _is_text(column) else "BIGINT"), _default_sql(column)
                db.execute(f"ALTER TABLE jobs ADD COLUMN IF NOT EXISTS {column} {kind} NOT NULL DEFAULT {default}")
            db.execute("CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, created_ms)")
            db.execute("CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_ms, job_id)")

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._psycopg.connect(self.dsn, autocommit=True)  # transactions are explicit blocks
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        conn = self._connection()
        with conn.transaction():
            yield conn

    def _query(self, sql: str, args: Any = ()) -> list[tuple[Any, ...]]:
        with self._transaction() as db:
            return list(db.execute(sql, tuple(args)).fetchall())

    def claim(self, owner: str, lease_s: float) -> JobRecord | None:
        stamp = now_ms()
        with self._transaction() as db:
            row = db.execute(
                f"UPDATE jobs SET state = %s, lease_owner = %s, lease_expires_ms = %s, updated_ms = %s, "
                f"started_ms = CASE WHEN started_ms = 0 THEN %s ELSE started_ms END "
                f"WHERE job_id = (SELECT job_id FROM jobs WHERE state = %s OR (state = %s AND lease_expires_ms < %s) "
                f"ORDER BY created_ms, job_id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING {', '.join(_COLUMNS)}",
                (RUNNING, owner, stamp + int(lease_s * 1000), stamp, stamp, QUEUED, RUNNING, stamp)).fetchone()
        return _record(row) if row else None

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


def _is_text(column: str) -> bool:
    return column in _JSON_COLUMNS or isinstance(getattr(JobRecord("", ""), column), str)


def _default_sql(column: str) -> str:
    """A new column's value in the rows made before it existed (as SQL): the field's default."""
    value = _to_sql(column, getattr(JobRecord("", ""), column))
    return f"'{value}'" if isinstance(value, str) else str(value)


def _to_sql(column: str, value: Any) -> Any:
    return json.dumps(value) if column in _JSON_COLUMNS else value


def _record(row: tuple[Any, ...]) -> JobRecord:
    values = {c: (json.loads(v) if c in _JSON_COLUMNS else v) for c, v in zip(_COLUMNS, row, strict=True)}
    return JobRecord(**values)
