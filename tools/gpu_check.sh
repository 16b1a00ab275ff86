#!/usr/bin/env bash
# The GPU check, on a machine with an NVIDIA GPU, in one go (a few minutes): install the cuda extra, run the GPU
# tests on the device (kernels of every block type, every architecture offloaded, PTX), then
# `llamba bench -ngl 99` on the real models: one table, with the device, its memory, the layers placed and the
# kernel launches per generated token under it.
#   tools/gpu_check.sh [MODELS]    MODELS: comma-separated names or GGUF paths (default: the four known models)
set -uo pipefail
cd "$(dirname "$0")/.."
models=${1:-smollm2-135m-instruct,gemma-3-270m,qwen2.5-coder-0.5b-instruct,qwen2.5-coder-1.5b-instruct}

python -m pip install -q -e ".[cuda]" pytest || { echo "gpu_check: installing the cuda extra failed"; exit 1; }
python -c "from quant.kernels.cuda import target; print('gpu_check:', target.open_device(0))" || exit 1

echo "gpu_check: the GPU tests (tests/cuda_env.py picks the device)"
python -m pytest -q -p no:cacheprovider --continue-on-collection-errors tests/test_quads.py \
  tests/test_cuda_kernels.py tests/test_cuda_ptx.py tests/test_gpu_offload.py 2>&1 | tail -n 20

echo "gpu_check: llamba bench -ngl 99"
llamba bench -m "$models" -ngl 99 -p 512 -n 128 -r 3
