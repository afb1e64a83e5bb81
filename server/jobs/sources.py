"""What a job's payload holds, item by item: images from an archive, a list of paths or a robot recording,
or rows of a tensor file.

Each kind opens the payload, counts its items (:attr:`Source.total`) and yields them in a fixed order from
any index (a resumed job starts past what it has done). Reading is streaming: a 1 GB payload is never
held in memory, only the item being read. Every bound is explicit: an item larger than
``MAX_ITEM_BYTES`` fails that item, not the job; a payload that cannot be read as its kind fails the job
with a message naming the kind and what was wrong.
"""

from __future__ import annotations

import io
import math
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np

from ..core.errors import InvalidArgument

MAX_ITEM_BYTES = 64 * 1024 * 1024  # one image file, or one row of a tensor
MAX_ITEMS = 10_000_000
# Entries of an archive (images or not), counted before anything is read: each is listed in memory (zip's
# central directory is read whole). 2^18 is 4 KiB an entry in the largest payload: more than any archive of
# real photographs holds.
MAX_ARCHIVE_ENTRIES = 1 << 18
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".avif", ".heic", ".heif", ".jp2",
                  ".gif")  # the formats the detection pipeline reads
KINDS = ("archive", "tensor", "images", "recording", "video")


@dataclass
class Item:
    """One unit of a job: an image file's bytes (``encoded``), decoded BGR pixels (``pixels``, a
    recording's frames) or one row of each input tensor (``tensors``); where it came from (``name``), and
    a recording's header stamp and frame id. ``error``: the item could not be read (it fails alone)."""

    index: int
    name: str
    encoded: bytes | None = None
    pixels: np.ndarray | None = None
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    stamp_ns: int | None = None  # a recording's header stamp, a video frame's time from its start
    frame_id: str = ""
    error: str = ""


class Payload(Protocol):
    """A payload wherever it is kept: opened as a seekable binary file, or as a local file for the readers that
    need one (recordings, videos). A :class:`~pathlib.Path` is read as a :class:`LocalPayload`; a payload in an
    object store is read by ranged reads (``objects.StoredPayload``)."""

    name: str  # what messages call it

    @property
    def size(self) -> int: ...

    def open(self) -> BinaryIO: ...

    def local_path(self) -> Path: ...


class LocalPayload:
    """A payload that is a local file."""

    def __init__(self, path: Path) -> None:
        self.path, self.name = path, str(path)

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def open(self) -> BinaryIO:
        return open(self.path, "rb")

    def local_path(self) -> Path:
        return self.path


def as_payload(payload: Path | Payload) -> Payload:
    return LocalPayload(payload) if isinstance(payload, Path) else payload


