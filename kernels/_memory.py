"""The SIGBUS guard for shared mappings (native tier only; ``src/cpu/mapping_guard.cpp``).

A process that owns a shared-memory object may shrink it while this process reads its mapping; the read
past the object's new end is a SIGBUS, which kills the process. A guarded mapping turns the fault into
zero pages and a flag: the reader finishes on zeros and the caller, checking :func:`mapping_faulted` once
it is done, fails only the work that read the mapping. Without the native module there is no guard
(:func:`guard_mapping` answers None) and callers copy what they read instead.
"""

from __future__ import annotations

from . import _tiers


def guard_mapping(address: int, length: int) -> int | None:
    """Guard the shared mapping ``[address, address + length)``: its slot, or None when there is no guard
    (no native module, or every one of the native table's slots is taken)."""
    native = _tiers._native
    if native is None:
        return None
    slot = int(native.guard_mapping(address, length))
    return slot if slot >= 0 else None


def mapping_faulted(slot: int) -> bool:
    """Whether the mapping guarded in ``slot`` faulted: it is now private zero pages, not the object."""
    return bool(_tiers._native.mapping_faulted(slot))


def unguard_mapping(slot: int) -> None:
    """Stop guarding ``slot`` (before its mapping is unmapped)."""
    _tiers._native.unguard_mapping(slot)
