"""System shared memory on the client side (Triton's shared-memory extension; Linux, ``/dev/shm``).

A :class:`SystemSharedMemory` is a POSIX shared-memory object this process created (and will unlink) or
attached to, mapped read-write. Put inputs in it, register it with the server once, and reuse it for
every request::

    from peregrine.client import InferenceClient, SystemSharedMemory

    with InferenceClient("127.0.0.1:8001") as client, SystemSharedMemory.create("cam0", 16 << 20) as shm:
        client.register_shared_memory(shm)
        images = shm.put(frame)                                  # copies the frame in once
        out = shm.output_at(offset=images.byte_size)             # the rest of the region for the answer
        result = client.infer("yolov8n", {"images": images}, outputs_to_shm={"output0": out})
        client.unregister_system_shared_memory(shm.name)

Needs only NumPy and the standard library. The server must be able to open the object: run it as the
same user (objects are created with mode 0o600) or pass another ``mode``.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .tensors import NUMPY_OF, SharedMemoryInput, SharedMemoryOutput, datatype_of, decode_bytes, encode_bytes

# How long a client's or a region's close() waits for each unregistration it makes on the way out.
CLEANUP_DEADLINE_S = 2.0

SHM_DIR = Path("/dev/shm")


def default_key(name: str) -> str:
    """A fresh key for region ``name``: ``/peregrine_<name>_<pid>_<random>`` (unsafe characters become '_')."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:100]
    return f"/peregrine_{safe}_{os.getpid()}_{secrets.token_hex(4)}"


def _path(key: str) -> Path:
    name = key[1:] if key.startswith("/") else key
    if not name or "/" in name or ".." in name or "\0" in name:
        raise ValueError(f"key: expected '/' followed by a name without '/' or '..', got {key!r}")
    return SHM_DIR / name


