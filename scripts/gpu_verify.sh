#!/usr/bin/env bash
# Verify the lab's GPU path on a CUDA machine (needs requirements-gpu.txt, requirements-dev.txt and the
# embedded model, i.e. `make model` once). Who it is for: maintainers before a release; what it ran is in the
# issue/PR notes. From the repository root:
#     bash scripts/gpu_verify.sh [OUT_DIR]                 # all three stages (~20 minutes on an H100)
#     STAGES="tests notebooks" bash scripts/gpu_verify.sh   # some of them
#     TESTS_K="not unsloth" STAGES=tests bash scripts/gpu_verify.sh OUT   # some tests (pytest -k), e.g. one set
#                                                                     # per card with CUDA_VISIBLE_DEVICES
#     T4=1 bash scripts/gpu_verify.sh OUT     # the same, with the card looking like Colab's T4 (fp16 only;
#                                             # scripts/t4sim), as a Colab user's runs would go
#     TINYLLAMA=1 ...                         # the notebooks train TinyLlama-1.1B-Chat as Colab downloads it
#                                             # (tests/helpers.tinyllama_hub: its tokenizer, full shape, random weights)
# 0. the preflight (python -m finetune_lab.doctor): versions, card, native bf16, dtype, memory estimate
# 1. tests/labs/test_gpu.py: the CLI's LoRA and QLoRA runs through Unsloth and transformers+PEFT, save -> reload;
#    tests/labs/test_tinyllama_chat.py: the same four at TinyLlama's full shape, peak memory beside the estimate
# 2. both notebooks executed top to bottom with nbclient (FINETUNE_LAB_QUICK=1), saved with their outputs in OUT_DIR
# 3. the hub presets' architectures (random weights) through both backends: bench/check_presets.py
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-verify}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if [[ ${T4:-0} == 1 ]]; then
  export PYTHONPATH="$PWD/scripts/t4sim${PYTHONPATH:+:$PYTHONPATH}"
  # Under the simulation Unsloth compiles its blocks for compute capability 7.5, which the real card cannot run
  # ("no kernel image is available"), and then stalls in inductor; a real T4 compiles for itself. Compiling is a
  # speed option, not a precision decision, so the simulated runs go without it.
  export UNSLOTH_COMPILE_DISABLE=1
fi
if [[ ${TINYLLAMA:-0} == 1 ]]; then
  # found offline in the hub cache, so the preflight picks it as the notebooks' model, as on Colab
  HF_HUB_CACHE=$(PYTHONPATH=tests python3 -c "from helpers import tinyllama_hub; print(tinyllama_hub(22))") || exit 1
  export HF_HUB_CACHE HF_HUB_OFFLINE=1
fi
python3 - <<'PY' | tee "$out/versions.txt"
import torch, transformers, trl, peft, unsloth, bitsandbytes
print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | transformers {transformers.__version__} | "
      f"trl {trl.__version__} | peft {peft.__version__} | unsloth {unsloth.__version__} | bnb {bitsandbytes.__version__}")
PY
python3 -c "from finetune_lab.embedded import ensure_embedded_base; print(ensure_embedded_base())" || exit 1
stages=" ${STAGES:-doctor tests notebooks presets} "
status=0
[[ $stages == *" doctor "* ]] && python3 -m finetune_lab.doctor 2>&1 | tee "$out/doctor.txt"
[[ $stages == *" tests "* ]] && { python3 -m pytest -p no:cacheprovider -o addopts="" -p no:nbval -v -s -m gpu ${TESTS_K:+-k "$TESTS_K"} tests/labs/test_gpu.py tests/labs/test_tinyllama_chat.py 2>&1 \
  | grep --line-buffered -vE "it/s\]|s/it\]" > "$out/pytest_gpu.txt" || status=1; tail -15 "$out/pytest_gpu.txt"; }
[[ $stages == *" notebooks "* ]] && for nb in train_model evaluate_model; do
  FINETUNE_LAB_QUICK=1 python3 - "$nb" "$out" <<'PY' 2>&1 | tail -3 | tee -a "$out/notebooks.txt" || status=1
import sys, time, nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
name, out = sys.argv[1], sys.argv[2]
nb = nbformat.read(f"labs/unsloth_finetune/{name}.ipynb", as_version=4)
start = time.perf_counter()
try:
    NotebookClient(nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": "labs/unsloth_finetune"}}).execute()
except CellExecutionError:
    pass  # the error is in the cell's outputs, counted below
nbformat.write(nb, f"{out}/{name}.ipynb")  # executed, every output kept
errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
texts = [o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs]
said = [line for text in texts for line in text.splitlines() if line.startswith(("model: ", "backend="))]
print(f"{name}: executed in {time.perf_counter() - start:.0f} s, errors: {len(errors)}, {said[:2]}")
for error in errors:
    print(error.get("ename"), error.get("evalue", "")[:500])
sys.exit(1 if errors else 0)
PY
done
[[ $stages == *" presets "* ]] && { python3 bench/check_presets.py "$out/presets" 2>&1 | tee "$out/presets.txt" || status=1; }
exit $status