class Source:
    """A payload opened as its kind."""

    kind = ""
    total = 0

    def items(self, start: int = 0) -> Iterator[Item]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the source holds open."""


def sniff(payload: Path | Payload) -> str:
    """The kind of a payload told from its first bytes ("" when none fits)."""
    with as_payload(payload).open() as f:
        head = f.read(512)
        if head.startswith(b"\x93NUMPY"):
            return "tensor"
        if head.startswith(b"PK\x03\x04"):
            try:
                with zipfile.ZipFile(f) as z:
                    names = z.namelist()
                    return "tensor" if names and all(n.endswith(".npy") for n in names) else "archive"
            except zipfile.BadZipFile:
                return ""
        if head.startswith((b"\x89MCAP", b"#ROSBAG")):
            return "recording"
        if head[4:8] == b"ftyp" or (head[:4] == b"RIFF" and head[8:12] == b"AVI ") or head[:4] == b"\x1aE\xdf\xa3":
            return "video"  # MP4/MOV, AVI, Matroska/WebM
        f.seek(0)
        if tarfile.is_tarfile(f):  # type: ignore[arg-type]
            return "archive"
    return ""


def open_source(payload: Path | Payload, kind: str, parameters: dict[str, str],
                input_roots: tuple[Path, ...] = ()) -> Source:
    """Open a payload (a local file, or one in an object store); InvalidArgument naming the kind when it
    cannot be read as one. Recordings and videos are read from a local file (``Payload.local_path``: a payload
    in an object store is downloaded first); the other kinds through ``Payload.open``, seeking as they need."""
    payload = as_payload(payload)
    kind = kind or sniff(payload)
    if kind == "archive":
        return ArchiveSource(payload)
    if kind == "tensor":
        return TensorSource(payload, parameters.get("input", ""))
    if kind == "images":
        return PathListSource(payload, input_roots)
    if kind in ("recording", "video"):
        stride = parameters.get("stride", "1") or "1"
        if not (stride.isascii() and stride.isdigit()) or int(stride) < 1:
            raise InvalidArgument(f"parameters.stride: expected a positive integer, got '{stride}'")
        if kind == "video":
            return VideoSource(payload.local_path(), int(stride))
        topics = [t for t in parameters.get("topic", "").split(",") if t]
        return RecordingSource(payload.local_path(), topics, int(stride))
    raise InvalidArgument(f"kind: expected one of {', '.join(KINDS)} (or empty to tell it from the payload), "
                          f"got {kind!r}" if kind else "kind: the payload is none of "
                          f"{', '.join(KINDS)} (not a tar or zip archive, .npy/.npz, bag or MCAP)")


def is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_SUFFIXES)


class ArchiveSource(Source):
    """A tar (any compression tarfile reads) or zip archive: its image files, sorted by name."""

    kind = "archive"

    def __init__(self, payload: Path | Payload) -> None:
        self._file = as_payload(payload).open()
        self._zip: zipfile.ZipFile | None = None
        self._tar: tarfile.TarFile | None = None
        self._members: list[Any] = []  # zip: ZipInfo; tar: (name, offset of its data, size)
        try:
            if zipfile.is_zipfile(self._file):
                _check_entries(_zip_entries(self._file))
                self._zip = zipfile.ZipFile(self._file)
                infos = [i for i in self._zip.infolist() if not i.is_dir() and is_image_name(i.filename)]
                self._members = sorted(infos, key=lambda i: i.filename)
            else:
                self._file.seek(0)
                self._tar = tarfile.open(fileobj=self._file)  # noqa: SIM115  # closed by close()
                self._members = sorted(self._tar_images(self._tar))
        except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as e:
            self.close()
            raise InvalidArgument(f"kind 'archive': the payload is not a readable tar or zip archive: {e}") from None
        except BaseException:
            self.close()
            raise
        if len(self._members) > MAX_ITEMS:
            raise InvalidArgument(f"kind 'archive': {len(self._members)} images, at most {MAX_ITEMS}")
        self.total = len(self._members)

    @staticmethod
    def _tar_images(tar: tarfile.TarFile) -> list[tuple[str, int, int]]:
        """(name, data offset, size) of the archive's image files, read a header at a time (tarfile's own
        list of members is let go as it grows) and refused past :data:`MAX_ARCHIVE_ENTRIES` entries."""
        found, entries = [], 0
        while (member := tar.next()) is not None:
            entries += 1
            _check_entries(entries)
            if member.isfile() and is_image_name(member.name):
                found.append((member.name, member.offset_data, member.size))
            tar.members.clear()
        return found

    def items(self, start: int = 0) -> Iterator[Item]:
        for index in range(start, self.total):
            member = self._members[index]
            if self._zip is not None:
                name, size = member.filename, member.file_size
            else:
                name, offset, size = member
            if size > MAX_ITEM_BYTES:
                yield Item(index, name, error=f"{name}: {size} bytes, more than an image may have ({MAX_ITEM_BYTES})")
                continue
            try:
                if self._zip is not None:
                    with self._zip.open(member) as f:
                        data = f.read(MAX_ITEM_BYTES + 1)
                else:
                    assert self._tar is not None
                    info = tarfile.TarInfo(name)
                    info.offset_data, info.size = offset, size
                    handle = self._tar.extractfile(info)
                    data = handle.read(MAX_ITEM_BYTES + 1) if handle is not None else b""
            except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
                yield Item(index, name, error=f"{name}: cannot be read from the archive: {e}")
                continue
            yield Item(index, name, encoded=data)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        if self._tar is not None:
            self._tar.close()
        self._file.close()


def _check_entries(count: int) -> None:
    if count > MAX_ARCHIVE_ENTRIES:
        raise InvalidArgument(f"kind 'archive': more than {MAX_ARCHIVE_ENTRIES} entries (images or not); at most "
                              f"{MAX_ARCHIVE_ENTRIES} are taken")


def _zip_entries(file: BinaryIO) -> int:
    """The entries a zip's end-of-central-directory record states (zip64's included), read before zipfile
    lists them all."""
    record = zipfile._EndRecData(file)  # the one reader of that record in the standard library
    if record is None:
        raise zipfile.BadZipFile("no end of central directory record")
    return int(record[zipfile._ECD_ENTRIES_TOTAL])


class FilesSource(Source):
    """Image files named by the caller (a directory's or a glob's, in ``peregrine batch``)."""

    kind = "images"

    def __init__(self, paths: list[Path]) -> None:
        if len(paths) > MAX_ITEMS:
            raise InvalidArgument(f"images: {len(paths)} files, at most {MAX_ITEMS}")
        self.paths = paths
        self.total = len(paths)

    def items(self, start: int = 0) -> Iterator[Item]:
        for index in range(start, self.total):
            yield _read_file(index, str(self.paths[index]), self.paths[index])


def _read_file(index: int, name: str, path: Path) -> Item:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_ITEM_BYTES + 1)
    except OSError as e:
        return Item(index, name, error=f"{name}: {e.strerror or e}")
    if len(data) > MAX_ITEM_BYTES:
        return Item(index, name, error=f"{name}: more than an image may have ({MAX_ITEM_BYTES} bytes)")
    return Item(index, name, encoded=data)


class PathListSource(Source):
    """A text file of image paths, one per line, each under one of the server's allowed input roots."""

    kind = "images"

    def __init__(self, payload: Path | Payload, roots: tuple[Path, ...]) -> None:
        if not roots:
            raise InvalidArgument("kind 'images': this server reads no image paths (start it with --job-input-root)")
        try:
            with io.TextIOWrapper(as_payload(payload).open(), encoding="utf-8") as text:
                lines = text.read().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidArgument(f"kind 'images': the payload is not a UTF-8 list of paths: {e}") from None
        self.paths = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if len(self.paths) > MAX_ITEMS:
            raise InvalidArgument(f"kind 'images': {len(self.paths)} paths, at most {MAX_ITEMS}")
        self.roots = tuple(r.resolve() for r in roots)
        self.total = len(self.paths)

    def items(self, start: int = 0) -> Iterator[Item]:
        for index in range(start, self.total):
            name = self.paths[index]
            resolved = Path(name).resolve()
            if not any(resolved.is_relative_to(root) for root in self.roots):
                yield Item(index, name, error=f"{name}: not under an allowed input root")
                continue
            yield _read_file(index, name, resolved)


