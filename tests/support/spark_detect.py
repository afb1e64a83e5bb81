"""A Spark application, run the way users run one (``spark-submit spark_detect.py PHOTOS REPOSITORY OUT``):
boxes for every JPEG file of a folder, written as Parquet by ``peregrine.server.spark.detect``."""

from __future__ import annotations

import sys

from peregrine.server.spark import detect
from pyspark.sql import SparkSession


def main(photos: str, repository: str, out: str) -> None:
    spark = (SparkSession.builder.appName("peregrine-test").config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", "2").config("spark.python.worker.reuse", "true")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    images = spark.read.format("binaryFile").option("pathGlobFilter", "*.jpg").load(photos)
    detect(images.repartition(2), model="cam", repository=repository).write.parquet(out)
    spark.stop()


if __name__ == "__main__":
    main(*sys.argv[1:4])
