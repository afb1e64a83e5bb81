"""The response cache (Triton's ``response_cache``): answers of identical requests, bounded by bytes.

A model opts in (``response_cache = true`` in config.toml, ``response_cache { enable: true }`` in
config.pbtxt); the server gives the cache its size (``--response-cache-bytes``, 0 turns it off). The key is
a 128-bit XXH3 hash of everything that decides the answer: the model's name and version, each input's
name, datatype, shape and bytes, the requested outputs and the request's parameters other than those that
only schedule it (``priority``, ``timeout``). A hit answers at once, without queueing or running anything;
only successful answers are stored, and an answer larger than the whole cache is not.

Eviction is least recently used, by bytes: the sum of the stored answers' tensor bytes never exceeds the
bound, whatever the churn. Stored arrays are made read-only, so no later code can change a cached answer.

Requests use it on the server's event loop; a model's unload (another thread) drops its answers: one
uncontended lock guards the entries.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import xxhash

from ..core.types import InferRequest, InferResponse

# Parameters that choose when a request runs, not what it answers: not part of the key.
SCHEDULING_PARAMETERS = frozenset({"priority", "timeout"})
# What one entry costs beyond its tensors' bytes (key, dict slot, response object): counted in the bound.
ENTRY_OVERHEAD = 256


@dataclass
class CacheCounters:
    hits: int = 0
    misses: int = 0
    inserts: int = 0
    evictions: int = 0


class ResponseCache:
    """A byte-bounded LRU of InferResponses keyed by :func:`request_key`."""

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"response cache size: expected >= 0 bytes, got {capacity_bytes}")
        self.capacity = capacity_bytes
        self.used = 0
        self.counters = CacheCounters()
        self._entries: OrderedDict[bytes, tuple[InferResponse, int]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, request_id: str) -> InferResponse | None:
        """The stored answer for ``key``, as an answer to the request ``request_id``; None on a miss."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.counters.misses += 1
                return None
            self._entries.move_to_end(key)
            self.counters.hits += 1
        return replace(entry[0], id=request_id)

    def put(self, key: bytes, response: InferResponse) -> bool:
        """Store a successful answer; False when it is larger than the whole cache (not stored)."""
        size = response_bytes(response) + ENTRY_OVERHEAD
        if size > self.capacity:
            return False
        outputs = {name: _frozen(a) for name, a in response.outputs.items()}
        stored = replace(response, outputs=outputs, id="")
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.used -= old[1]
            while self.used + size > self.capacity:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.used -= evicted
                self.counters.evictions += 1
            self._entries[key] = (stored, size)
            self.used += size
            self.counters.inserts += 1
        return True

    def drop_model(self, name: str) -> None:
        """Forget every answer of model ``name`` (it was unloaded or reloaded)."""
        with self._lock:
            for key in [k for k, (r, _) in self._entries.items() if r.model_name == name]:
                self.used -= self._entries.pop(key)[1]


def request_key(model_name: str, version: int, request: InferRequest) -> bytes:
    """The 16-byte cache key of ``request`` for version ``version`` of ``model_name``."""
    h = xxhash.xxh3_128()
    h.update(f"{len(model_name)}:{model_name}:{version}:{len(request.inputs)}".encode())
    for name in sorted(request.inputs):
        array = request.inputs[name]
        h.update(f"|{len(name)}:{name}:{array.dtype.str}:{array.shape}".encode())
        if array.dtype == object:
            for item in array.reshape(-1):
                value = item.encode("utf-8") if isinstance(item, str) else bytes(item)
                h.update(len(value).to_bytes(8, "little"))
                h.update(value)
        else:
            h.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    h.update(f"|outputs:{sorted(request.requested_outputs)!r}:{sorted(request.classification.items())!r}".encode())
    params = sorted((k, repr(v)) for k, v in request.parameters.items() if k not in SCHEDULING_PARAMETERS)
    h.update(f"|parameters:{params!r}".encode())
    return h.digest()


def response_bytes(response: InferResponse) -> int:
    """The bytes an answer's tensors hold (a BYTES tensor's elements counted by their length)."""
    total = 0
    for array in response.outputs.values():
        if array.dtype == object:
            total += sum(len(x) + 8 for x in array.reshape(-1))
        else:
            total += array.nbytes
    return total


def _frozen(array: Any) -> Any:
    """A read-only array that owns its bytes (a view of an engine's buffer may be reused)."""
    if not isinstance(array, np.ndarray):
        return array
    if array.base is not None or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array).copy()
    array.flags.writeable = False
    return array
