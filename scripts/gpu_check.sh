#!/usr/bin/env bash
# The GPU check (issue #9): run whenever a GPU is available; budget < 8 minutes on one H100.
#   1. CUDA unit tests (tests/test_cuda.py: GPU loss == CPU loss, FlexAttention == dense, compile == eager,
#      samplers on the device) plus the mask and transformer tests;
#   2. a short training of each mode with torch.compile + bf16 autocast + FlexAttention, then `evaluate`;
#   3. `bench` on the small preset per mode: training images/s and MFU against the measured bf16 matmul peak.
# Usage: bash scripts/gpu_check.sh [DATA_SRC]     (DATA_SRC as for scripts/stage_data.sh; default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
STEPS=${STEPS:-300}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
bash scripts/stage_data.sh "${1:-../shared/data}"

echo "== 1. CUDA tests"
python -m pytest -q tests/test_cuda.py tests/test_masks.py tests/test_transformer.py

echo "== 2. short training per mode: compile + bf16 + FlexAttention, $STEPS steps"
for mode in ar masked diffusion; do
  start=$(date +%s)
  python -m minimfm train --preset tiny --mode "$mode" --max-steps "$STEPS" --warmup-steps 50 --compile true \
    --attention flex --sample-every 0 --run-name "gpucheck-$mode" --overwrite 2>&1 | tr '\r' '\n' | grep -E "img_s|wrote" | tail -2
  echo "$mode: trained in $(( $(date +%s) - start )) s (includes tokenizers the first time and compilation)"
  python -m minimfm evaluate --ckpt "runs/gpucheck-$mode/ckpt.pt" --n 200 2>&1 | grep -E "^[a-z]|prompted|caption acc|seconds"
done

echo "== 3. bench, small preset"
for mode in ar masked diffusion; do
  python -m minimfm bench --preset small --mode "$mode" --compile true --attention flex --steps 10 --warmup 3
done
