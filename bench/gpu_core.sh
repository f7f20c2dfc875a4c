#!/usr/bin/env bash
# GPU check of the emdm core (issue 2) on a CUDA machine with its own torch, no pip needed:
#
#     PYTHONPATH=. bash bench/gpu_core.sh [OUT]        # from the repository root
#
# 1. the test suite, natively (the CUDA-parametrized tests in tests/test_device.py run there);
# 2. python3 -m bench.mmps_cost on CUDA at the CPU benchmark's size (B = 256) and at B = 16384;
# 3. the MMPS check (python -m emdm mmps-check) on CUDA at 8x the default samples.
# Writes OUT/bench/mmps_cost_<gpu>*.{csv,json}, OUT/mmps_check_<gpu>.{csv,json} and OUT/gpu_core.log
# (OUT defaults to results). About 3 minutes on one H100. bench/gpu_all.sh runs these steps among
# every other GPU check.
set -uo pipefail
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
out=${1:-results}
mkdir -p "$out/bench"
exec > >(tee "$out/gpu_core.log") 2>&1

python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
gpu=$(python3 -c "import re, torch; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name(0).lower()).strip('-'))")
status=0

echo "== tests"
python3 -m pytest -q -p no:cacheprovider tests || status=1

echo "== MMPS cost, B = 256"
python3 -m bench.mmps_cost --device cuda --repeats 200 --out "$out/bench/mmps_cost_$gpu" || status=1
echo "== MMPS cost, B = 16384"
python3 -m bench.mmps_cost --device cuda --batch 16384 --repeats 50 \
    --out "$out/bench/mmps_cost_${gpu}_b16384" || status=1

echo "== MMPS check on CUDA"
python3 -m emdm mmps-check --device cuda --samples 4096 --quiet --out "$out" --name "mmps_check_$gpu" \
    && python3 -c "
import pandas as pd, sys
f = pd.read_csv(sys.argv[1])
print(f.pivot_table(index='covariance', columns='metric', values='value', aggfunc='median'))
" "$out/mmps_check_$gpu.csv" || status=1

echo "== exit status $status"
exit $status
