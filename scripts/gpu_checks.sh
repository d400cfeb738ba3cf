#!/usr/bin/env bash
# Everything rdbench measures or tests on a CUDA machine, in one go (about 5 minutes on an
# H100): the CUDA tests, the training benchmark (groups of 1/4/12/60, plus mlp3 × 60 at
# batch 1024 for the MFU without Adam's bandwidth bound) and the evaluation benchmark.
#
#   scripts/gpu_checks.sh [OUT_DIR]      # default results/bench; JSON and logs land there
#
# Uses the python3 on PATH (which must have CUDA torch, numpy, pandas, ...) and runs rdbench
# from this checkout (PYTHONPATH), installing nothing: it works on a machine with no network.
set -euo pipefail
out=${1:-results/bench}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
rdbench() { python3 -m rdbench "$@"; }
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

echo "== pytest -m cuda"
python3 -m pytest -q -p no:cacheprovider -m cuda 2>&1 | tee "$out/pytest_cuda.log" | tail -3
echo "== rdbench bench train --device cuda"
rdbench bench train --device cuda --out "$out/train-gpu.json" 2>&1 | grep -v "it/s]" \
    | tee "$out/bench_train_gpu.log"
echo "== rdbench bench train --device cuda --architectures mlp3 --models 60 --batch 1024"
rdbench bench train --device cuda --architectures mlp3 --models 60 --batch 1024 \
    --out "$out/train-gpu-b1024.json" 2>&1 | grep -v "it/s]" | tail -6
echo "== rdbench bench eval --device cuda"
rdbench bench eval --device cuda --out "$out/eval-gpu.json" 2>&1 | tail -12
