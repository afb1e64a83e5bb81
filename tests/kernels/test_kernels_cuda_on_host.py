"""The CUDA tier's per-pixel resize arithmetic against cv2, on machines without a GPU.

``resize_exact_kernel`` computes each output pixel with ``opencv::exact_pixel`` from
``kernels/src/shared/opencv_resize.hpp``. That function is plain C++ apart from its load and
round-to-nearest intrinsics, so this test compiles it for the CPU (``exact_pixel_host.cpp``, with the system
C++ compiler and ``-ffp-contract=off``, the host stand-ins for those intrinsics) and compares its bytes with
``cv2.resize``. The GPU itself is tested by ``test_kernels_cuda.py`` (``pytest -m gpu``).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_kernels_preprocess import EDGE_CASES, EXACT_MODES, cv2_resize, random_frame

HERE = Path(__file__).parent
SHARED = HERE.parents[1] / "kernels" / "src" / "shared"


@pytest.fixture(scope="module")
def exact_resize(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None or not (SHARED / "opencv_resize.hpp").exists():
        pytest.skip("no C++ compiler (or no kernel sources) to build the CUDA per-pixel code for the CPU")
    library = tmp_path_factory.mktemp("exact_pixel") / "libexact_pixel.so"
    subprocess.run(
        [
            compiler,
            "-std=c++17",
            "-O2",
            "-ffp-contract=off",
            "-shared",
            "-fPIC",
            f"-I{SHARED}",
            str(HERE / "exact_pixel_host.cpp"),
            "-o",
            str(library),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    function = ctypes.CDLL(str(library)).exact_resize
    function.restype = None
    function.argtypes = [ctypes.c_void_p, ctypes.c_int64, *[ctypes.c_int32] * 5, ctypes.c_void_p]

    def run(frame: np.ndarray, new_w: int, new_h: int, resize: str) -> np.ndarray:
        out = np.full((new_h, new_w, 3), 0xA5, np.uint8)  # poisoned
        function(frame.ctypes.data, frame.strides[0], *frame.shape[:2], new_w, new_h, resize == "area", out.ctypes.data)
        return out

    return run


@pytest.mark.parametrize("resize", EXACT_MODES)
def test_cuda_pixel_code_equals_cv2(exact_resize, resize: str) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(77 + len(resize))
    cases = [(shape, (size[1], size[0])) for shape, size in EDGE_CASES]
    for _ in range(150):
        h, w = (int(v) for v in rng.integers(1, 300, 2))
        new_h, new_w = (int(v) for v in rng.integers(1, 400, 2))
        if rng.random() < 0.2:  # integer factors
            k = int(rng.integers(1, 5))
            new_h, new_w = max(1, h // k), max(1, w // k)
            h, w = new_h * k, new_w * k
        cases.append(((h, w), (new_w, new_h)))
    for i, ((h, w), (new_w, new_h)) in enumerate(cases):
        frame = random_frame(rng, h, w, strided=i % 3 == 0)
        np.testing.assert_array_equal(
            exact_resize(frame, new_w, new_h, resize),
            cv2_resize(frame, new_w, new_h, resize),
            err_msg=f"{resize}: {h}x{w} -> {new_h}x{new_w}",
        )
