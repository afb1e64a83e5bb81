"""Synthetic, photograph-like calibration images for folding BatchNorm statistics and setting head biases.

The generators only depend on NumPy, so they run anywhere the model builders run (scikit-image's
photographs are a test-time dependency). The images mimic what a detector sees after letterboxing: a 1/f
("pink") texture with the spectrum of natural images, flat-coloured objects with sharp edges, and grey
(114/255) letterbox bands.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

LETTERBOX_GREY = 114.0 / 255.0
CALIBRATION_SEED = 20240611  # fixed: the model seed changes the weights, not the calibration data


def pink_noise(rng: np.random.RandomState, h: int, w: int) -> np.ndarray:
    """A [h, w] field with a 1/f amplitude spectrum, zero mean and unit standard deviation."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    spectrum = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) / f
    spectrum[0, 0] = 0.0
    field = np.fft.irfft2(spectrum, s=(h, w))
    return (field - field.mean()) / (field.std() + 1e-12)


def synthetic_photo(rng: np.random.RandomState, h: int, w: int, n_objects: int = 12) -> np.ndarray:
    """A [3, h, w] float32 image in [0, 1]: pink-noise scene plus flat-coloured boxes and discs."""
    luminance = pink_noise(rng, h, w)
    img = np.empty((3, h, w), dtype=np.float64)
    base = rng.uniform(0.35, 0.55, 3)
    for c in range(3):
        chroma = pink_noise(rng, h, w)
        img[c] = base[c] + 0.18 * luminance + 0.06 * chroma
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(n_objects):
        size = rng.uniform(0.04, 0.4) * min(h, w)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        aspect = np.exp(rng.uniform(-0.7, 0.7))
        ry, rx = size * aspect / 2, size / aspect / 2
        if rng.rand() < 0.5:
            mask = (np.abs(yy - cy) < ry) & (np.abs(xx - cx) < rx)
        else:
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1.0
        colour = rng.uniform(0.0, 1.0, 3)
        texture = 0.05 * pink_noise(rng, h, w)
        for c in range(3):
            img[c][mask] = colour[c] + texture[mask]
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def letterboxed(content: np.ndarray, imgsz: int) -> np.ndarray:
    """Centres a [3, h, w] image (h, w <= imgsz) on a grey imgsz x imgsz canvas."""
    _, h, w = content.shape
    canvas = np.full((3, imgsz, imgsz), LETTERBOX_GREY, dtype=np.float32)
    top, left = (imgsz - h) // 2, (imgsz - w) // 2
    canvas[:, top : top + h, left : left + w] = content
    return canvas


@lru_cache(maxsize=4)
def calibration_batch(imgsz: int) -> np.ndarray:
    """Two letterboxed synthetic photographs, [2, 3, imgsz, imgsz] float32 in [0, 1], read-only (cached).

    One fills the square; one is a 3:2 landscape frame with grey bands above and below, as a camera frame
    letterboxed for a square model input would be.
    """
    rng = np.random.RandomState(CALIBRATION_SEED)
    square = synthetic_photo(rng, imgsz, imgsz)
    landscape_h = (imgsz * 2 // 3) // 2 * 2
    landscape = letterboxed(synthetic_photo(rng, landscape_h, imgsz), imgsz)
    batch = np.stack([square, landscape])
    batch.flags.writeable = False
    return batch
