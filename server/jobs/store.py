"""Where jobs live: their records in a database, their payloads and results in a spool directory.

:class:`JobStore` is what the job service needs of a store; :class:`SqliteJobStore` is the default one,
an embedded SQLite database in write-ahead-log mode beside the spool (one process writes it). Every change
of state is committed, with ``synchronous=FULL``, before the service acts on it: after ``kill -9`` at any
moment the records say what was uploaded, queued, running (and how far: ``items_done`` and the result's
committed length) and ended.

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

    @property
    def ended(self) -> bool:
        return self.state in ENDED


_COLUMNS = [f.name for f in dataclasses.fields(JobRecord)]
_JSON_COLUMNS = {"parameters", "summary"}


class JobStore(Protocol):
    """What the job service needs of a store (records; the spool is a directory beside it)."""

    spool: Path

    def create(self, record: JobRecord) -> None: ...

    def get(self, job_id: str) -> JobRecord | None: ...

    def update(self, job_id: str, **changes: Any) -> JobRecord:
        """Change fields of a record and commit; the record as it is now. KeyError when there is none."""
        ...

    def transition(self, job_id: str, from_states: frozenset[str] | set[str], **changes: Any) -> JobRecord | None:
        """Apply ``changes`` only if the job is in one of ``from_states`` (atomically); None if it is not."""
        ...

    def claim(self) -> JobRecord | None:
        """Take the oldest QUEUED job and mark it RUNNING (atomically); None when there is none."""
        ...

    def list(self, state: str = "", model_name: str = "", limit: int = 100,
             before: tuple[int, str] | None = None) -> list[JobRecord]:
        """Newest first; ``before`` (created_ms, job_id) pages on from the previous page's last job."""
        ...

    def with_state(self, *states: str) -> list[JobRecord]: ...

    def delete(self, job_id: str) -> None: ...

    def close(self) -> None: ...


class SqliteJobStore:
    """The default store: SQLite (WAL, synchronous=FULL) at ``spool/jobs.sqlite3`` (see the module docstring).

    One connection, guarded by a lock: the service calls it from the event loop and from worker threads."""

    def __init__(self, spool: Path) -> None:
        self.spool = Path(spool)
        self.spool.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.spool / "jobs.sqlite3", check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            columns = ", ".join(f"{c} {'TEXT' if _is_text(c) else 'INTEGER'}" for c in _COLUMNS if c != "job_id")
            self._db.execute(f"CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, {columns})")
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

    def create(self, record: JobRecord) -> None:
        values = [_to_sql(c, getattr(record, c)) for c in _COLUMNS]
        with self._transaction() as db:
            db.execute(f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})", values)

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return _record(row) if row else None

    def update(self, job_id: str, **changes: Any) -> JobRecord:
        record = self.transition(job_id, set(STATES), **changes)
        if record is None:
            raise KeyError(job_id)
        return record

    def transition(self, job_id: str, from_states: frozenset[str] | set[str], **changes: Any) -> JobRecord | None:
        changes.setdefault("updated_ms", now_ms())
        unknown = set(changes) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"not a job field: {sorted(unknown)}")
        states = sorted(from_states)
        with self._transaction() as db:
            cursor = db.execute(
                f"UPDATE jobs SET {', '.join(f'{c} = ?' for c in changes)} WHERE job_id = ? "
                f"AND state IN ({', '.join('?' * len(states))})",
                [*(_to_sql(c, v) for c, v in changes.items()), job_id, *states])
            if cursor.rowcount == 0:
                return None
            row = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return _record(row)

    def claim(self) -> JobRecord | None:
        with self._transaction() as db:
            row = db.execute("SELECT job_id FROM jobs WHERE state = ? ORDER BY created_ms, job_id LIMIT 1",
                             (QUEUED,)).fetchone()
            if row is None:
                return None
            stamp = now_ms()
            db.execute("UPDATE jobs SET state = ?, started_ms = CASE WHEN started_ms = 0 THEN ? ELSE started_ms END, "
                       "updated_ms = ? WHERE job_id = ?", (RUNNING, stamp, stamp, row[0]))
            full = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE job_id = ?", (row[0],)).fetchone()
        return _record(full)

    def list(self, state: str = "", model_name: str = "", limit: int = 100,
             before: tuple[int, str] | None = None) -> list[JobRecord]:
        where, args = [], []
        if state:
            where.append("state = ?")
            args.append(state)
        if model_name:
            where.append("model_name = ?")
            args.append(model_name)
        if before is not None:
            where.append("(created_ms < ? OR (created_ms = ? AND job_id < ?))")
            args += [before[0], before[0], before[1]]
        sql = f"SELECT {', '.join(_COLUMNS)} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_ms DESC, job_id DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, [*args, limit]).fetchall()
        return [_record(r) for r in rows]

    def with_state(self, *states: str) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE state IN ({', '.join('?' * len(states))}) "
                "ORDER BY created_ms, job_id", states).fetchall()
        return [_record(r) for r in rows]

    def delete(self, job_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _is_text(column: str) -> bool:
    return column in _JSON_COLUMNS or isinstance(getattr(JobRecord("", ""), column), str)


def _to_sql(column: str, value: Any) -> Any:
    return json.dumps(value) if column in _JSON_COLUMNS else value


def _record(row: tuple[Any, ...]) -> JobRecord:
    values = {c: (json.loads(v) if c in _JSON_COLUMNS else v) for c, v in zip(_COLUMNS, row, strict=True)}
    return JobRecord(**values)
