"""The numba tier: the same kernels as the native module, written with ``numba.njit(nogil=True, cache=True)``.

It is the fallback when ``peregrine.kernels._native`` cannot be imported and the reference the native
kernels are compared with. Functions here take validated arguments (``_dispatch`` checks them) and work on
one image at a time; the dispatch layer loops over the batch.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def _axis(src_len, resized_len, offset, out_len):
    """OpenCV INTER_LINEAR tables for the output positions [begin, end) covered by the resized frame."""
    begin = max(0, offset)
    end = min(out_len, offset + resized_len)
    n = max(0, end - begin)
    i0 = np.empty(n, np.int64)
    i1 = np.empty(n, np.int64)
    weight = np.empty(n, np.float32)
    scale = 1.0 / (resized_len / src_len)
    for k in range(n):
        dst = begin + k - offset
        f = np.float32((dst + 0.5) * scale - 0.5)
        s = int(np.floor(f))
        weight[k] = f - np.float32(s)
        i0[k] = min(max(s, 0), src_len - 1)
        i1[k] = min(max(s + 1, 0), src_len - 1)
    return begin, end, i0, i1, weight


@njit(nogil=True, cache=True)
def resize_frame(src, resized_w, resized_h, left, top, src_channel, mul, add, pad, out):
    """One uint8 [h, w, 3] frame into float32 out [3, H, W] (see ``_native.resize_nchw``)."""
    height, width = out.shape[1], out.shape[2]
    xb, xe, x0, x1, wx = _axis(src.shape[1], resized_w, left, width)
    yb, ye, y0, y1, wy = _axis(src.shape[0], resized_h, top, height)
    for c in range(3):
        out[c, :, :] = pad[c]
    if xe <= xb or ye <= yb:
        return
    row = np.empty((xe - xb, 2, 3), np.float32)
    for oy in range(yb, ye):
        k = oy - yb
        r0 = y0[k]
        r1 = y1[k]
        w = wy[k]
        for j in range(xe - xb):
            for t in range(2):
                col = x0[j] if t == 0 else x1[j]
                for ch in range(3):
                    a = np.float32(src[r0, col, ch])
                    b = np.float32(src[r1, col, ch])
                    row[j, t, ch] = a + w * (b - a)
        for c in range(3):
            ch = src_channel[c]
            m = mul[c]
            ad = add[c]
            for j in range(xe - xb):
                a = row[j, 0, ch]
                b = row[j, 1, ch]
                out[c, oy, xb + j] = (a + wx[j] * (b - a)) * m + ad
