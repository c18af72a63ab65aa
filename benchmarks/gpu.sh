#!/usr/bin/env bash
# The CUDA path, checked and measured on a GPU machine, in one go (README, "GPU figures"):
#
#   bash benchmarks/gpu.sh [figures folder]        # default: gpu-figures/
#
# 1. installs aeexp with its test extra where it is not importable yet (pip install -e ".[dev]";
#    AEEXP_WHEELS=<folder of wheels> installs from there instead, for machines without an index);
# 2. runs the CUDA tests: tests/test_cuda.py (placement, bf16/fp16 autocast with the grad scaler,
#    device.compile, noise and sparsity on the device, streamed vectors, evaluation on GPU and
#    CPU) and the CUDA cases of the DDP and stacked-launcher tests (NCCL on one GPU);
# 3. runs the benchmarks: fc and conv epochs per precision and compile choice next to a plain
#    loop (bench_device.py), the trainer next to a DataLoader loop (bench_epoch.py), and 16
#    stacked runs against one (bench_stacked.py), each writing its figures as JSON.
# Set AEEXP_DATA to a folder holding FashionMNIST/raw/ where Debian's dataset-fashion-mnist is not
# installed (bench_device.py falls back to synthetic images of the same size).
set -uo pipefail
FIGURES=$(realpath -m "${1:-gpu-figures}")
cd "$(dirname "$0")/.."
mkdir -p "$FIGURES"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0

if ! "$PY" -c "import aeexp, hydra" 2>/dev/null; then
  if [ -n "${AEEXP_WHEELS:-}" ]; then
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/aeexp-site "$AEEXP_WHEELS"/*.whl || exit 1
    export PYTHONPATH="$PWD:/tmp/aeexp-site${PYTHONPATH:+:$PYTHONPATH}"
  else
    "$PY" -m pip install -q -e ".[dev]" || exit 1
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  echo "cpus: $(nproc)"; } | tee "$FIGURES/device.txt"

# the CUDA cases of the DDP and stacked tests are the ones whose names say cuda or gpu
"$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py $( [ -e tests/test_ddp.py ] && echo tests/test_ddp.py ) \
  $( [ -e tests/test_stacked.py ] && echo tests/test_stacked.py ) -k "cuda or gpu" 2>&1 \
  | tee "$FIGURES/tests.log" || status=1

cd benchmarks
"$PY" bench_device.py --device cuda --json "$FIGURES/bench_device.json" 2>&1 | tee "$FIGURES/bench_device.txt" || status=1
"$PY" bench_epoch.py --device cuda --epochs 3 --root "${AEEXP_DATA:-../data}" --json "$FIGURES/bench_epoch.json" 2>&1 \
  | tee "$FIGURES/bench_epoch.txt" || status=1
if [ -e bench_stacked.py ]; then
  "$PY" bench_stacked.py --device cuda --json "$FIGURES/bench_stacked.json" 2>&1 | tee "$FIGURES/bench_stacked.txt" || status=1
fi
exit $status
