"""Model files sent with a load (Triton's file override): ``RepositoryModelLoad`` parameters named
``file:<version>/<path>`` carry a file's bytes (gRPC ``bytes_param``; over HTTP, base64 in a string), as
``tritonclient``'s ``load_model(name, config=..., files={"file:1/model.onnx": data})`` sends them, and the
``config`` parameter is the whole configuration of the directory they make. The model is then loaded from
that directory instead of the repository's, until a load without files or an unload.

The names and bytes come from a client and are written to this server's disk, so everything is bounded
and checked before the first byte is written (InvalidArgument naming the parameter):

- a name is ``file:`` then a version in its plain form ("1", not "01" or "0") and a relative path of
  at most :data:`MAX_PATH_PARTS` parts below it, each a file name (no empty part, '.', '..', '\\', NUL or
  other control characters, at most 255 bytes of UTF-8): nothing lands outside the model's directory;
- at most :data:`MAX_FILES` files, and no file where another is a directory (``1/a`` beside ``1/a/b``);
- the bytes are bounded by the transport (the gRPC message size, the HTTP body size);
- the files of at most :data:`MAX_MODELS_FROM_FILES` models are kept at once (a load of another is refused
  with RESOURCE_EXHAUSTED until one of them is unloaded or loaded from the repository again).

Files are written into a private directory (mode 0700) under the system's temporary directory, each file
created anew (``O_EXCL``, never through a link), and removed with the model's unload, with its next load
from the repository, and when the server stops.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

from ..core.errors import InvalidArgument, ResourceExhausted, clipped

PREFIX = "file:"
MAX_FILES = 256
MAX_PATH_PARTS = 8
MAX_PART_BYTES = 255  # NAME_MAX on Linux
MAX_MODELS_FROM_FILES = 16


def _part_problem(part: str) -> str | None:
    if part in ("", ".", ".."):
        return f"'{clipped(part)}' is not a file name"
    if "\\" in part or any(ord(c) < 0x20 or c == "\x7f" for c in part):
        return "a file name holds no '\\', NUL or other control characters"
    if len(part.encode("utf-8", "surrogatepass")) > MAX_PART_BYTES:
        return f"a file name is at most {MAX_PART_BYTES} bytes of UTF-8"
    return None


def file_path(key: str) -> tuple[str, ...]:
    """The relative path a ``file:<version>/<path>`` parameter names, as its parts; InvalidArgument naming
    the parameter when it is not one."""
    shown = f"parameters.{clipped(key)}"
    parts = tuple(key[len(PREFIX):].split("/"))
    version = parts[0]
    if not (version.isascii() and version.isdigit() and str(int(version)) == version and int(version) > 0
            and len(version) <= 19):
        raise InvalidArgument(f"{shown}: expected file:<version>/<path> with a version such as '1' (decimal "
                              f"digits, no leading zero), got version '{clipped(version)}'")
    if len(parts) < 2:
        raise InvalidArgument(f"{shown}: expected file:<version>/<path>, such as file:1/model.onnx")
    if len(parts) > 1 + MAX_PATH_PARTS:
        raise InvalidArgument(f"{shown}: expected at most {MAX_PATH_PARTS} path parts below the version, "
                              f"got {len(parts) - 1}")
    for part in parts[1:]:
        problem = _part_problem(part)
        if problem is not None:
            raise InvalidArgument(f"{shown}: {problem}")
    return parts


def check_files(files: dict[str, bytes]) -> dict[tuple[str, ...], bytes]:
    """Every name checked (:func:`file_path`), their number bounded and no file where another is a
    directory: what :func:`write_files` will write, keyed by path parts."""
    if len(files) > MAX_FILES:
        raise InvalidArgument(f"parameters: expected at most {MAX_FILES} file: parameters, got {len(files)}")
    paths = {file_path(key): data for key, data in files.items()}
    directories = {parts[:i]: "/".join(parts) for parts in paths for i in range(1, len(parts))}
    for parts in paths:
        if parts in directories:
            raise InvalidArgument(f"parameters.file:{clipped('/'.join(parts))}: a file where "
                                  f"file:{clipped(directories[parts])} needs a directory")
    return paths


class ModelFiles:
    """The private directories of the models loaded from files, at most :data:`MAX_MODELS_FROM_FILES`."""

    def __init__(self) -> None:
        self._root: Path | None = None
        self._count = 0
        self._held: dict[Path, str] = {}  # model directory -> model name
        self._lock = threading.Lock()  # loads of different models run at once

    def write(self, name: str, files: dict[tuple[str, ...], bytes], config_text: str,
              config_filename: str) -> Path:
        """A new directory ``<private>/<n>/<name>`` holding ``files`` and the configuration; the caller
        :meth:`discard`\\ s it when the load fails or when the model stops using it."""
        with self._lock:
            if len(self._held) >= MAX_MODELS_FROM_FILES and name not in self._held.values():
                raise ResourceExhausted(
                    f"model files: the files of {MAX_MODELS_FROM_FILES} models are held "
                    f"({clipped(', '.join(sorted(set(self._held.values()))))}); unload one, or load it from the "
                    "repository, before loading another from files")
            if self._root is None:
                self._root = Path(tempfile.mkdtemp(prefix="peregrine-model-files-"))
            self._count += 1
            model_dir = self._root / str(self._count) / name
            self._held[model_dir] = name
        try:
            model_dir.mkdir(parents=True, mode=0o700)
            (model_dir / config_filename).write_text(config_text)
            for parts, data in files.items():
                target = model_dir.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
        except BaseException:
            self.discard(model_dir)
            raise
        return model_dir

    def discard(self, model_dir: Path | None) -> None:
        """Remove a directory :meth:`write` made (None, or one it did not make: nothing)."""
        with self._lock:
            if model_dir is None or self._held.pop(model_dir, None) is None:
                return
        shutil.rmtree(model_dir.parent, ignore_errors=True)

    def discard_all(self) -> None:
        with self._lock:
            root, self._root = self._root, None
            self._held.clear()
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
