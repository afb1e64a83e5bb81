"""Many replicas, here: three server processes behind client-side round-robin (one client naming all three,
as a Kubernetes headless Service gives); one is killed with SIGKILL under load; every request completes, the
ones cut off on it retried on the others (issue 18, item 4)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from peregrine.client import InferenceClient, RetryPolicy
from support import jobs, onnx_models

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


def test_three_replicas_one_killed_under_load_loses_no_request(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    # A request takes a while (a 20 ms batching window), so that some are in flight when the replica dies.
    onnx_models.write(repo, "id", onnx_models.identity("FP32", ["N", 4]),
                      "max_batch_size = 8\n[dynamic_batching]\nmax_queue_delay_us = 20000\n")
    replicas = [jobs.ServerProcess(repo, None, tmp_path / f"r{i}.log").start() for i in range(3)]
    addresses = [r.address for r in replicas]
    ok, failed = [0], []
    stop = threading.Event()

    def drive(client: InferenceClient) -> None:
        x = np.arange(4, dtype=np.float32)[None]
        while not stop.is_set():
            try:
                out = client.infer("id", {"INPUT0": x}, deadline_s=20)
                assert np.array_equal(out["OUTPUT0"], x)
                ok[0] += 1
            except Exception as e:  # every failure is the finding
                failed.append(e)

    try:
        with InferenceClient(addresses, retry=RetryPolicy(retry_inference=True)) as client:
            threads = [threading.Thread(target=drive, args=(client,)) for _ in range(8)]
            for t in threads:
                t.start()
            time.sleep(2.0)
            before = ok[0]
            served = {a: _served(a) for a in addresses}
            assert all(n > 0 for n in served.values()), served  # round-robin: every replica takes calls
            replicas[1].kill()
            time.sleep(2.0)
            assert ok[0] > before
            after_kill = {a: _served(a) for a in (addresses[0], addresses[2])}
            stop.set()
            for t in threads:
                t.join(30)
        assert failed == [], f"{len(failed)} requests failed, e.g. {failed[0]!r}"
        # The survivors absorbed the load.
        assert all(after_kill[a] > served[a] for a in after_kill), (served, after_kill)
    finally:
        stop.set()
        for r in replicas:
            r.stop()


def _served(address: str) -> int:
    with InferenceClient(address) as client:
        return int(client.model_statistics("id")[0].inference_count)
