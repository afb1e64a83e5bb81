#!/usr/bin/env bash
# Prepare a GPU machine that has CUDA, CuPy, numba, pybind11 and grpcio but no package index:
# install onnxruntime-gpu (carried in parts in .gpu/ortN/) and the small wheels carried in .gpu/whl/,
# then build Peregrine with its CUDA kernels into /tmp/pg. Source it:  . benchmarks/gpu/setup.sh
set -e
if [ ! -f /tmp/ort/.installed ]; then
  cat /tmp/ort/part-* > "/tmp/ort/$(cat /tmp/ort/NAME)"
  python3 -m pip install -q --no-index --no-deps --target /tmp/site "/tmp/ort/$(cat /tmp/ort/NAME)" .gpu/whl/*.whl
  touch /tmp/ort/.installed
fi
export PYTHONPATH=/tmp/site
python3 -c "import onnxruntime as o; o.preload_dlls(); print('ORT', o.__version__, o.get_available_providers())"
PEREGRINE_CUDA=ON python3 -m pip install -q --no-build-isolation --no-deps --upgrade --target /tmp/pg . 2>&1 | tail -5
export PYTHONPATH=/tmp/pg:/tmp/site
(cd /tmp && python3 -c "import peregrine.kernels._native as n; print('native has_cuda:', n.has_cuda())")
python3 -m peregrine.modelgen --repository models
set +e
