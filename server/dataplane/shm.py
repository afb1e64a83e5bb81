"""Shared-memory regions that clients register: Triton's system and CUDA shared-memory extension.

A client puts tensors in memory it shares with the server and registers that memory under a region name;
requests then name the region (with an offset and a byte size) instead of carrying the bytes.

- **System regions** are POSIX shared-memory objects, ``/dev/shm/<key>``, mapped once at registration.
  Inputs are NumPy views of the mapping (no copy); outputs are written through the object's file
  descriptor (``pwrite``), never through the mapping.
- **CUDA regions** are ``cudaIpcMemHandle_t`` handles, opened once with CuPy's runtime IPC API; inputs are
  CuPy arrays over the device pointer (fed to ONNX Runtime's IO binding), outputs are copied into it.

Lifetime: a request takes a lease on each region it names (:class:`RequestRegions`) and gives it back
once answered. Unregistering removes the name at once (new requests can no longer use it, the name can be
registered again) and unmaps the memory when the last lease is returned. Arrays that outlive their request
(a finished request still referenced by the scheduler, or a cancelled one still running) never point into
freed memory: a system region whose views are still alive has its range replaced by private zero pages,
released when the last view is gone; a CUDA region stays open until then. ``close()`` at shutdown unmaps
everything.

Truncated objects (SIGBUS). The client owns the object and may shrink it at any time (``ftruncate``); a
read or write of a mapped page past the object's end is a SIGBUS, which kills the process. So every use
checks first that the object still covers the region: ``fstat`` on the region's own file descriptor when a
request takes its lease (while decoding, before any byte is read) and again right before an output is
written, and answers INVALID_ARGUMENT naming the region, its registered size and the object's size now.
The descriptor is the mapped object itself, so an object unlinked and re-created under the same key does
not fool the check (the region stays the object that was registered, as in Triton: re-register to follow
the new one). What remains:

- outputs: none. They are written with ``pwrite`` after the check; a file write past the end never
  faults (if the client truncates in between, the write extends the object again, the client's doing).
- inputs: between the lease (decode) and the moment the model has read the view (validation, queueing,
  the run) the client may still shrink the object. Every system mapping is guarded by the native kernels'
  SIGBUS guard (``kernels/src/cpu/mapping_guard.cpp``): a fault inside it replaces the whole mapping with
  private zero pages and flags it, the read resumes on zeros, and the request (every request that read
  the region) answers INVALID_ARGUMENT once the model has run (:meth:`RequestRegions.verify_inputs`); the
  region refuses further use until it is registered again. Without the native module there is no guard,
  and inputs are copied out of the region with ``pread`` instead (no zero copy, no fault). The guard
  chains to the SIGBUS handler installed before it; a handler installed after it (``faulthandler.enable()``
  called later) takes its place.

Bounds: at most ``max_regions`` regions (both kinds, counting unregistered ones still in use), and never
more than half the process's open-file limit, RESOURCE_EXHAUSTED beyond; region names of at most
:data:`MAX_NAME_CHARS` characters; client strings in messages clipped to 256 characters.

File descriptors: a system region keeps exactly one, the one it was opened with (the mapping is made with
libc's ``mmap``, not Python's, which would keep a second, duplicated one). It is kept because the checks
above need it: ``fstat`` on a descriptor of the mapped object is the only way to learn its size now (the
key may name another object by then), and outputs are written through it. It is closed when the region is
released (unregistered and no request using it, or shutdown) and on every failed registration.

Region names share one namespace across system and CUDA regions (as in Triton). This module knows
nothing of gRPC or protobuf: errors are :mod:`peregrine.server.core.errors` classes.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import logging
import mmap
import os
import resource
import stat
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ... import kernels
from ..core.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
    clipped,
)

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
CUDA_IPC_HANDLE_BYTES = 64
_NAME_MAX = 255
MAX_NAME_CHARS = 256  # a region name's length; the registry holds at most max_regions of them
DEFAULT_MAX_REGIONS = 1024  # ServerConfig.max_shm_regions, --max-shm-regions
NO_CUDA_MESSAGE = "CUDA shared memory needs a GPU and CuPy; this server has none"

Kind = Literal["system", "cuda"]


@dataclass(frozen=True)
class RegionStatus:
    """One registered region as the status calls report it. ``key``/``offset`` for system regions,
    ``device_id`` for CUDA regions; sizes in bytes."""

    name: str
    kind: Kind
    byte_size: int
    key: str = ""
    offset: int = 0
    device_id: int = 0


def shm_path(key: str) -> Path:
    """The file behind a POSIX shared-memory key: ``/name`` (or ``name``) is ``/dev/shm/name``.

    Raises InvalidArgument for a key that is empty, holds '/' beyond the leading one, '..' or NUL, or
    is longer than a file name may be."""
    name = key[1:] if key.startswith("/") else key
    if not name or "/" in name or ".." in name or "\0" in name or len(name.encode()) > _NAME_MAX:
        raise InvalidArgument(
            f"key: expected a POSIX shared-memory key, '/' and a name without '/' or '..' "
            f"(at most {_NAME_MAX} bytes), got {clipped(repr(key))}"
        )
    return SHM_DIR / name


class _Region:
    """Base of a registered region: its name, size, the leases requests hold on it and the arrays that
    still point into it. Counters change under the registry's lock."""

    kind: Kind

    def __init__(self, name: str, byte_size: int, lock: threading.RLock) -> None:
        self.name = name
        self.byte_size = byte_size
        self.leases = 0  # requests that may still read or write the region
        self.views = 0  # arrays (and their derived views) still alive
        self.retired = False  # unregistered: closed once nothing uses it
        self._lock = lock

    def status(self) -> RegionStatus:
        raise NotImplementedError

    def view(self, offset: int, byte_size: int, writable: bool) -> Any:
        """Bytes ``[offset, offset + byte_size)`` as a uint8 array (bounds already checked)."""
        raise NotImplementedError

    def check(self, what: str) -> None:
        """Raise when the memory behind the region can no longer be used (see :meth:`SystemRegion.check`)."""

    def close(self) -> bool:
        """Called once retired with no leases: release the memory. True when nothing is left to do."""
        raise NotImplementedError

    def _view_dropped(self) -> None:
        with self._lock:
            self.views -= 1
            if self.retired and self.views == 0:
                self._views_gone()

    def _views_gone(self) -> None:
        """The last array into a retired region is gone."""

    def _track(self, owner: object) -> None:
        self.views += 1
        weakref.finalize(owner, self._view_dropped)

    @property
    def mapped(self) -> bool:
        """The client's memory is still mapped (or open) in this process."""
        raise NotImplementedError


