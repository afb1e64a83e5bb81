"""A job's result on disk, written item by item in item order and committed at checkpoints.

- **JSON Lines** (``result.jsonl``; detection jobs, and failed items of any job): one line per item, with
  its index, source name, a recording's stamp and frame id, and its boxes or its error.
- **Tensors** (``result.npz``; tensor jobs): each output becomes one array whose row i is item i's output.
  While the job runs, each output is an ``.npy`` file of its final shape, each row written at its place
  (plain writes, not a memory map: a 1 GB result must not count against the server's resident memory);
  when the job ends they are stored, uncompressed, into the ``.npz``.

:meth:`checkpoint` makes what was written durable (flush, fsync) and returns the JSON result's length; a
job resumed after a restart opens its writer at its last checkpoint (the JSON result truncated there,
tensor rows past it overwritten as they are redone).
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..codecs import detection_json
from ..core.errors import InvalidArgument
from ..core.types import FrameResult
from .sources import Item


def detection_line(item: Item, result: FrameResult) -> dict[str, Any]:
    """An image's (or frame's) detections as one JSON object."""
    height, width = result.sizes[0]
    line: dict[str, Any] = {"index": item.index, "source": item.name, "height": height, "width": width,
                            "boxes": detection_json.boxes(result)}
    if item.stamp_ns is not None:
        line["stamp_ns"] = item.stamp_ns
    if item.frame_id:
        line["frame_id"] = item.frame_id
    return line


def error_line(item: Item, error: str) -> dict[str, Any]:
    return {"index": item.index, "source": item.name, "error": error}


class ResultWriter:
    """The JSON Lines result (always: failed items are listed there for tensor jobs too) and, for tensor
    jobs, the outputs' arrays (see the module docstring)."""

    def __init__(self, directory: Path, total: int, committed_bytes: int, tensors: bool) -> None:
        self.directory = directory
        self.total = total
        self.tensors = tensors
        self.path = directory / "result.jsonl"
        mode = "r+b" if self.path.exists() else "w+b"
        self._jsonl = open(self.path, mode)  # noqa: SIM115  # closed by close()
        self._jsonl.truncate(committed_bytes)
        self._jsonl.seek(committed_bytes)
        self._arrays: dict[str, _RowFile] = {}
        if tensors:
            for part in sorted(directory.glob("output.*.npy")):
                self._arrays[part.name[len("output."):-len(".npy")]] = _RowFile.open(part)

    def write_line(self, line: dict[str, Any]) -> None:
        self._jsonl.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")

    def write_outputs(self, index: int, outputs: dict[str, np.ndarray]) -> None:
        """Item ``index``'s outputs (each with a leading batch dimension of 1) into row ``index``."""
        for name, value in outputs.items():
            row = np.asarray(value)
            row = row[0] if row.ndim and row.shape[0] == 1 else row
            array = self._arrays.get(name)
            if array is None:
                if row.dtype.hasobject:
                    raise InvalidArgument(f"output '{name}': BYTES outputs cannot be stored as a tensor result")
                array = _RowFile.create(self.directory / f"output.{name}.npy", row.dtype, (self.total, *row.shape))
                self._arrays[name] = array
            if array.shape[1:] != row.shape or array.dtype != row.dtype:
                raise InvalidArgument(
                    f"output '{name}': item {index} is {row.dtype} {list(row.shape)}, earlier items "
                    f"{array.dtype} {list(array.shape[1:])}: a tensor result needs every item's output alike")
            array.write(index, row)

    def checkpoint(self) -> int:
        """Make everything written so far durable; the JSON result's committed length."""
        self._jsonl.flush()
        os.fsync(self._jsonl.fileno())
        for array in self._arrays.values():
            array.sync()
        return self._jsonl.tell()

    def finish(self) -> tuple[str, int]:
        """The result's final form: ("jsonl", bytes), or ("npz", bytes) for tensor jobs (with the failed
        items' lines kept as ``errors.jsonl`` inside when there are any)."""
        length = self.checkpoint()
        if not self.tensors:
            return "jsonl", length
        npz = self.directory / "result.npz"
        with zipfile.ZipFile(npz.with_suffix(".tmp"), "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            for name in self._arrays:
                z.write(self.directory / f"output.{name}.npy", arcname=f"{name}.npy")
            if length:
                z.write(self.path, arcname="errors.jsonl")
        self.close()
        for name in list(self._arrays):
            (self.directory / f"output.{name}.npy").unlink()
        self._arrays.clear()
        os.replace(npz.with_suffix(".tmp"), npz)
        return "npz", npz.stat().st_size

    def close(self) -> None:
        if not self._jsonl.closed:
            self._jsonl.close()
        for array in self._arrays.values():
            array.close()


class _RowFile:
    """An ``.npy`` file of a fixed shape whose rows are written one at a time, at their offsets."""

    def __init__(self, path: Path, fd: int, dtype: np.dtype[Any], shape: tuple[int, ...], offset: int) -> None:
        self.path, self.fd, self.dtype, self.shape, self.offset = path, fd, dtype, shape, offset
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    @classmethod
    def create(cls, path: Path, dtype: np.dtype[Any], shape: tuple[int, ...]) -> _RowFile:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(os.dup(fd), "wb") as f:
            np.lib.format.write_array_header_2_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                     "fortran_order": False, "shape": shape})
            offset = f.tell()
        row_file = cls(path, fd, dtype, shape, offset)
        os.ftruncate(fd, offset + shape[0] * row_file.row_bytes)  # sparse until written
        return row_file

    @classmethod
    def open(cls, path: Path) -> _RowFile:
        with open(path, "rb") as f:
            np.lib.format.read_magic(f)
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
        return cls(path, os.open(path, os.O_RDWR), dtype, tuple(shape), offset)

    def write(self, index: int, row: np.ndarray) -> None:
        os.pwrite(self.fd, np.ascontiguousarray(row).data, self.offset + index * self.row_bytes)

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Tally:
    """Writes each item's outcome to a result (in item order) and keeps the summary: items, failed (with the
    first failure), detections and their count per class. ``summary``: where an earlier run stopped."""

    def __init__(self, writer: ResultWriter, summary: dict[str, Any] | None = None) -> None:
        self.writer = writer
        self.summary: dict[str, Any] = dict(summary or {}) or {"items": 0, "failed": 0, "detections": 0,
                                                              "per_class": {}}

    def add(self, item: Item, result: Any, error: str) -> None:
        s = self.summary
        if error or item.error:
            self.writer.write_line(error_line(item, item.error or error))
            s["failed"] += 1
            s.setdefault("first_error", f"item {item.index} ({item.name}): {item.error or error}")
        elif isinstance(result, FrameResult):
            line = detection_line(item, result)
            self.writer.write_line(line)
            s["detections"] += len(line["boxes"])
            for box in line["boxes"]:
                s["per_class"][box["label"]] = s["per_class"].get(box["label"], 0) + 1
        else:
            self.writer.write_outputs(item.index, result.outputs)
        s["items"] += 1


def result_path(directory: Path, fmt: str) -> Path:
    return directory / ("result.npz" if fmt == "npz" else "result.jsonl")
