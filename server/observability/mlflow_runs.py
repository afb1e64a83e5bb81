"""Benchmark and drift reports as MLflow runs (the ``mlflow`` extra).

``peregrine log-run REPORT.md [...] --tracking-uri URI --experiment NAME`` logs each report (the Markdown
files ``benchmarks/*.py --out`` and ``peregrine-drift report`` write) as one run: the file and the PNG
files beside it as artifacts, the command line and the machine it names as parameters, and every number
of its tables as a metric named ``<table>.<row>.<column>`` (e.g. ``1.peregrine.c1_infer/s``). The tracking
URI may be a local directory (``file:./mlruns``, MLflow's file store, allowed for this tool) or an MLflow
server or database.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

_NUMBER = re.compile(r"^[+-]?[0-9][0-9,]*(\.[0-9]+)?$")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-./ :]+")


def report_metrics(text: str) -> dict[str, float]:
    """Every numeric cell of the Markdown tables in ``text``, keyed ``<table>.<row>.<column>``."""
    metrics: dict[str, float] = {}
    table, header = 0, None
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.lstrip().startswith("|") else None
        if cells is None:
            header = None
            continue
        if all(set(c) <= set("-: ") for c in cells):
            continue  # the separator row
        if header is None:
            table += 1
            header = cells
            continue
        row = _clean(cells[0].replace("`", ""))
        for name, cell in zip(header[1:], cells[1:], strict=False):
            value = cell.replace("\u00d7", "").replace("*", "").strip()  # ratios ("1.5x" with a times sign), **bold**
            if _NUMBER.match(value):
                metrics[f"{table}.{row}.{_clean(name)}"[:250]] = float(value.replace(",", ""))
    return metrics


def _clean(text: str) -> str:
    return _KEY_UNSAFE.sub("", text).strip().replace(" ", "_") or "_"


def report_params(text: str) -> dict[str, str]:
    params = {}
    command = re.search(r"^`([^`]+)`\s*$", text, re.MULTILINE)
    if command:
        params["command"] = command.group(1)[:500]
    machine = re.search(r"^Machine: (.+)$", text, re.MULTILINE)
    if machine:
        params["machine"] = machine.group(1)[:500]
    return params


def log_report(report: Path, tracking_uri: str, experiment: str) -> str:
    """Log one report as a run; returns the run id."""
    try:
        import mlflow
    except ImportError:
        raise RuntimeError("logging runs needs MLflow: pip install 'peregrine[mlflow]'") from None
    if tracking_uri.startswith("file:") or "://" not in tracking_uri:
        # A local directory: MLflow keeps its file store in maintenance mode and refuses it unless asked;
        # the directory is what this tool offers by default (a database or a server needs more set-up).
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    text = report.read_text(encoding="utf-8")
    title = next((line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")), report.stem)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=title[:200]) as run:
        mlflow.log_params(report_params(text))
        mlflow.log_metrics(report_metrics(text))
        mlflow.log_artifact(str(report))
        for picture in sorted(report.parent.glob(f"{report.stem}*.png")):
            mlflow.log_artifact(str(picture))
        return str(run.info.run_id)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="peregrine log-run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+", type=Path, help="Markdown reports to log, one run each")
    ap.add_argument("--tracking-uri", default="file:./mlruns", help="MLflow tracking URI (default %(default)s)")
    ap.add_argument("--experiment", default="peregrine", help="MLflow experiment (default %(default)s)")
    args = ap.parse_args(argv)
    for report in args.reports:
        if not report.is_file():
            print(f"peregrine log-run: {report}: no such file", file=sys.stderr)
            return 2
        print(f"{report}: run {log_report(report, args.tracking_uri, args.experiment)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
