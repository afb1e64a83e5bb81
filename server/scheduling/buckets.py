"""Batch buckets: the few batch sizes a model executes at, so that a GPU provider sees a few shapes
instead of every size (ONNX Runtime's CUDA EP plans its convolutions again for each new shape).

A batch of n elements runs padded up to the smallest bucket >= n. Every component that needs to know
the executed size of a batch (the policy's cost model and deadline guard, the executors, statistics)
asks here.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable


def bucket_for(n: int, buckets: tuple[int, ...]) -> int:
    """The size a batch of ``n`` elements is executed at: the smallest bucket >= n, or ``n`` itself
    when there are no buckets (or none is large enough). ``buckets`` is ascending."""
    i = bisect.bisect_left(buckets, n)
    return buckets[i] if i < len(buckets) else n


def padded_size(n: int, buckets: tuple[int, ...] = (), fixed_batch: int = 0) -> int:
    """The rows a batch of ``n`` elements runs at: a multiple of the model's static batch size when it
    has one (``fixed_batch`` > 0), else its bucket."""
    if fixed_batch:
        return math.ceil(n / fixed_batch) * fixed_batch
    return bucket_for(n, buckets)


def auto_buckets(max_batch_size: int, preferred: Iterable[int] = ()) -> tuple[int, ...]:
    """The buckets of ``batch_buckets = "auto"``: powers of two up to ``max_batch_size``, the preferred
    sizes that fit, and ``max_batch_size`` itself (a request may carry that many elements), ascending."""
    sizes = {1 << k for k in range(max_batch_size.bit_length()) if 1 << k <= max_batch_size}
    sizes |= {p for p in preferred if p <= max_batch_size}
    return tuple(sorted(sizes | {max_batch_size}))
