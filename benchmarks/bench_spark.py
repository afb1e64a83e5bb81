"""Apache Spark local mode with 2 executors' cores against ``peregrine batch`` in-process (issue 17).

The same JPEGs (scikit-image's photographs, cycled) through the bundled detection pipeline: by
``peregrine.server.spark.detect`` over Spark's ``binaryFile`` source in ``local[N]`` (N Python workers, each
loading the model once; written as Parquet), and by ``peregrine batch`` in this process. Spark is timed from the
job's start to the Parquet written, after a warm-up job over the same files (so the workers have loaded the
model: a long-running Spark application pays that once); batch from its first item to its last. Rounds
alternate; medians.

    python benchmarks/bench_spark.py --images 240 --out benchmarks/results/spark.md
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import write_report
from bench_jobs import batch_in_process, photographs

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = "yolov8n_detect"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", type=Path, default=ROOT / "models")
    ap.add_argument("--images", type=int, default=240)
    ap.add_argument("--executors", type=int, default=2, help="local[N]: Python workers (default 2)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if shutil.which("java") is None:
        raise SystemExit("Spark needs Java on the PATH")
    from peregrine.server.spark import detect
    from pyspark.sql import SparkSession

    work = Path(tempfile.mkdtemp(prefix="bench-spark-"))
    images = work / "images"
    images.mkdir()
    for i, jpeg in enumerate(photographs(args.images)):
        (images / f"{i:05d}.jpg").write_bytes(jpeg)
    os.environ["PYSPARK_PYTHON"] = sys.executable
    total = sum(p.stat().st_size for p in images.iterdir())
    # Two partitions per worker (a file's open cost counted as nothing): each task carries many images, so
    # the pipeline keeps several in flight, as a real job over large files would.
    spark = (SparkSession.builder.master(f"local[{args.executors}]").appName("peregrine-bench")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
             .config("spark.python.worker.reuse", "true")
             .config("spark.sql.files.openCostInBytes", "0")
             .config("spark.sql.files.maxPartitionBytes", str(total // (2 * args.executors) + 1))
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    logging.getLogger("py4j").setLevel(logging.WARNING)

    def spark_run(out: Path) -> float:
        start = time.perf_counter()
        df = spark.read.format("binaryFile").option("pathGlobFilter", "*.jpg").load(str(images))
        detect(df, model=PIPELINE, repository=str(args.repository)).write.mode("overwrite").parquet(str(out))
        return args.images / (time.perf_counter() - start)

    rows: dict[str, list[float]] = {"spark": [], "batch": []}
    try:
        spark_run(work / "warm.parquet")
        for r in range(args.rounds):
            rows["spark"].append(spark_run(work / "out.parquet"))
            rows["batch"].append(batch_in_process(images, work / "out.jsonl", args.repository))
            print(f"round {r}: spark {rows['spark'][-1]:.1f}/s, batch {rows['batch'][-1]:.1f}/s", file=sys.stderr)
        written = spark.read.parquet(str(work / "out.parquet")).count()
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    text = "\n".join([
        f"{args.images} JPEGs, {PIPELINE}, Spark `local[{args.executors}]` ({written} rows written as Parquet) and "
        f"`peregrine batch` in-process, {args.rounds} rounds alternated; medians (every round in brackets).", "",
        "| path | images/s | ÷ batch |", "|---|---|---|",
        *(f"| {label} | {med[k]:.1f} ({', '.join(f'{x:.1f}' for x in rows[k])}) | {med[k] / med['batch']:.2f} |"
          for k, label in (("spark", f"Spark local[{args.executors}], detect() via mapInPandas, to Parquet"),
                           ("batch", "`peregrine batch` in-process"))),
    ])
    print(text)
    write_report(args.out, "Spark local mode", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
