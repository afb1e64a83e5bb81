"""Random tensors of every OIP datatype, for round-trip tests."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as tc


def random_tensor(datatype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Values spread over the type's range (BYTES: short printable strings, some empty)."""
    if datatype == "BYTES":
        items = [bytes(rng.integers(32, 127, size=int(rng.integers(0, 9))).astype(np.uint8))
                 for _ in range(int(np.prod(shape)))]
        out = np.empty(len(items), dtype=object)
        out[:] = items  # element by element: equal-length bytes must not become a 2-D array
        return out.reshape(shape)
    if datatype == "BOOL":
        return rng.random(shape) > 0.5
    np_dt = tc.triton_to_np_dtype(datatype)
    if np.issubdtype(np_dt, np.integer):
        info = np.iinfo(np_dt)
        return rng.integers(info.min, info.max, size=shape, dtype=np_dt, endpoint=True)
    return (rng.standard_normal(shape) * 100).astype(np_dt)
