#!/usr/bin/env bash
# Every GPU check of the throughput issue in one call on a lent GPU machine (device tool), results under $OUT.
#
# Prepared here (the GPU machine has no network and no ../shared):
#   python bench/bench_gpu.py --prepare .gpu/inputs.parquet; cp ../shared/data/cloud_reference/vocab.txt .gpu/
#   wheels for what its image lacks (polars, moyopy, gemmi, spglib; cp312) in .whl/ (see .library/device/README)
# bench/gpu_env.sh (sourced) sets up Python, the wheels and the C kernels there.
# Run (device tool): carry [".whl", ".gpu"], command `bash bench/gpu_checks.sh`.
# Dry run on a CPU machine: PY=.venv/bin/python OUT=/tmp/out DEVICE=cpu SMALL=1 bash bench/gpu_checks.sh
set -u
source "$(dirname "$0")/gpu_env.sh"
if [ -n "${SMALL:-}" ]; then  # dry run: the same steps, small
    GRID=(--n 20000 --sizes 1000,3000 --workers 1 --batch-sizes 2048 --min-tokens 32768 --passes 1)
    CANDIDATES=(--sizes 1000,3000 --workers 1)
    INFER=(--n 1024 --n-large 64 --batch-size 256 --threads 2 --passes 1)
else
    GRID=(--n 262144 --sizes 30000,200000 --workers 15 --batch-sizes 4096,16384 --min-tokens 131072,524288)
    CANDIDATES=(--sizes 30000,200000 --workers 15)
    INFER=(--n 32768 --n-large 8192 --batch-size 1024 --threads 16 --passes 3)
fi

$PY -c "import torch, polars, moyopy, gemmi, spglib, transformers as t; print(torch.__version__, polars.__version__, t.__version__)"

echo "== 1. CPU/CUDA parity (tests/test_model.py::test_cpu_and_cuda_predictions_agree)"
timeout 180 $PY -m pytest -q -p no:cacheprovider tests/test_model.py -k cuda 2>&1 | tee "$OUT/parity.txt"

echo "== 2. end to end and encode-only on generated candidates (bench/bench_gpu.py --candidates)"
timeout 150 $PY bench/bench_gpu.py --candidates --skip infer --device "$DEVICE" "${CANDIDATES[@]}" \
    --json "$OUT/bench_gpu_candidates.json" 2>&1 | tee "$OUT/bench_gpu_candidates.txt"

echo "== 3. inference grid, encode-only and end to end on mp37k structures (bench/bench_gpu.py)"
timeout 240 $PY bench/bench_gpu.py --inputs .gpu/inputs.parquet --device "$DEVICE" "${GRID[@]}" \
    --json "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.txt"

if [ -n "${BERT:-}" ]; then  # measured on 2026-12-04 (bench/README.md); BERT=1 to repeat it
    echo "== 4. ours against the reference BERT stack (bench/bench_inference.py)"
    timeout 240 $PY bench/bench_inference.py --device "$DEVICE" --strings .gpu/inputs.parquet --vocab .gpu/vocab.txt \
        "${INFER[@]}" --json "$OUT/bench_inference.json" 2>&1 | tee "$OUT/bench_inference.txt"
fi
