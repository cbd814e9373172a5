#!/usr/bin/env bash
# Run every case of bench/lora_speed.py on this machine's GPU, one process each, and write the table.
# Who it is for: anyone with a CUDA GPU and requirements-gpu.txt installed. From the repository root:
#     bash bench/run_gpu_bench.sh [OUT_DIR]        # ~6 minutes on an H100; writes OUT_DIR/results.jsonl and table.md
# SMOLLM2_LIKE: a folder with SmolLM2-135M's config.json and tokenizer (default: the lab's converted embedded model).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results}
mkdir -p "$out" /tmp/bench-models
like=${SMOLLM2_LIKE:-${FINETUNE_LAB_CACHE:-$HOME/.cache/finetune_lab}/models/smollm2-135m-instruct}
[ -d /tmp/bench-models/tinyllama ] || python3 bench/lora_speed.py make-tinyllama /tmp/bench-models/tinyllama
[ -d /tmp/bench-models/smollm2 ] || python3 bench/lora_speed.py make-smollm2 /tmp/bench-models/smollm2 "$like"
: > "$out/results.jsonl"
for case in hf-lora us-lora lab-lora hf-qlora us-qlora lab-qlora; do
  python3 bench/lora_speed.py run "$case" /tmp/bench-models/tinyllama 2>"$out/$case.log" | tee -a "$out/results.jsonl" \
    || echo "{\"failed\": \"$case\"}" | tee -a "$out/results.jsonl"
done
for case in course-padded course-padfree; do
  python3 bench/lora_speed.py run "$case" /tmp/bench-models/smollm2 2>"$out/$case.log" | tee -a "$out/results.jsonl" \
    || echo "{\"failed\": \"$case\"}" | tee -a "$out/results.jsonl"
done
python3 bench/lora_speed.py table "$out/results.jsonl" "$out/table.md"
