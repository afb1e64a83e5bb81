"""Peregrine on Apache Spark (local mode, two executor threads): a DataFrame of image files in, boxes out as
a struct column, the same boxes ``peregrine batch`` gives, written as Parquet (issue 17, item 6)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from peregrine.server.batch import run
from support import jobs

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


@pytest.fixture(scope="module")
def spark() -> Iterator[object]:
    pytest.importorskip("pyspark", reason="the [spark] extra (pyspark) is not installed")
    pytest.importorskip("pyarrow", reason="the [spark] extra (pyarrow) is not installed")
    if shutil.which("java") is None:
        pytest.skip("Spark needs Java (a JRE 17 or later) on the PATH")
    from pyspark.sql import SparkSession

    # The workers run this environment's Python (Spark's own setting, spark.pyspark.python, resolves the
    # virtual environment's link to the interpreter it points at, and loses the environment).
    before = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = (SparkSession.builder.master("local[2]").appName("peregrine-test")
               .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "2")
               .config("spark.python.worker.reuse", "true").getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    logging.getLogger("py4j").setLevel(logging.WARNING)  # its INFO lines at exit go to a closed stream
    yield session
    session.stop()
    if before is None:
        os.environ.pop("PYSPARK_PYTHON", None)
    else:
        os.environ["PYSPARK_PYTHON"] = before


def test_detect_over_a_dataframe_of_images(spark: object, tmp_path: Path) -> None:
    from peregrine.server.spark import detect

    repo = jobs.repository(tmp_path / "models")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        for name in jobs.PHOTOS:
            (photos / f"{i}-{name}.jpg").write_bytes(jobs.photo(name))
    (photos / "9-broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    images = spark.read.format("binaryFile").option("pathGlobFilter", "*.jpg").load(str(photos))  # type: ignore[attr-defined]
    boxes = detect(images.repartition(2), model="cam", repository=repo)
    out = tmp_path / "detections.parquet"
    boxes.write.parquet(str(out))
    rows = {Path(r["path"]).name: r for r in spark.read.parquet(str(out)).collect()}  # type: ignore[attr-defined]
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
