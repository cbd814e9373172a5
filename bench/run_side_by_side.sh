#!/usr/bin/env bash
# Paired runs on a host with two GPUs: the two cases of each pair (raw Unsloth and the lab, by default) train at the
# same time, one per card, then again with the cards swapped, ROUNDS times in all; the table takes each case's median.
# Why: on a shared host one process's tokens/s differs from the next one's by 10-30%, more than the gap being
# measured; two cases that run together, each on both cards, see the same host, the same cards and the same moment.
# Who it is for: anyone checking the lab against raw Unsloth with two GPUs. From the repository root:
#     bash bench/run_side_by_side.sh [OUT_DIR]                          # ~5 minutes on 2x H200
#     PAIRS="us-qlora:lab-qlora" ROUNDS=4 bash bench/run_side_by_side.sh OUT_DIR
# One GPU only: run bench/run_gpu_bench.sh several times and compare the same cases across its tables.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results/side-by-side}
mkdir -p "$out" /tmp/bench-models
model=/tmp/bench-models/tinyllama
[ -d $model ] || python3 bench/lora_speed.py make-tinyllama $model
: > "$out/results.jsonl"
for round in $(seq 1 "${ROUNDS:-2}"); do
  for pair in ${PAIRS:-us-lora:lab-lora us-qlora:lab-qlora}; do
    first=${pair%%:*} second=${pair##*:}
    cards=(0 1); [ $((round % 2)) = 0 ] && cards=(1 0)
    CUDA_VISIBLE_DEVICES=${cards[0]} python3 bench/lora_speed.py run "$first" $model >"$out/$first-$round.json" 2>"$out/$first-$round.log" &
    CUDA_VISIBLE_DEVICES=${cards[1]} python3 bench/lora_speed.py run "$second" $model >"$out/$second-$round.json" 2>"$out/$second-$round.log" &
    wait
    cat "$out/$first-$round.json" "$out/$second-$round.json" | tee -a "$out/results.jsonl"
  done
done
python3 bench/lora_speed.py table "$out/results.jsonl" "$out/table.md"
