"""Peregrine on Apache Spark (local mode, two executor threads): a DataFrame of image files in, boxes out as
a struct column, the same boxes ``peregrine batch`` gives, written as Parquet (issue 17, item 6).

The application runs as users run one, through ``spark-submit`` in a process of its own: a JVM launched from
this process would be forked from one where gRPC threads of earlier tests may still run, and such a fork can
die before Java starts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from peregrine.server.batch import run
from support import jobs

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

DRIVER = Path(__file__).parents[1] / "support" / "spark_detect.py"


def spark_submit() -> Path:
    pyspark = pytest.importorskip("pyspark", reason="the [spark] extra (pyspark) is not installed")
    pytest.importorskip("pyarrow", reason="the [spark] extra (pyarrow) is not installed")
    if shutil.which("java") is None:
        pytest.skip("Spark needs Java (a JRE 17 or later) on the PATH")
    return Path(pyspark.__file__).parent / "bin" / "spark-submit"


def test_detect_over_a_dataframe_of_images(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    submit = spark_submit()
    repo = jobs.repository(tmp_path / "models")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        for name in jobs.PHOTOS:
            (photos / f"{i}-{name}.jpg").write_bytes(jobs.photo(name))
    (photos / "9-broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "detections.parquet"
    # The driver and the workers run this environment's Python (Spark's own setting, spark.pyspark.python,
    # resolves the virtual environment's link to the interpreter it points at, and loses the environment).
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    done = subprocess.run([str(submit), "--master", "local[2]", str(DRIVER), str(photos), str(repo), str(out)],
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-6000:]
    rows = {Path(r["path"]).name: r for r in pq.read_table(out).to_pylist()}
    assert len(rows) == 3 * len(jobs.PHOTOS) + 1
    assert rows["9-broken.jpg"]["boxes"] is None and "expected JPEG" in rows["9-broken.jpg"]["error"]
    # The boxes peregrine batch gives for the same files (the same pipeline, in this process).
    reference = tmp_path / "reference.jsonl"
    run(["--model", "cam", "--repository", str(repo), "--input", str(photos), "--output", str(reference)])
    for line in map(json.loads, reference.read_text().splitlines()):
        row = rows[Path(line["source"]).name]
        if "error" in line:
            continue
        assert (row["height"], row["width"]) == (line["height"], line["width"])
        got = [(b["class_id"], round(b["score"], 4), round(b["x1"], 2)) for b in row["boxes"]]
        assert got == [(b["class_id"], round(b["score"], 4), round(b["x1"], 2)) for b in line["boxes"]]
