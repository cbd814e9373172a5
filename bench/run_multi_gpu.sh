#!/usr/bin/env bash
# Data-parallel scaling of the lab's trainer: the same per-GPU workload on 1 GPU and on N GPUs, through
# `accelerate launch` (DDP), plus the CLI itself on N GPUs (one writer, global loss, effective batch).
# Who it is for: instructors with a multi-GPU machine. From the repository root:
#     bash bench/run_multi_gpu.sh [OUT_DIR] [N]          # N defaults to every visible GPU
#     BACKENDS=transformers bash bench/run_multi_gpu.sh   # the scaling cases of one backend only
#     CASES=lab-qlora BACKENDS=unsloth STAGES=scaling bash bench/run_multi_gpu.sh OUT 2   # one case of one backend
#     STAGES=cli bash bench/run_multi_gpu.sh OUT_DIR 2     # one stage only (stages: scaling cli)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results/multi}
n=${2:-$(python3 -c "import torch; print(torch.cuda.device_count())")}
mkdir -p "$out" /tmp/bench-models
# NVLink multicast stays off: on shared hosts it can take the GPUs out of service.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
launch() { accelerate launch --num_processes "$1" --num_machines 1 --mixed_precision no --dynamo_backend no "${@:2}"; }
[ -d /tmp/bench-models/tinyllama ] || python3 bench/lora_speed.py make-tinyllama /tmp/bench-models/tinyllama
stages=" ${STAGES:-scaling cli} "
if [[ $stages == *" scaling "* ]]; then
: > "$out/scaling.jsonl"
for backend in ${BACKENDS:-transformers unsloth}; do
  for case in ${CASES:-lab-lora lab-qlora}; do
    for procs in 1 "$n"; do
      # one process must see one GPU, or Trainer falls back to nn.DataParallel (which TRL refuses)
      visible=$([ "$procs" = 1 ] && echo 0 || seq -s, 0 $((procs - 1)))
      CUDA_VISIBLE_DEVICES=$visible BENCH_BACKEND=$backend launch "$procs" bench/lora_speed.py run "$case" /tmp/bench-models/tinyllama \
        2>"$out/$case-$backend-$procs.log" | grep '^{"' | tee -a "$out/scaling.jsonl" \
        || echo "failed: $case $backend x$procs (see $out/$case-$backend-$procs.log)"
    done
  done
done
python3 bench/lora_speed.py scaling "$out/scaling.jsonl" "$out/scaling.md"
fi
[[ $stages == *" cli "* ]] || exit 0
# The CLI itself on N GPUs, LoRA and QLoRA: one run folder, the effective batch size, the global loss.
for method in lora qlora; do
  launch "$n" labs/unsloth_finetune/train_tiny_model.py --model /tmp/bench-models/tinyllama --backend transformers \
    --method $method --test_mode --max_steps 6 --max_seq_length 512 --output_dir /tmp/ddp-runs \
    --run_name ddp-$method --overwrite > "$out/cli_ddp_$method.log" 2>&1
  echo "CLI $method on $n GPUs: exit $?; run folders: $(ls /tmp/ddp-runs 2>/dev/null | tr '\n' ' ')"
  grep -E "effective batch size|steps:|first_loss|last_loss|backend=" "$out/cli_ddp_$method.log" | sort | uniq -c
done
