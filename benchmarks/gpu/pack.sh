#!/usr/bin/env bash
# Pack what a GPU machine without a package index needs for benchmarks/gpu/setup.sh, on a machine with one,
# into .gpu/ (ignored by git), in pieces small enough to send one per call where a call's upload is bounded:
#   .gpu/ortN/part-*   onnxruntime-gpu for CPython 3.12, unpacked, tar + xz (a third smaller than the wheel's
#                      zip), split in parts of PART_MIB (default 58) MiB, one folder per part;
#   .gpu/whl/          the wheels the CUDA image lacks: the server's pure-Python and small native dependencies,
#                      tritonclient and its HTTP client's, and the client distribution built from clients/.
#
#   bash benchmarks/gpu/pack.sh
# Then send .gpu/ort0, .gpu/ort1, ... to the GPU machine's /tmp/ort/ one call each, and in the last call the
# last part with .gpu/whl beside the checkout: `. benchmarks/gpu/setup.sh && bash benchmarks/gpu/verify.sh ...`
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PART_MIB=${PART_MIB:-58}
ORT_VERSION=${ORT_VERSION:-1.31.1}
PYTHON=${PYTHON:-python3}
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64)
# Pinned to what the test environment runs with (grpcio and protobuf at least what the generated code checks).
WHEELS=(grpcio==1.85.3 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1 protobuf==7.36.2
        pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection typing-extensions
        uvicorn httptools starlette python-multipart python-json-logger simplejpeg "pillow>=11.3" pi-heif
        pillow-heif hdrhistogram tqdm tritonclient geventhttpclient gevent greenlet zope-event zope-interface
        brotli python-rapidjson)
rm -rf .gpu/ort* .gpu/whl .gpu/dl
mkdir -p .gpu/dl .gpu/whl
"$PYTHON" -m pip download -q --no-deps "${plat[@]}" -d .gpu/dl "onnxruntime-gpu==${ORT_VERSION}"
"$PYTHON" -m pip download -q --no-deps "${plat[@]}" -d .gpu/whl "${WHEELS[@]}"
"$PYTHON" -m pip wheel -q --no-deps ./clients -w .gpu/whl
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/site"
"$PYTHON" -m zipfile -e .gpu/dl/onnxruntime_gpu-"${ORT_VERSION}"-*.whl "$tmp/site"
tar -C "$tmp/site" -cf - . | xz -T0 -6 | split -b "${PART_MIB}M" -d -a 2 - "$tmp/part-"
i=0
for p in "$tmp"/part-*; do
  mkdir -p ".gpu/ort$i"; mv "$p" ".gpu/ort$i/"; i=$((i + 1))
done
du -sh .gpu/ort* .gpu/whl
