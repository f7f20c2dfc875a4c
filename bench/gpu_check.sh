#!/usr/bin/env bash
# GPU check of the Triton kernels (issue 4) on a CUDA machine with its own torch and triton,
# no pip needed, from the repository root:
#
#     PYTHONPATH=. bash bench/gpu_check.sh [OUT]
#
# 1. the kernel tests, natively on CUDA tensors (not interpreted);
# 2. python3 -m bench.gpu_check: reference vs Triton timings and the copy bandwidth, written to
#    OUT/gpu-<device>.{csv,json} (OUT defaults to results/bench), the log to OUT/gpu_check.log.
# Under 5 minutes on one H100 (most of it Triton's compilation in the tests). bench/gpu_all.sh
# runs these timings among every other GPU check.
set -uo pipefail
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
unset TRITON_INTERPRET # native kernels; tests/conftest.py interprets only without CUDA
out=${1:-results/bench}
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1

python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
status=0

echo "== kernel tests (native)"
python3 -m pytest -q -p no:cacheprovider tests/test_kernels_cg.py tests/test_kernels_mri.py || status=1

echo "== timings"
python3 -m bench.gpu_check --out "$out" || status=1

echo "== exit status $status"
exit $status
