"""Triton's ``perf_analyzer -i http`` runs against the HTTP port unchanged (a short run: correctness of
the protocol, not a benchmark; figures live in benchmarks/)."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest
from peregrine.server.app import PeregrineServer

PERF_ANALYZER = Path(__file__).resolve().parents[2] / ".tools" / "perf_analyzer" / "bin" / "perf_analyzer"

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


@pytest.mark.skipif(not PERF_ANALYZER.exists(),
                    reason="perf_analyzer is not installed (bash benchmarks/tools/install_perf_analyzer.sh)")
@pytest.mark.parametrize(("model", "shape", "memory"), [
    ("identity_fp32", "INPUT0:64", "none"), ("simple", None, "none"),
    # inputs and outputs in system shared memory: the outputs come back listed bare, as Triton lists them
    ("identity_fp32", "INPUT0:64", "system"), ("simple", None, "system"),
])
def test_perf_analyzer_over_http(http_server: PeregrineServer, tmp_path: Path, model: str, shape: str | None,
                                 memory: str) -> None:
    out = tmp_path / "pa.csv"
    cmd = [str(PERF_ANALYZER), "-m", model, "-i", "http", "-u", f"127.0.0.1:{http_server.http_port}",
           "--concurrency-range", "2", "--measurement-interval", "500", "-s", "1000", "--max-trials", "6",
           "--input-data", "random", "--shared-memory", memory, "-f", str(out)]
    # "-s 1000": the run checks the protocol, not the figures; a noisy two-core machine's windows differ by
    # more than perf_analyzer's default 10% (once by more than 50%), and an unstable run exits 2 however
    # correct every response was
    if shape:
        cmd += ["--shape", shape]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=150)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert rows and float(rows[0]["Inferences/Second"]) > 0