class _HostBytes:
    """The owner of one NumPy view into a mapped region: NumPy reads the address from
    ``__array_interface__`` and keeps this object as the array's base, so it lives exactly as long as the
    array and every view derived from it."""

    __slots__ = ("__array_interface__", "__weakref__")

    def __init__(self, address: int, size: int, readonly: bool) -> None:
        self.__array_interface__ = {"data": (address, readonly), "shape": (size,), "typestr": "|u1", "version": 3}


class _Owner:
    """The owner of one CuPy view's memory (see :class:`_HostBytes`)."""

    __slots__ = ("__weakref__",)


# Linux mmap flags that Python's mmap module does not name.
_MAP_FIXED = 0x10
_MAP_NORESERVE = 0x4000
_MAP_FAILED = ctypes.c_void_p(-1).value
_PROT_RW = mmap.PROT_READ | mmap.PROT_WRITE
_libc: Any = None


def _c() -> Any:
    """libc's mmap and munmap (Python's mmap module keeps a duplicate of the file descriptor per mapping)."""
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.mmap.restype = ctypes.c_void_p
        lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                             ctypes.c_long]
        lib.munmap.restype = ctypes.c_int
        lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        _libc = lib
    return _libc


def _map_shared(fd: int, length: int, offset: int) -> int:
    """Map ``length`` bytes of ``fd`` from ``offset`` (page-aligned) shared and read-write; the address."""
    got = _c().mmap(None, length, _PROT_RW, mmap.MAP_SHARED, fd, offset)
    if got is None or got == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(got)


def _placeholder(address: int, length: int) -> None:
    """Replace ``[address, address + length)`` with private, zero-filled pages in one step (MAP_FIXED): the
    shared object is released, an array still pointing there reads zeros instead of faulting."""
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_FIXED | _MAP_NORESERVE
    got = _c().mmap(address, length, _PROT_RW, flags, -1, 0)
    if got != address:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap(MAP_FIXED) over a shared-memory region: {os.strerror(err)}")


