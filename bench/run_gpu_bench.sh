#!/usr/bin/env bash
# Run the cases of bench/lora_speed.py on this machine's GPU, one process each, and write the table.
# Who it is for: anyone with a CUDA GPU and requirements-gpu.txt installed. From the repository root:
#     bash bench/run_gpu_bench.sh [OUT_DIR]        # ~10 minutes on an H200; writes OUT_DIR/results.jsonl and table.md
#     CASES="course-padded course-packed" bash bench/run_gpu_bench.sh OUT_DIR    # some cases only
# SMOLLM2_LIKE: a folder with SmolLM2-135M's config.json and tokenizer (default: the lab's converted embedded model).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results}
cases=${CASES:-hf-lora us-lora lab-lora hf-qlora us-qlora lab-qlora
               course-padded course-padfree course-packed}
mkdir -p "$out" /tmp/bench-models
like=${SMOLLM2_LIKE:-${FINETUNE_LAB_CACHE:-$HOME/.cache/finetune_lab}/models/smollm2-135m-instruct}
: > "$out/results.jsonl"
for case in $cases; do
  if [[ $case == course-* ]]; then
    model=/tmp/bench-models/smollm2
    [ -d $model ] || python3 bench/lora_speed.py make-smollm2 $model "$like"
  else
    model=/tmp/bench-models/tinyllama
    [ -d $model ] || python3 bench/lora_speed.py make-tinyllama $model
  fi
  python3 bench/lora_speed.py run "$case" $model 2>"$out/$case.log" | tee -a "$out/results.jsonl" \
    || echo "{\"failed\": \"$case\"}" | tee -a "$out/results.jsonl"
done
python3 bench/lora_speed.py table "$out/results.jsonl" "$out/table.md"
