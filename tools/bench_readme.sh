#!/usr/bin/env bash
# The README "Performance" tables: every real model of DESIGN.md plus a Q8_0 and a Q4_0 file made by our own
# quantizer (from Qwen2.5-Coder-0.5B), llama-bench's pp512 / tg128 at 1 and 2 threads, llamba and llama.cpp
# interleaved on the same file, and the kernel throughput table. Run on an otherwise idle machine (~25 min).
set -euo pipefail
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE  # numpy's OpenBLAS as users have it (never in tests or CI)
out=${1:-bench-results}
mkdir -p "$out"
src=$(llamba pull qwen2.5-coder-0.5b-instruct | tail -1)
for t in q8_0 q4_0; do
  [ -f "$out/qwen2.5-0.5b-$t.gguf" ] || llamba quantize --allow-requantize "$src" "$out/qwen2.5-0.5b-$t.gguf" "$t"
done
python tools/bench.py kernels --types Q8_0,Q4_0,Q4_1,Q5_0,Q4_K,Q6_K --shapes 4096x4096,qwen1.5b-ffn-down \
  --threads 1,2 --repeats 5 | tee "$out/kernels.md"
for m in smollm2-135m-instruct gemma-3-270m qwen2.5-coder-0.5b-instruct qwen2.5-coder-1.5b-instruct \
         "$out/qwen2.5-0.5b-q8_0.gguf" "$out/qwen2.5-0.5b-q4_0.gguf"; do
  llamba bench -m "$m" -p 512 -n 128 -t 1,2 -r 2 --compare llama.cpp --bandwidth | tee "$out/$(basename "$m" .gguf).md"
done
