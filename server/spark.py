"""Peregrine on Apache Spark: a detection pipeline over a DataFrame of images, in-process on each executor.

::

    from pyspark.sql import SparkSession
    from peregrine.server.spark import detect

    spark = SparkSession.builder.master("local[2]").getOrCreate()
    images = spark.read.format("binaryFile").option("pathGlobFilter", "*.jpg").load("photos/")
    boxes = detect(images, model="yolov8n_detect", repository="models")
    boxes.write.parquet("detections.parquet")   # path, height, width, boxes (array of structs), error

``detect`` is a ``mapInPandas`` over Arrow batches: each Spark Python worker loads the model once (the
repository must be readable where the workers run: a shared volume, or the same path on every node) and runs
every batch it is given through the same data plane, batchers and pipeline a server runs, several images in
flight so that decoding overlaps inference. An image the pipeline refuses (corrupt, too large) gets its
``error`` and no boxes; the others go on. Needs the ``[spark]`` extra (pyspark, pandas, pyarrow) and Java;
the workers must run a Python with Peregrine installed: set ``PYSPARK_PYTHON`` to it (a virtual environment's
``bin/python``) before the session starts.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .app import PeregrineServer
from .config.server import ServerConfig
from .core.types import FrameResult
from .jobs import sources
from .jobs.results import detection_line
from .jobs.service import LocalCall, run_in_order
from .observability import logs

# The result's columns (a Spark DDL schema): one row per input row, in the same order within a partition. A
# box's keypoints are a pose model's ([x, y, score] each), its polygon a segmentation model's ([x, y] each); null
# for other models.
SCHEMA = ("path string, height int, width int, boxes array<struct<x1:float,y1:float,x2:float,y2:float,"
          "score:float,class_id:int,label:string,keypoints:array<array<float>>,polygon:array<array<float>>>>, "
          "error string")

_servers: dict[tuple[str, str], PeregrineServer] = {}  # per Python worker process: (repository, model) -> server
_lock = threading.Lock()


def detect(df: Any, *, model: str, repository: str | Path, version: str = "", image_col: str = "content",
           path_col: str = "path", in_flight: int = 0) -> Any:
    """Boxes for every image of ``df`` (a Spark DataFrame with the image file's bytes in ``image_col`` and
    its name in ``path_col``, as Spark's ``binaryFile`` source gives them): a DataFrame of :data:`SCHEMA`."""
    run = functools.partial(_detect_batches, str(repository), model, version, image_col, path_col, in_flight)
    return df.select(path_col, image_col).mapInPandas(run, SCHEMA)


def _server(repository: str, model: str) -> PeregrineServer:
    """This worker process's server for ``model`` (loaded on first use, stopped when the process exits)."""
    with _lock:
        server = _servers.get((repository, model))
        if server is None:
            logs.configure("WARNING", "text")
            server = PeregrineServer(ServerConfig(model_repository=Path(repository), grpc_port=0, http_port=None,
                                                  model_control_mode="explicit", load_models=[model]))
            server.start_offline()
            _servers[(repository, model)] = server
            atexit.register(server.stop, 0)
        return server


def _detect_batches(repository: str, model: str, version: str, image_col: str, path_col: str, in_flight: int,
                    batches: Iterator[Any]) -> Iterator[Any]:
    import pandas as pd

    server = _server(repository, model)
    for batch in batches:
        items = [sources.Item(i, str(path), encoded=bytes(content) if content is not None else b"")
                 for i, (path, content) in enumerate(zip(batch[path_col], batch[image_col], strict=True))]
        rows = server.loop.run(_run(server, model, version, items, in_flight))
        yield pd.DataFrame(rows, columns=["path", "height", "width", "boxes", "error"])


async def _run(server: PeregrineServer, model: str, version: str, items: list[sources.Item],
               in_flight: int) -> list[tuple[Any, ...]]:
    plane = server.dataplane
    pending = iter(items)

    async def next_item() -> sources.Item | None:
        return next(pending, None)

    depth = in_flight or 2 * max(1, plane.model(model, version).max_batch_size)
    rows: list[tuple[Any, ...]] = []
    outcomes = run_in_order(plane, LocalCall("spark"), model, version, next_item, depth, background=False)
    async with contextlib.aclosing(outcomes):
        async for item, result, error, _ in outcomes:
            if isinstance(result, FrameResult):
                line = detection_line(item, result)
                rows.append((item.name, line["height"], line["width"], line["boxes"], None))
            else:
                rows.append((item.name, None, None, None, error or item.error or "not a detection result"))
    return rows
