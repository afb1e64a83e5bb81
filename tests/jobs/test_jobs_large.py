"""A 1 GiB job through a real server process: streamed in, run, streamed out, with the server's resident
memory growing by less than 200 MB (issue 17). Payload, spool and result live on disk, never in memory."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from peregrine.client.jobs import JobClient
from peregrine.proto import jobs_pb2 as pb
from support import jobs

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

ROWS, ROW = 255, 1 << 20  # float32 rows of 4 MiB: 1020 MiB, under the default 1 GiB payload limit


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_a_1_gib_job_leaves_the_servers_memory_alone(tmp_path: Path) -> None:
    if shutil.disk_usage(tmp_path).free < 6 << 30:
        pytest.skip("needs 6 GiB of free disk (payload, spool, result and the downloaded copy)")
    payload = tmp_path / "rows.npy"
    rows = np.lib.format.open_memmap(payload, mode="w+", dtype=np.float32, shape=(ROWS, ROW))
    for i in range(ROWS):  # each row its own values, so that a row out of place shows
        rows[i] = np.arange(ROW, dtype=np.float32) + i
    rows.flush()
    del rows
    server = jobs.ServerProcess(jobs.repository(tmp_path / "models"), tmp_path / "spool",
                                tmp_path / "server.log").start()
    assert server.proc is not None
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss(server.proc.pid))  # type: ignore[union-attr]
            time.sleep(0.02)

    try:
        with JobClient(server.address) as client:
            client.wait(client.submit(jobs.photo_archive(), "cam").job_id)  # every code path warm
            before = _rss(server.proc.pid)
            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                job = client.submit(payload, "wide", chunk_bytes=4 << 20)
                job = client.wait(job.job_id, timeout_s=400)
                assert pb.JobState.Name(job.state) == "SUCCEEDED", job.error
                assert job.items_done == ROWS and job.result_format == "npz"
                out = tmp_path / "result.npz"
                summary = client.download(job.job_id, out)
            finally:
                stop.set()
                sampler.join()
        assert summary["items"] == ROWS
        grown = peak[0] - before
        assert grown < 200 << 20, f"the server's RSS grew by {grown >> 20} MiB"
        with np.load(out, mmap_mode="r") as result:  # type: ignore[no-untyped-call]
            outputs = result["OUTPUT0"]
            assert outputs.shape == (ROWS, ROW)
            for i in (0, 1, ROWS // 2, ROWS - 1):
                np.testing.assert_array_equal(outputs[i], np.arange(ROW, dtype=np.float32) + i)
    finally:
        server.stop()
