#!/usr/bin/env bash
# Prepare a GPU machine that has CUDA, CuPy, numba, pybind11 and grpcio but no package index, then build
# Peregrine with its CUDA kernels into /tmp/pg. Source it:  . benchmarks/gpu/setup.sh
#
# What it expects beside the checkout (prepared on a machine with a package index, see benchmarks/gpu/pack.sh):
#   /tmp/ort/part-*   onnxruntime-gpu unpacked and xz-compressed, split in parts (copied there by earlier calls),
#                     or the same parts in .gpu/ort*/ of the checkout;
#   .gpu/whl/*.whl    the small wheels the image lacks (the server's pure-Python dependencies, the client
#                     distribution built from clients/, tritonclient and its HTTP client's needs).
mkdir -p /tmp/ort /tmp/site
for d in .gpu/ort*/; do [ -d "$d" ] && cp "$d"part-* /tmp/ort/ 2>/dev/null; done
if [ ! -f /tmp/site/.ort-installed ]; then
  cat /tmp/ort/part-* | xz -dc | tar -C /tmp/site -xf - && touch /tmp/site/.ort-installed
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .gpu/whl/*.whl 2>&1 | grep -v "^WARNING: Target directory" | tail -5
export PYTHONPATH=/tmp/site
python3 -c "import onnxruntime as o; o.preload_dlls(); print('ORT', o.__version__, o.get_available_providers())"
export CMAKE_BUILD_PARALLEL_LEVEL=16
PEREGRINE_CUDA=ON python3 -m pip install -q --no-build-isolation --no-deps --no-compile --upgrade --target /tmp/pg . \
  2>&1 | grep -v "^WARNING: Target directory" | tail -5
export PYTHONPATH=/tmp/pg:/tmp/site
(cd /tmp && python3 -c "import peregrine.kernels._native as n; print('native has_cuda:', n.has_cuda())")
python3 -m peregrine.modelgen --repository models --images images > /dev/null