def _guard_mapping(address: int, length: int) -> int | None:
    """Guard a new mapping against SIGBUS (the native kernels' guard), or None without the native module."""
    try:
        return kernels.guard_mapping(address, length)
    except Exception as e:  # the guard is a defence, not a requirement: reads become copies
        log.warning("shared memory: no SIGBUS guard (%s); inputs are copied out of regions", e)
        return None


def _open_object(path: Path, key: str) -> int:
    """A read-write descriptor of the shared-memory object at ``path`` (``key`` as the client gave it)."""
    shown = clipped(repr(key))
    try:
        # O_NOFOLLOW as glibc's shm_open: /dev/shm is world-writable, a planted symlink must not be followed.
        return os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"key: no shared-memory object {shown} ({path} does not exist); "
                       "create it before registering the region") from None
    except PermissionError:
        raise PermissionDenied(f"key: the server may not open {shown} ({path}) for reading and writing") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InvalidArgument(f"key: {path} is a symbolic link, expected a shared-memory object") from None
        if e.errno in (errno.EMFILE, errno.ENFILE):
            raise ResourceExhausted(f"key: the server has no file descriptor left to open {shown} "
                                    f"({e.strerror}); unregister regions that are no longer used") from None
        raise InvalidArgument(f"key: cannot open {shown}: {e.strerror}") from None


