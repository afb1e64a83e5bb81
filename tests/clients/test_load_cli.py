"""``peregrine-load`` end to end against a real in-process Peregrine server."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import client_support
import numpy as np
import pytest
from peregrine.client.load.cli import main

# Fixtures shared with the other client tests (see client_support).
peregrine_server = client_support.peregrine_server
peregrine_url = client_support.peregrine_url

QUICK = ["--warmup", "0.2", "--duration", "0.5", "--no-progress"]


def test_closed_loop_run_writes_json_and_csv(peregrine_url: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    rc = main(["identity_fp32", "-u", peregrine_url, "--shape", "INPUT0:16", "-c", "2", *QUICK,
               "--json", str(out_json), "--csv", str(out_csv), "--slo-p99-ms", "60000"])
    assert rc == 0
    assert "SLO" in capsys.readouterr().out
    summary = json.loads(out_json.read_text())
    assert summary["mode"] == "closed" and summary["concurrency"] == 2
    assert summary["ok"] == summary["sent"] > 0 and summary["errors"] == {}
    assert set(summary["latency_ms"]) >= {"p50", "p90", "p99", "p99.9", "max"}
    assert summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"] <= summary["latency_ms"]["max"]
    assert summary["hdr_histogram_us"]
    with out_csv.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == summary["sent"] and {r["status"] for r in rows} == {"OK"}


def test_open_loop_poisson_run(peregrine_url: str, tmp_path: Path) -> None:
    out_json = tmp_path / "r.json"
    rc = main(["identity_int32", "-u", peregrine_url, "--shape", "INPUT0:1,8", "--rate", "100", "--arrival",
               "poisson", "--deadline-ms", "1000", *QUICK, "--json", str(out_json)])
    assert rc == 0
    summary = json.loads(out_json.read_text())
    assert summary["mode"] == "open" and summary["arrival"] == "poisson" and summary["rate"] == 100
    assert summary["sent"] > 0 and summary["deadline_misses"] == 0


def test_slo_missed_exits_1(peregrine_url: str) -> None:
    assert main(["identity_fp32", "-u", peregrine_url, "--shape", "INPUT0:4", *QUICK, "--slo-p99-ms", "0.001"]) == 1


def test_nothing_succeeding_misses_the_slo(peregrine_url: str) -> None:
    # Every request expires in the 5 s batching window of "slow" before it can run.
    rc = main(["slow", "-u", peregrine_url, "-c", "1", *QUICK, "--deadline-ms", "50", "--slo-p99-ms", "1000"])
    assert rc == 1


def test_bad_arguments_and_unknown_models_exit_2(peregrine_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no_such_model", "-u", peregrine_url, *QUICK]) == 2
    assert "NOT_FOUND" in capsys.readouterr().err
    assert main(["identity_fp32", "-u", peregrine_url, *QUICK]) == 2  # dynamic dimension without --shape
    assert "--shape INPUT0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["identity_fp32", "--rate", "10", "--concurrency", "2"])
    assert e.value.code == 2


def test_npy_payload_and_plot(peregrine_url: str, tmp_path: Path) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("--plot needs matplotlib")
    np.save(tmp_path / "x.npy", np.arange(12, dtype=np.int64).reshape(3, 4))
    png = tmp_path / "r.png"
    rc = main(["identity_int64", "-u", peregrine_url, "--npy", str(tmp_path / "x.npy"), *QUICK, "--plot", str(png)])
    assert rc == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
