#!/usr/bin/env bash
# Everything that needs a GPU, in as few device calls as possible; results go to $OUT (default ./gpu-out).
# Run after `. benchmarks/gpu/setup.sh` (which builds Peregrine with its CUDA kernels into /tmp/pg).
# The GPU image also needs, among the carried wheels: simplejpeg,
# pillow (11.3 or later: AVIF), pi-heif and pillow-heif (HEIC, read and written by the tests), hdrhistogram, tqdm,
# tritonclient.
#
#   bash benchmarks/gpu/verify.sh tests       # every gpu-marked test, then the OIP/pipeline suites on the GPU
#   bash benchmarks/gpu/verify.sh buckets     # bench_buckets --device cuda (shape changes, load times)
#   bash benchmarks/gpu/verify.sh batching    # bench_batching --device cuda (issue 3's GPU run)
#   bash benchmarks/gpu/verify.sh detection   # bench_detection: 1/4/16 cameras x 30 fps, 20 ms deadline
#
# Each stage stays under the device's 10-minute limit on an H100; run them as separate calls if needed.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
PYTEST=(python3 -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning)
for stage in "${@:-tests}"; do
  case "$stage" in
    tests)
      "${PYTEST[@]}" -m gpu tests 2>&1 | tail -40 > "$OUT/gpu_tests.txt"
      "${PYTEST[@]}" tests/pipeline tests/test_oip_conformance.py tests/test_bad_input.py 2>&1 | tail -20 \
        > "$OUT/served_on_gpu_tests.txt"
      ;;
    buckets)
      python3 benchmarks/bench_buckets.py --device cuda --out "$OUT/buckets_gpu.md" > /dev/null
      ;;
    batching)
      python3 benchmarks/bench_batching.py --device cuda --threads 0 --max-batch 16 --delay-us 2000 \
        --deadline-ms 20 --closed-seconds 3 --repeats 2 --open-seconds 8 --open-repeats 1 \
        --out "$OUT/batching_gpu.md" > /dev/null
      ;;
    detection)
      python3 benchmarks/bench_detection.py --repository models --cameras 1 4 16 --fps 30 --duration 15 \
        --deadline-ms 20 --out "$OUT/detection_gpu.md" > /dev/null
      ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
ls -l "$OUT"