class SystemSharedMemory:
    """A POSIX shared-memory object mapped into this process: ``byte_size`` bytes under ``key``, known to
    the server as region ``name`` once registered. Use :meth:`create` or :meth:`attach`; ``close()`` (or
    ``with``) unmaps it and, for an object this process created, unlinks it."""

    def __init__(self, name: str, key: str, mapping: mmap.mmap, owner: bool) -> None:
        self.name = name
        self.key = key
        self.byte_size = len(mapping)
        self.owner = owner
        self._mmap = mapping
        # Clients that registered this region (by their id): close() unregisters it from each, so a region
        # left behind by a program that failed half-way does not make its next run fail with ALREADY_EXISTS.
        self._close_hooks: dict[int, Callable[[], None]] = {}

    @classmethod
    def create(cls, name: str, byte_size: int, *, key: str | None = None, mode: int = 0o600) -> SystemSharedMemory:
        """Create a new object of ``byte_size`` bytes (zero-filled) under ``key`` (default: a fresh one).

        Raises ValueError for a bad size or key, FileExistsError when ``key`` exists, OSError otherwise."""
        if byte_size <= 0:
            raise ValueError(f"byte_size: expected a positive number of bytes, got {byte_size}")
        key = key or default_key(name)
        path = _path(key)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            os.ftruncate(fd, byte_size)
            mapping = mmap.mmap(fd, byte_size)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        return cls(name, key, mapping, owner=True)

    @classmethod
    def attach(cls, name: str, key: str) -> SystemSharedMemory:
        """Map an existing object (made by another process); ``close()`` leaves it in place.

        Raises FileNotFoundError when there is none, ValueError for a bad key or an empty object."""
        fd = os.open(_path(key), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                raise ValueError(f"shared-memory object {key!r} is empty")
            mapping = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        return cls(name, key, mapping, owner=False)

    # -- data ------------------------------------------------------------------------------------
    def _check(self, offset: int, nbytes: int) -> None:
        if offset < 0 or offset + nbytes > self.byte_size:
            raise ValueError(f"region '{self.name}': bytes [{offset}, {offset + nbytes}) do not fit in its "
                             f"{self.byte_size} bytes")

    def view(self, dtype: Any, shape: tuple[int, ...] | list[int], offset: int = 0) -> np.ndarray:
        """A writable NumPy view of the region: fill it in place (a camera writing its frame) and send it with
        :meth:`input_at`. Raises ValueError when it does not fit."""
        dt = np.dtype(dtype)
        count = math.prod(shape)
        self._check(offset, count * dt.itemsize)
        return np.frombuffer(self._mmap, dt, count, offset).reshape(tuple(shape))

    def put(self, array: np.ndarray, offset: int = 0) -> SharedMemoryInput:
        """Copy ``array`` into the region at ``offset`` (BYTES arrays in the protocol's serialized form) and
        return the input that names it. Raises ValueError when it does not fit or has no OIP datatype."""
        array = np.asarray(array)
        datatype = datatype_of(array)
        if datatype == "BYTES":
            data = encode_bytes(array)
            self._check(offset, len(data))
            self._mmap[offset : offset + len(data)] = data
            nbytes = len(data)
        else:
            src = np.ascontiguousarray(array, dtype=NUMPY_OF[datatype])
            nbytes = src.nbytes
            self._check(offset, nbytes)
            np.frombuffer(self._mmap, np.uint8, nbytes, offset)[:] = src.reshape(-1).view(np.uint8)
        return SharedMemoryInput(self.name, datatype, tuple(array.shape), offset, nbytes)

    def input_at(self, datatype: str, shape: tuple[int, ...] | list[int], offset: int = 0,
                 byte_size: int | None = None) -> SharedMemoryInput:
        """The input whose data already sits at ``offset`` (written with :meth:`view`). ``byte_size`` is
        needed only for BYTES (its serialized length). Raises ValueError when it does not fit."""
        if datatype not in NUMPY_OF:
            raise ValueError(f"datatype: expected one of {', '.join(NUMPY_OF)}, got '{datatype}'")
        if byte_size is None:
            if datatype == "BYTES":
                raise ValueError("byte_size: a BYTES input needs its serialized size")
            byte_size = math.prod(shape) * NUMPY_OF[datatype].itemsize
        self._check(offset, byte_size)
        return SharedMemoryInput(self.name, datatype, tuple(shape), offset, byte_size)

    def output_at(self, offset: int = 0, byte_size: int | None = None) -> SharedMemoryOutput:
        """Room for one output: ``byte_size`` bytes at ``offset`` (default: to the end of the region)."""
        if byte_size is None:
            byte_size = self.byte_size - offset
        self._check(offset, byte_size)
        return SharedMemoryOutput(self, offset, byte_size)

    def read(self, datatype: str, shape: tuple[int, ...] | list[int], offset: int = 0,
             byte_size: int | None = None) -> np.ndarray:
        """A tensor stored in the region. Numeric datatypes come back as a view of the region (no copy: the
        next request that writes there changes it; ``.copy()`` to keep it), BYTES as an object array of
        ``bytes`` decoded from ``byte_size`` bytes (default: to the end of the region)."""
        shape = tuple(int(d) for d in shape)
        if datatype == "BYTES":
            end = self.byte_size if byte_size is None else offset + byte_size
            self._check(offset, end - offset)
            return decode_bytes(memoryview(self._mmap)[offset:end], shape, exact=byte_size is not None)
        return self.view(NUMPY_OF[datatype], shape, offset)

    # -- lifetime --------------------------------------------------------------------------------
    def _add_close_hook(self, owner: object, hook: Callable[[], None]) -> None:
        self._close_hooks[id(owner)] = hook

    def _remove_close_hook(self, owner: object) -> None:
        self._close_hooks.pop(id(owner), None)

    def close(self) -> None:
        """Unregister the region from every client that registered it with ``register_shared_memory`` and is
        still open (best effort: a server that cannot be reached is not an error), unmap it (views still alive
        keep the mapping until they are gone) and, when this process created the object, unlink it.
        Idempotent."""
        hooks, self._close_hooks = list(self._close_hooks.values()), {}
        for hook in hooks:
            hook()
        if self.owner:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(_path(self.key))
            self.owner = False
        # While NumPy views are alive the mapping stays; it goes with the last of them.
        with contextlib.suppress(BufferError):
            self._mmap.close()

    def __enter__(self) -> SystemSharedMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SystemSharedMemory(name={self.name!r}, key={self.key!r}, byte_size={self.byte_size})"