class RecordingSource(Source):
    """Camera frames of a ROS 1/2 bag or MCAP file (``topic``: comma-separated; every image topic by
    default), every ``stride``-th frame."""

    kind = "recording"

    def __init__(self, path: Path, topics: list[str], stride: int) -> None:
        from ..codecs import recordings

        if stride < 1:
            raise InvalidArgument(f"parameters.stride: expected a positive integer, got {stride}")
        self._recordings = recordings
        self.path, self.topics, self.stride = path, topics or None, stride
        try:
            count = sum(1 for _ in self._frames())
        except (recordings.RecordingError, ValueError, OSError) as e:
            raise InvalidArgument(f"kind 'recording': {e}") from None
        self.total = count

    def _frames(self) -> Iterator[Any]:
        for n, frame in enumerate(self._recordings.iter_frames(self.path, self.topics)):
            if n % self.stride == 0:
                yield frame

    def items(self, start: int = 0) -> Iterator[Item]:
        index = 0
        try:
            for frame in self._frames():
                if index >= start:
                    yield Item(index, frame.topic, pixels=frame.image, stamp_ns=frame.stamp_ns,
                               frame_id=frame.frame_id)
                index += 1
        except (self._recordings.RecordingError, ValueError) as e:
            yield Item(index, str(self.path), error=f"recording: {e}")


class VideoSource(Source):
    """The frames of a video file (MP4, AVI, MKV, ... whatever OpenCV's FFmpeg reads), every ``stride``-th,
    each with its presentation time (``stamp_ns``, from the start of the video)."""

    kind = "video"

    def __init__(self, path: Path, stride: int) -> None:
        try:
            import cv2
        except ImportError:
            raise InvalidArgument("kind 'video': this server reads no video (OpenCV is not installed: the [ros] "
                                  "or [annotate] extra brings it)") from None
        self._cv2, self.path, self.stride = cv2, path, stride
        capture = cv2.VideoCapture(str(path))
        try:
            if not capture.isOpened():
                raise InvalidArgument("kind 'video': the payload is not a video OpenCV can read")
            frames = 0
            while capture.grab():  # counted, not decoded (a container's frame count may be wrong)
                frames += 1
        finally:
            capture.release()
        if frames == 0:
            raise InvalidArgument("kind 'video': the video has no frame that can be read")
        self.total = (frames + stride - 1) // stride

    def items(self, start: int = 0) -> Iterator[Item]:
        capture = self._cv2.VideoCapture(str(self.path))
        try:
            index = frame = 0
            while capture.grab():
                if frame % self.stride == 0:
                    if index >= start:
                        stamp_ns = int(capture.get(self._cv2.CAP_PROP_POS_MSEC) * 1_000_000)
                        ok, image = capture.retrieve()
                        name = f"frame {frame}"
                        yield (Item(index, name, pixels=image, stamp_ns=stamp_ns) if ok
                               else Item(index, name, error=f"{name}: could not be decoded"))
                    index += 1
                frame += 1
        finally:
            capture.release()