class SystemRegion(_Region):
    """``byte_size`` bytes at ``offset`` of the POSIX shared-memory object ``key``, mapped read-write.

    Holds the object's file descriptor until released: every use checks the object's size on it first
    (:meth:`check`), and outputs are written through it (:meth:`write`)."""

    kind: Kind = "system"

    def __init__(self, name: str, key: str, offset: int, byte_size: int, lock: threading.RLock) -> None:
        super().__init__(name, byte_size, lock)
        self.key = key
        self.offset = offset
        path = shm_path(key)
        fd = _open_object(path, key)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise InvalidArgument(f"key: {path} is not a shared-memory object")
            if offset + byte_size > st.st_size:
                raise InvalidArgument(
                    f"offset, byte_size: region '{clipped(name)}' asks for bytes [{offset}, {offset + byte_size}) "
                    f"of {clipped(repr(key))}, which holds {st.st_size} bytes"
                )
            # mmap offsets must be page-aligned: map from the page that holds `offset`.
            start = offset - offset % mmap.ALLOCATIONGRANULARITY
            self._length = byte_size + (offset - start)
            try:
                self._base = _map_shared(fd, self._length, start)
            except OSError as e:
                if e.errno == errno.ENOMEM:  # the process's map count or address space
                    raise ResourceExhausted(f"region '{clipped(name)}': the server cannot map {byte_size} more "
                                            f"bytes ({e.strerror})") from None
                raise InvalidArgument(f"key: cannot map {clipped(repr(key))}: {e.strerror}") from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd  # -1 once closed
        self._io = 0  # writes through the descriptor in progress (see write)
        self._address = self._base + (offset - start)
        self._shared = True  # False once the placeholder replaced the client's pages
        self._unmapped = False
        self._guard = _guard_mapping(self._base, self._length)  # None: reads are copies (see view)

    def status(self) -> RegionStatus:
        return RegionStatus(self.name, "system", self.byte_size, key=self.key, offset=self.offset)

    def view(self, offset: int, byte_size: int, writable: bool) -> np.ndarray:
        if self._guard is None:  # unguarded, a read past a shrunk object's end would kill the process
            return self._read(offset, byte_size)
        owner = _HostBytes(self._address + offset, byte_size, readonly=not writable)
        self._track(owner)
        return np.asarray(owner)

    def _read(self, offset: int, byte_size: int) -> np.ndarray:
        """A private copy of ``[offset, offset + byte_size)``, read through the descriptor (``pread`` never
        faults; a short read means the object shrank)."""
        out = np.empty(byte_size, np.uint8)
        buffer, position = memoryview(out), self.offset + offset
        while buffer:
            n = os.preadv(self._fd, [buffer], position)
            if n == 0:
                self.check("input")
                raise InvalidArgument(f"region '{clipped(self.name)}': its object shrank while it was read")
            buffer, position = buffer[n:], position + n
        out.flags.writeable = False
        return out

    @property
    def faulted(self) -> bool:
        """A read of the mapping faulted (the object shrank under it): the mapping is zero pages now."""
        return self._guard is not None and kernels.mapping_faulted(self._guard)

    def check(self, what: str) -> None:
        """Raise InvalidArgument when the object no longer covers the region: a page past its end would be a
        SIGBUS. ``fstat`` on the region's own descriptor, so a replaced object cannot fool it. Call it with
        the descriptor open (a lease held, or the registry's lock)."""
        if self.faulted:
            raise InvalidArgument(
                f"{what}: region '{clipped(self.name)}' ({clipped(repr(self.key))}) shrank while a request was "
                "reading it; the server no longer sees the object through it: unregister the region and "
                "register it again")
        size = os.fstat(self._fd).st_size
        if self.offset + self.byte_size > size:
            raise InvalidArgument(
                f"{what}: region '{clipped(self.name)}' is registered as {self.byte_size} bytes at offset "
                f"{self.offset} of {clipped(repr(self.key))}, which now holds {size} bytes (shrunk since it was "
                "registered); restore the object's size, or unregister the region and register it again"
            )

    def write(self, offset: int, data: Any, what: str) -> None:
        """Write the bytes of ``data`` (a contiguous uint8 array or bytes) at ``offset`` of the region,
        through the descriptor (``pwrite``): a write never faults, whatever the client did to the object.
        Raises InvalidArgument when the object no longer covers the region, ResourceExhausted when
        /dev/shm is full, Unavailable when the region was released meanwhile (shutdown)."""
        with self._lock:
            if self._fd < 0:
                raise Unavailable(f"{what}: region '{clipped(self.name)}' was released (the server is stopping)")
            self._io += 1
        try:
            self.check(what)
            buffer = memoryview(data).cast("B")
            position = self.offset + offset
            while buffer:
                n = os.pwrite(self._fd, buffer, position)
                buffer, position = buffer[n:], position + n
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
                raise ResourceExhausted(f"{what}: cannot write into region '{clipped(self.name)}' "
                                        f"({e.strerror})") from None
            raise
        finally:
            with self._lock:
                self._io -= 1
                if self._io == 0 and self._unmapped_or_replaced():
                    self._close_fd()

    def close(self) -> bool:
        self._unguard()
        if self.views == 0:
            self._unmap()
        elif self._shared:
            _placeholder(self._base, self._length)
        self._shared = False
        if self.views == 0:  # the last view went while the placeholder went in
            self._unmap()
        if self._io == 0:  # else the last write in progress closes it
            self._close_fd()
        return True

    def _views_gone(self) -> None:
        if not self._shared:
            self._unmap()

    def _unmapped_or_replaced(self) -> bool:
        return not self._shared or self._unmapped

    def _unguard(self) -> None:
        if self._guard is not None:
            kernels.unguard_mapping(self._guard)
            self._guard = None

    def _unmap(self) -> None:
        if not self._unmapped:
            self._unguard()
            self._unmapped = True
            _c().munmap(self._base, self._length)

    def _close_fd(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    @property
    def mapped(self) -> bool:
        return self._shared and not self._unmapped


class CudaRegion(_Region):
    """A device allocation of another process, opened from its ``cudaIpcMemHandle_t`` on ``device_id``.
    Closed when retired with no leases and no CuPy array over it left."""

    kind: Kind = "cuda"

    def __init__(self, name: str, raw_handle: bytes, device_id: int, byte_size: int, lock: threading.RLock) -> None:
        super().__init__(name, byte_size, lock)
        cp = _cupy()
        self.device_id = device_id
        if len(raw_handle) != CUDA_IPC_HANDLE_BYTES:
            raise InvalidArgument(f"raw_handle: expected a {CUDA_IPC_HANDLE_BYTES}-byte cudaIpcMemHandle_t, "
                                  f"got {len(raw_handle)} bytes")
        count = cp.cuda.runtime.getDeviceCount()
        if not 0 <= device_id < count:
            raise InvalidArgument(f"device_id: expected a GPU index in 0..{count - 1}, got {device_id}")
        with cp.cuda.Device(device_id):
            try:
                self.ptr = int(cp.cuda.runtime.ipcOpenMemHandle(bytes(raw_handle)))
            except cp.cuda.runtime.CUDARuntimeError as e:
                raise InvalidArgument(f"raw_handle: CUDA could not open the IPC handle on device {device_id} ({e}); "
                                      "a handle opens only in a process other than the one that made it") from None
            available = _bytes_after(self.ptr)
            if available is not None and byte_size > available:
                cp.cuda.runtime.ipcCloseMemHandle(self.ptr)
                raise InvalidArgument(f"byte_size: region '{name}' asks for {byte_size} bytes, the CUDA allocation "
                                      f"behind the handle has {available}")
        self._open = True

    def status(self) -> RegionStatus:
        return RegionStatus(self.name, "cuda", self.byte_size, device_id=self.device_id)

    def view(self, offset: int, byte_size: int, writable: bool) -> Any:
        cp = _cupy()
        owner = _Owner()
        self._track(owner)
        mem = cp.cuda.UnownedMemory(self.ptr + offset, byte_size, owner=owner, device_id=self.device_id)
        return cp.ndarray((byte_size,), cp.uint8, memptr=cp.cuda.MemoryPointer(mem, 0))

    def close(self) -> bool:
        if self.views:
            return False  # _views_gone closes it
        self._ipc_close()
        return True

    def _views_gone(self) -> None:
        if self.leases == 0:
            self._ipc_close()

    def _ipc_close(self) -> None:
        if self._open:
            self._open = False  # closed once, whatever CUDA says: a failed close is not retried forever
            cp = _cupy()
            try:
                with cp.cuda.Device(self.device_id):
                    cp.cuda.runtime.ipcCloseMemHandle(self.ptr)
            except Exception as e:  # a sticky CUDA error or shutdown: the mapping goes with the process
                log.warning("CUDA shared-memory region '%s': closing its IPC handle failed: %s", self.name, e)

    @property
    def mapped(self) -> bool:
        return self._open


# -- CUDA plumbing (CuPy is imported only when a CUDA call comes) -----------------------------------
_cuda_state: dict[str, Any] = {}


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one GPU (checked once)."""
    if "available" not in _cuda_state:
        try:
            import cupy

            _cuda_state["available"] = cupy.cuda.runtime.getDeviceCount() > 0
        except Exception as e:  # no CuPy, no driver, no device
            log.debug("CUDA shared memory unavailable: %s", e)
            _cuda_state["available"] = False
    return bool(_cuda_state["available"])


def _cupy() -> Any:
    if not cuda_available():
        raise Unavailable(NO_CUDA_MESSAGE)
    import cupy

    return cupy


def _bytes_after(ptr: int) -> int | None:
    """Bytes from ``ptr`` to the end of its CUDA allocation (the driver's cuMemGetAddressRange), or None
    when the driver API cannot be reached. CuPy's runtime has no wrapper for it."""
    try:
        lib = _cuda_state.get("libcuda") or ctypes.CDLL("libcuda.so.1")
        _cuda_state["libcuda"] = lib
        fn = lib.cuMemGetAddressRange_v2
    except (OSError, AttributeError):
        return None
    base, size = ctypes.c_uint64(), ctypes.c_size_t()
    fn.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_size_t), ctypes.c_uint64]
    if fn(ctypes.byref(base), ctypes.byref(size), ctypes.c_uint64(ptr)) != 0:
        return None
    return int(base.value + size.value - ptr)


