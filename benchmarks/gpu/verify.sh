#!/usr/bin/env bash
# Everything that needs a GPU, in as few device calls as possible; results go to $OUT (default ./gpu-out).
# Run after `. benchmarks/gpu/setup.sh` (which builds Peregrine with its CUDA kernels into /tmp/pg).
#
#   bash benchmarks/gpu/verify.sh tests       # every gpu-marked test (CUDA kernels, device pipeline, CUDA shm)
#   bash benchmarks/gpu/verify.sh kernels     # bench_kernels --gpu: native CUDA vs CuPy, batch 16 of 1080p
#   bash benchmarks/gpu/verify.sh detection   # bench_detection: 1/4/16 cameras x 30 fps 1080p JPEG, 20 ms deadline
#   bash benchmarks/gpu/verify.sh shm         # bench_shm: gRPC vs CUDA shared memory vs in-process ORT CUDA EP
#   bash benchmarks/gpu/verify.sh batching    # bench_batching --device cuda
#   bash benchmarks/gpu/verify.sh buckets     # bench_buckets --device cuda (shape changes, load times)
#   bash benchmarks/gpu/verify.sh served      # the OIP/pipeline suites with the models on the GPU
#
# Several stages run in the order given. VERIFY_BUDGET_S (default 480) bounds the whole: each stage gets at
# most its own limit and never more than what is left, and a stage with under 20 s left is skipped, so the
# call ends inside the device's limit with every finished stage's file written. Every stage's output goes to
# "$OUT/stages.log", the benchmarks' tables to "$OUT/<stage>_gpu.md"; a summary line per stage is printed last.
#
# On a lent machine, run the stages as several calls of a few minutes each on the warm machine (setup + tests,
# then kernels + detection, then shm + batching + buckets), not as one long call: a machine that stops
# answering returns nothing of the call it was in (seen once on an H100 in a single 9-minute call).
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
BUDGET=${VERIFY_BUDGET_S:-480}
START=$SECONDS
PYTEST=(python3 -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning)
SUMMARY=()

run_stage() {  # name limit_s command...
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET - (SECONDS - START)))
  if [ "$left" -lt 20 ]; then SUMMARY+=("$name: skipped (${left} s of the budget left)"); return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$SECONDS
  echo "=== $name: $*" >> "$OUT/stages.log"
  timeout -k 5 "$limit" "$@" >> "$OUT/stages.log" 2>&1
  local rc=$?
  SUMMARY+=("$name: rc=$rc in $((SECONDS - t0)) s (limit $limit s)")
}

for stage in "${@:-tests}"; do
  case "$stage" in
    tests)
      run_stage tests 150 "${PYTEST[@]}" --timeout 90 -m gpu tests
      ;;
    kernels)
      run_stage kernels 60 python3 benchmarks/bench_kernels.py --gpu --output "$OUT/kernels_gpu.md"
      ;;
    detection)
      run_stage detection 130 python3 benchmarks/bench_detection.py --repository models --cameras 1 4 16 \
        --fps 30 --duration 10 --deadline-ms 20 --out "$OUT/detection_gpu.md"
      ;;
    shm)
      run_stage shm 70 python3 benchmarks/bench_shm.py --repository models --models yolov8n --client tritonclient \
        --shared-memory cuda --concurrency 1 2 --repeats 2 --measurement-ms 1000 --in-process-seconds 2 \
        --out "$OUT/shm_gpu.md"
      ;;
    batching)
      run_stage batching 90 python3 benchmarks/bench_batching.py --device cuda --threads 0 --max-batch 16 \
        --delay-us 2000 --deadline-ms 20 --closed-seconds 3 --repeats 2 --open-seconds 8 --open-repeats 1 \
        --out "$OUT/batching_gpu.md"
      ;;
    buckets)
      run_stage buckets 90 python3 benchmarks/bench_buckets.py --device cuda --out "$OUT/buckets_gpu.md"
      ;;
    served)
      run_stage served 200 "${PYTEST[@]}" --timeout 60 tests/pipeline tests/test_oip_conformance.py \
        tests/test_bad_input.py
      ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
for f in "$OUT"/*.md; do [ -f "$f" ] && { echo "== $f"; cat "$f"; }; done
grep -E "passed|failed|error" "$OUT/stages.log" | tail -n 5
printf '%s\n' "${SUMMARY[@]}"