class TensorSource(Source):
    """An ``.npy`` array, or the arrays of an ``.npz`` (one per model input, by name), split on axis 0:
    item i is row i of each. Rows are read one at a time from the file (a stored or compressed ``.npz``
    member is streamed), so the payload is never loaded whole."""

    kind = "tensor"

    def __init__(self, payload: Path | Payload, input_name: str) -> None:
        self.payload = as_payload(payload)
        self._zip: zipfile.ZipFile | None = None
        self._file: BinaryIO | None = None
        try:
            f = self.payload.open()
            if zipfile.is_zipfile(f):
                self._file = f
                self._zip = zipfile.ZipFile(f)
                names = [n for n in self._zip.namelist() if n.endswith(".npy")]
                if not names:
                    raise InvalidArgument("kind 'tensor': the .npz holds no arrays")
                self.headers = {n[:-4]: _header(self._zip.open(n), f".npz member {n}") for n in names}
            else:
                with f:
                    f.seek(0)
                    self.headers = {input_name: _header(f, ".npy")}
        except (zipfile.BadZipFile, OSError) as e:
            self.close()
            raise InvalidArgument(f"kind 'tensor': the payload is not a readable .npy or .npz: {e}") from None
        except BaseException:
            self.close()
            raise
        rows = {shape[0] for shape, _, _ in self.headers.values()}
        if len(rows) != 1:
            lengths = {name: shape[0] for name, (shape, _, _) in self.headers.items()}
            raise InvalidArgument(f"kind 'tensor': the arrays differ in length on axis 0: {lengths}")
        self.total = rows.pop()
        if self.total > MAX_ITEMS:
            raise InvalidArgument(f"kind 'tensor': {self.total} rows, at most {MAX_ITEMS}")

    def items(self, start: int = 0) -> Iterator[Item]:
        streams: dict[str, BinaryIO] = {}
        try:
            for name in self.headers:
                if self._zip is not None:
                    stream: BinaryIO = self._zip.open(name + ".npy")  # type: ignore[assignment]
                else:
                    stream = self.payload.open()  # closed below
                _header(stream, name)
                row_bytes = self._row_bytes(name)
                if start:
                    if self._zip is None:
                        stream.seek(start * row_bytes, io.SEEK_CUR)
                    else:
                        _skip(stream, start * row_bytes)
                streams[name] = stream
            for index in range(start, self.total):
                tensors = {}
                for name, stream in streams.items():
                    shape, dtype, _ = self.headers[name]
                    data = stream.read(self._row_bytes(name))
                    if len(data) != self._row_bytes(name):
                        raise InvalidArgument(f"kind 'tensor': {name or 'the array'} ends at row {index} of "
                                              f"{self.total} (the file is truncated)")
                    tensors[name] = np.frombuffer(data, dtype).reshape((1, *shape[1:]))
                yield Item(index, f"row {index}", tensors=tensors)
        finally:
            for stream in streams.values():
                stream.close()

    def _row_bytes(self, name: str) -> int:
        shape, dtype, _ = self.headers[name]
        return math.prod(shape[1:]) * dtype.itemsize

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        if self._file is not None:
            self._file.close()


def _header(f: Any, what: str) -> tuple[tuple[int, ...], np.dtype[Any], int]:
    """The shape and dtype of an .npy stream, left positioned at its data."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except ValueError as e:
        raise InvalidArgument(f"kind 'tensor': {what} is not an .npy array: {e}") from None
    if fortran and len(shape) > 1:
        raise InvalidArgument(f"kind 'tensor': {what} is in Fortran order; save it C-ordered (np.ascontiguousarray)")
    if dtype.hasobject:
        raise InvalidArgument(f"kind 'tensor': {what} holds Python objects; only numeric arrays are read")
    if not shape:
        raise InvalidArgument(f"kind 'tensor': {what} is a scalar; expected an array split on axis 0")
    row = math.prod(shape[1:]) * dtype.itemsize
    if row > MAX_ITEM_BYTES:
        raise InvalidArgument(f"kind 'tensor': {what} has rows of {row} bytes, at most {MAX_ITEM_BYTES}")
    return tuple(shape), dtype, row


def _skip(stream: BinaryIO, nbytes: int) -> None:
    while nbytes > 0:
        chunk = stream.read(min(nbytes, 1 << 20))
        if not chunk:
            return
        nbytes -= len(chunk)