def to_host(memory: Any) -> np.ndarray:
    """A host array with the contents of ``memory`` (itself when it already is one; a copy of a device array)."""
    if hasattr(memory, "__cuda_array_interface__"):
        return _cupy().asnumpy(memory)
    return np.asarray(memory)


# -- the registry ----------------------------------------------------------------------------------
class SharedMemoryRegistry:
    """The regions registered with one server, by name. Thread-safe.

    ``allowed_key_prefixes``: when not empty, only keys whose name (without the leading '/') starts with
    one of these may be registered (PERMISSION_DENIED otherwise). ``enabled`` False turns the extension
    off: every call answers UNIMPLEMENTED. ``max_regions``: the most regions (system and CUDA together)
    held at once, RESOURCE_EXHAUSTED beyond; lowered to half the open-file limit where that is smaller,
    since each system region holds a file descriptor. Raises ValueError for a bad prefix or bound."""

    def __init__(self, allowed_key_prefixes: Sequence[str] = (), enabled: bool = True,
                 max_regions: int = DEFAULT_MAX_REGIONS) -> None:
        self.allowed_key_prefixes = tuple(p.lstrip("/") for p in allowed_key_prefixes)
        for p in self.allowed_key_prefixes:
            if not p or "/" in p or ".." in p:
                raise ValueError(f"shared-memory key prefix {p!r}: expected a non-empty name without '/' or '..'")
        if max_regions < 1:
            raise ValueError(f"max_shm_regions: expected at least 1 region, got {max_regions} "
                             "(turn shared memory off with --no-shared-memory instead)")
        self.enabled = enabled
        self.max_regions = max_regions
        self._regions: dict[str, _Region] = {}
        self._retiring: list[_Region] = []  # unregistered, still leased by requests in flight
        # Reentrant: a view's finalizer (which takes the lock) may run inside a locked section, whenever an
        # allocation there frees the last reference to an array.
        self._lock = threading.RLock()
        self._closed = False

    # -- registration --------------------------------------------------------------------------
    def _check_enabled(self) -> None:
        if not self.enabled:
            raise Unimplemented("shared memory is turned off on this server (started with --no-shared-memory)")
        if self._closed:
            raise Unavailable("the server is shutting down")

    def _check_new_name(self, name: str) -> None:
        """Checks before a registration, with the lock held: the name, then the bound on regions."""
        if not name:
            raise InvalidArgument("name: expected a region name, got an empty string")
        if len(name) > MAX_NAME_CHARS:
            raise InvalidArgument(f"name: expected at most {MAX_NAME_CHARS} characters, got {len(name)}: "
                                  f"'{clipped(name)}'")
        if name in self._regions:
            raise AlreadyExists(f"name: a {self._regions[name].kind} shared-memory region '{name}' is already "
                                "registered; unregister it first or choose another name")
        held = len(self._regions) + len(self._retiring)
        limit, why = self.region_limit()
        if held >= limit:
            raise ResourceExhausted(
                f"name: cannot register region '{name}': this server holds {held} shared-memory regions, the "
                f"most it allows ({why}); unregister regions that are no longer used"
            )

    def region_limit(self) -> tuple[int, str]:
        """The most regions held at once, and where that bound comes from (for messages): ``max_regions``,
        or half the process's open-file limit (read now: it may change) where that is smaller."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft // 2 < self.max_regions:
            return max(1, soft // 2), (f"--max-shm-regions {self.max_regions}, lowered to half of the open-file "
                                       f"limit {soft}")
        return self.max_regions, f"--max-shm-regions {self.max_regions}"

    def register_system(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Map ``byte_size`` bytes at ``offset`` of the POSIX shared-memory object ``key`` as region ``name``.

        Raises InvalidArgument (empty name, bad key, zero size, out of bounds), AlreadyExists (name taken),
        NotFound (no such object), PermissionDenied (key outside the allowed prefixes, or not openable)."""
        self._check_enabled()
        path = shm_path(key)
        if self.allowed_key_prefixes and not path.name.startswith(self.allowed_key_prefixes):
            raise PermissionDenied(
                f"key: this server accepts only keys starting with "
                f"{', '.join(repr('/' + p) for p in self.allowed_key_prefixes)}, got {clipped(repr(key))}"
            )
        if byte_size <= 0:
            raise InvalidArgument(f"byte_size: expected a positive number of bytes, got {byte_size}")
        with self._lock:
            self._reap()
            self._check_new_name(name)
            # Mapping under the lock keeps two registrations of one name from both succeeding.
            self._regions[name] = SystemRegion(name, key, offset, byte_size, self._lock)

    def register_cuda(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        """Open a CUDA IPC handle on ``device_id`` as region ``name`` of ``byte_size`` bytes.

        Raises Unavailable where there is no GPU or CuPy, InvalidArgument for a bad handle, device or size,
        AlreadyExists for a name that is taken."""
        self._check_enabled()
        _cupy()
        if byte_size <= 0:
            raise InvalidArgument(f"byte_size: expected a positive number of bytes, got {byte_size}")
        with self._lock:
            self._reap()
            self._check_new_name(name)
            self._regions[name] = CudaRegion(name, raw_handle, device_id, byte_size, self._lock)

    def unregister(self, kind: Kind, name: str = "") -> None:
        """Unregister region ``name`` of ``kind``, or every region of ``kind`` when ``name`` is empty. A name
        that is not registered (as this kind) is not an error, as in Triton. The memory is unmapped once
        no request uses it. Without a GPU there are no CUDA regions, so unregistering them all is a success, as
        in Triton (clients do it "to be safe" before they start)."""
        self._check_enabled()
        with self._lock:
            names = [n for n, r in self._regions.items() if r.kind == kind and (not name or n == name)]
            for n in names:
                region = self._regions.pop(n)
                region.retired = True
                self._retiring.append(region)
            self._reap()

    def status(self, kind: Kind, name: str = "") -> list[RegionStatus]:
        """The regions of ``kind`` (all, or the one called ``name``). Raises NotFound for an unknown name.
        Asking about CUDA regions works without a GPU, as in Triton: there are none."""
        self._check_enabled()
        with self._lock:
            self._reap()
            if not name:
                return [r.status() for r in self._regions.values() if r.kind == kind]
            region = self._regions.get(name)
            if region is None:
                raise NotFound(f"name: no {kind} shared-memory region '{clipped(name)}' is registered")
            if region.kind != kind:
                raise NotFound(f"name: region '{name}' is registered as {region.kind} shared memory, not {kind}")
            return [region.status()]

    # -- use by requests -------------------------------------------------------------------------
    def lease(self, name: str, offset: int, byte_size: int, what: str, writable: bool = False) -> tuple[_Region, Any]:
        """Take a lease on region ``name`` and return it with a uint8 view of ``[offset, offset + byte_size)``
        (read-only unless ``writable``; None for a writable system slice: outputs go through
        :meth:`SystemRegion.write`, never through the mapping). ``what`` names the tensor for messages.
        Raises NotFound for an unknown region, InvalidArgument for a slice outside it or a region whose
        object no longer covers it. Give the lease back with :meth:`release`."""
        if not self.enabled:
            raise NotFound(f"{what}: shared_memory_region '{clipped(name)}' is not registered "
                           "(shared memory is turned off)")
        with self._lock:
            region = self._regions.get(name)
            if region is None:
                raise NotFound(f"{what}: shared_memory_region '{clipped(name)}' is not registered")
            if offset < 0 or byte_size < 0 or offset + byte_size > region.byte_size:
                raise InvalidArgument(
                    f"{what}: shared_memory_offset {offset} + shared_memory_byte_size {byte_size} is outside "
                    f"region '{name}' ({region.byte_size} bytes)"
                )
            region.check(what)  # before any byte of the mapping is touched
            view = None if writable and region.kind == "system" else region.view(offset, byte_size, writable)
            region.leases += 1
        return region, view

    def release(self, regions: Sequence[_Region]) -> None:
        """Give back leases taken with :meth:`lease`; unmaps retired regions that nothing uses any more."""
        with self._lock:
            for r in regions:
                r.leases -= 1
            if self._retiring:
                self._reap()

    def use(self) -> RequestRegions:
        """A new, empty set of leases for one request."""
        return RequestRegions(self)

    def _reap(self) -> None:
        """Close retired regions with no leases (called with the lock held)."""
        keep = []
        for r in self._retiring:
            if r.leases > 0 or not r.close():
                keep.append(r)
        self._retiring = keep

    # -- introspection and shutdown --------------------------------------------------------------
    def mapped(self) -> list[RegionStatus]:
        """Every region whose client memory is still mapped (or open) here: the registered ones and those
        unregistered while requests were using them."""
        with self._lock:
            self._reap()
            return [r.status() for r in [*self._regions.values(), *self._retiring] if r.mapped]

    def close(self) -> None:
        """Unregister everything and release the clients' memory (server shutdown, after the last request).
        New registrations answer UNAVAILABLE from now on."""
        gc.collect()  # arrays held only by reference cycles (tracebacks) go first, so their ranges unmap
        with self._lock:
            self._closed = True
            for region in self._regions.values():
                region.retired = True
                self._retiring.append(region)
            self._regions.clear()
            for r in self._retiring:
                r.leases = 0  # nothing runs any more: the server has stopped
            self._reap()
            for r in self._retiring:  # CUDA regions with arrays still alive
                log.warning("CUDA shared-memory region '%s' is still referenced at shutdown; left open", r.name)


class RequestRegions:
    """The shared-memory regions one request reads inputs from and writes outputs to.

    The codecs fill it while decoding (``input``/``output``) and write outputs at encoding; the transport
    calls :meth:`release` when the request is answered. Leases not released are given back when this
    object is garbage-collected."""

    def __init__(self, registry: SharedMemoryRegistry) -> None:
        self.registry = registry
        self.outputs: dict[str, OutputTarget] = {}
        self._leased: list[_Region] = []
        self._inputs: list[tuple[_Region, str]] = []  # regions inputs were read from, with the tensor's name
        self._finalizer: weakref.finalize | None = None  # made with the first lease: most requests take none

    def _hold(self, region: _Region) -> None:
        if self._finalizer is None:
            self._finalizer = weakref.finalize(self, self.registry.release, self._leased)
        self._leased.append(region)

    def input(self, region: str, offset: int, byte_size: int, what: str) -> Any:
        """The bytes of an input: a uint8 NumPy view of a system region (no copy) or a uint8 CuPy array over a
        CUDA region. Raises NotFound/InvalidArgument (see :meth:`SharedMemoryRegistry.lease`)."""
        r, view = self.registry.lease(region, offset, byte_size, what)
        self._hold(r)
        self._inputs.append((r, what))
        return view

    def verify_inputs(self) -> None:
        """Raise InvalidArgument when a region an input was read from (without a copy) faulted while the
        request used it: the model read zeros there (the object shrank under the mapping; see the module's
        docstring). Call it once the model has run, before answering."""
        for r, what in self._inputs:
            if isinstance(r, SystemRegion) and r.faulted:
                r.check(what)

    def output(self, tensor: str, region: str, offset: int, byte_size: int) -> OutputTarget:
        """Reserve ``[offset, offset + byte_size)`` of ``region`` for output ``tensor``."""
        r, view = self.registry.lease(region, offset, byte_size, f"output '{clipped(tensor)}'", writable=True)
        self._hold(r)
        target = OutputTarget(tensor, region, offset, byte_size, view, r.kind, r)
        self.outputs[tensor] = target
        return target

    def release(self) -> None:
        """Give the leases back (idempotent)."""
        if self._finalizer is not None:
            self._finalizer()


@dataclass
class OutputTarget:
    """Where one requested output goes: ``byte_size`` bytes at ``offset`` of ``region``."""

    tensor: str
    region: str
    offset: int
    byte_size: int
    view: Any  # uint8 CuPy array of exactly byte_size bytes (CUDA); None for a system region (see write)
    kind: Kind
    leased: _Region | None = None  # the region itself, leased by the request

    def check_fits(self, nbytes: int, described: str) -> None:
        """Raise InvalidArgument when ``nbytes`` do not fit; ``described`` says what the output is."""
        if nbytes > self.byte_size:
            raise InvalidArgument(
                f"output '{clipped(self.tensor)}': {described} needs {nbytes} bytes, shared_memory_byte_size of "
                f"region '{clipped(self.region)}' is {self.byte_size}"
            )

    def write(self, data: np.ndarray | bytes | Any) -> int:
        """Copy ``data`` (a contiguous array, host or device, or serialized bytes) to the start of the slice;
        returns the number of bytes written. The caller has checked that it fits. Raises InvalidArgument
        when a system region's object no longer covers the region (see :meth:`SystemRegion.write`)."""
        if isinstance(data, bytes | bytearray):
            src: Any = np.frombuffer(data, np.uint8)
        else:
            src = data.reshape(-1).view(np.uint8)
        n = int(src.size)
        if self.kind == "system":
            if hasattr(src, "__cuda_array_interface__"):
                src = to_host(src)
            assert isinstance(self.leased, SystemRegion)
            self.leased.write(self.offset, np.ascontiguousarray(src), f"output '{clipped(self.tensor)}'")
            return n
        cp = _cupy()
        with cp.cuda.Device(self.view.device.id):
            if hasattr(src, "__cuda_array_interface__"):
                self.view[:n] = src
            else:
                self.view[:n].set(np.ascontiguousarray(src))
            # The client reads the region once the answer arrives, in another process: finish the copy first.
            cp.cuda.get_current_stream().synchronize()
        return n
