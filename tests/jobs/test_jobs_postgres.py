"""Two server processes share one queue through a real PostgreSQL server and one spool: every job runs once,
and a job whose server is killed mid-run is taken over by the other when its lease runs out and finishes with
the result an uninterrupted run gives (issue 17, the shared store)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from peregrine.client.jobs import JobClient, state_name
from support import jobs

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


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
    """job id -> the workers that claimed it, from the servers' logs."""
    found: dict[str, list[str]] = {}
    for log in logs:
        for job_id, owner in re.findall(r"job ([0-9a-f]{32}): claimed by (\S+)", log.read_text()):
            found.setdefault(job_id, []).append(owner)
    return found


def test_two_servers_share_one_queue_and_take_over_a_dead_ones_job(tmp_path: Path,
                                                                  postgres: jobs.PostgresServer) -> None:
    repo = jobs.repository(tmp_path / "models")
    spool = tmp_path / "spool"  # the storage both mount
    shared = ("--job-store", postgres.url, "--job-lease", "2", "--job-items-in-flight", "2")
    a = jobs.ServerProcess(repo, spool, tmp_path / "a.log", *shared).start()
    b = jobs.ServerProcess(repo, spool, tmp_path / "b.log", *shared).start()
    try:
        payload = jobs.photo_archive(copies=5)  # 30 photographs a job
        with JobClient(a.address) as client_a, JobClient(b.address) as client_b:
            ids = [client_a.submit(payload, "cam").job_id for _ in range(6)]
            done = [client_b.wait(job_id, timeout_s=200) for job_id in ids]  # B sees A's jobs: one queue
            assert [state_name(j) for j in done] == ["SUCCEEDED"] * 6, [j.error for j in done]
            reference = b"".join(c.data for c in client_b.result(ids[0]))
            assert all(b"".join(c.data for c in client_a.result(i)) == reference for i in ids)
        claims = _claims([tmp_path / "a.log", tmp_path / "b.log"])
        assert all(len(claims[i]) == 1 for i in ids), claims  # no job run twice
        assert len({owners[0] for owners in claims.values()}) == 2  # both servers worked

        # A long job; the server running it is killed; the other takes it over once its lease runs out.
        long_payload = jobs.photo_archive(copies=25)  # 150 photographs
        with JobClient(a.address) as client:
            job_id = client.submit(long_payload, "cam").job_id
            deadline = time.monotonic() + 120
            while client.get(job_id).items_done == 0:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            first = _claims([tmp_path / "a.log", tmp_path / "b.log"])[job_id][0]
        victim, survivor = (a, b) if first in (tmp_path / "a.log").read_text() else (b, a)
        victim.kill()
        with JobClient(survivor.address) as client:
            job = client.wait(job_id, timeout_s=200)
            assert state_name(job) == "SUCCEEDED", job.error
            assert job.items_done == job.items_total == 150
            result = b"".join(c.data for c in client.result(job_id))
            reference_job = client.wait(client.submit(long_payload, "cam").job_id, timeout_s=200)
            assert result == b"".join(c.data for c in client.result(reference_job.job_id))
        owners = _claims([tmp_path / "a.log", tmp_path / "b.log"])[job_id]
        assert len(owners) == 2 and owners[0] != owners[1], owners  # claimed again, by the other
    finally:
        a.stop()
        b.stop()
