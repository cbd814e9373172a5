"""The GPU path, run on a CUDA machine (scripts/gpu_verify.sh); every test here skips on a CPU machine.

The CLI trains the embedded SmolLM2 with LoRA and QLoRA through both backends (Unsloth, transformers + PEFT +
bitsandbytes); each run must learn, save, and reload with the same greedy answers, on the GPU and on the CPU.
Unsloth's padding-free and packed batches must give the padded batches' loss (no example sees another).
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from helpers import REPO, run_cli

from finetune_lab.checkpoints import load_checkpoint
from finetune_lab.evaluation import same_program
from finetune_lab.generation import generate
from finetune_lab.runtime import cuda_available, gpu, native_dtype

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not cuda_available(),
        reason="needs a CUDA GPU: run on a GPU machine "
        "(scripts/gpu_verify.sh); the CPU path is covered by test_train_tiny_model.py",
    ),
]
HAS = {name: importlib.util.find_spec(name) is not None for name in ("unsloth", "bitsandbytes")}


@pytest.mark.parametrize(
    "backend,method", [("unsloth", "lora"), ("unsloth", "qlora"), ("transformers", "lora"), ("transformers", "qlora")]
)
def test_cli_trains_saves_and_reloads_on_the_gpu(tmp_path, base_model_dir, backend, method):
    if backend == "unsloth" and not HAS["unsloth"]:
        pytest.skip("unsloth is not installed (pip install -r requirements-gpu.txt)")
    if method == "qlora" and not HAS["bitsandbytes"]:
        pytest.skip("bitsandbytes is not installed (pip install -r requirements-gpu.txt)")
    # 48 steps (3 s on a GPU): bf16 needs more than the CPU quick run's 16 to get the programs exactly right.
    done = run_cli(
        "--test_mode",
        "--max_steps",
        "48",
        "--backend",
        backend,
        "--method",
        method,
        "--output_dir",
        str(tmp_path),
        "--run_name",
        "gpu",
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"backend={backend} device=cuda" in done.stdout and f"method={method}" in done.stdout
    # bf16 on Ampere and newer, fp16 on a T4 (also under scripts/t4sim), whatever is_bf16_supported() says
    assert f"dtype={native_dtype(gpu())}" in done.stdout
    if backend == "unsloth":  # 48 steps: too few to repay the compile, unless the environment decides (the T4 run)
        decision = "off: as set" if os.environ.get("UNSLOTH_COMPILE_DISABLE") == "1" else "off: 48 optimizer steps"
        assert f"Unsloth compile {decision}" in done.stdout
    run = tmp_path / "gpu"
    losses = [h["loss"] for h in json.loads((run / "loss_history.json").read_text()) if "loss" in h]
    assert losses[-1] < 0.5 * losses[0]
    samples = json.loads((run / "samples.json").read_text())
    assert sum(bool(same_program(s["after"], s["reference"])) for s in samples[:3]) >= 2
    prompts = [s["messages"] for s in samples]
    model, tokenizer, _ = load_checkpoint(run, device="cuda")
    on_gpu = generate(model, tokenizer, prompts, max_new_tokens=96)
    print(
        json.dumps(
            {
                "backend": backend,
                "method": method,
                "dtype": native_dtype(gpu()),
                "losses": [losses[0], losses[-1]],
                "reload_identical_on_gpu": on_gpu == [s["after"] for s in samples],
            }
        )
    )
    assert on_gpu == [s["after"] for s in samples]  # token for token, as README says (4/4 on an H200, 2026-11-29)
    model, tokenizer, _ = load_checkpoint(run, device="cpu")  # a GPU checkpoint reloads on a CPU
    on_cpu = generate(model, tokenizer, prompts[:3], max_new_tokens=96)
    assert sum(bool(same_program(a, s["reference"])) for a, s in zip(on_cpu, samples)) >= 2


# Unsloth's two ways to attend over a packed row on a torch without a grouped-query varlen kernel:
# example by example (its default) and one dense block-diagonal mask (what the lab picks for short packed batches,
# finetune_lab.models.use_dense_packed_mask). Unsloth reads the setting once, at import: each needs a fresh process.
PACKED_ATTENTION = {"per example": "1", "one dense block mask": "0"}
LOSSES_IN_A_FRESH_PROCESS = """
import json, sys
from pathlib import Path
from test_training import padded_flat_and_mixed_losses
padded, flat, mixed, _ = padded_flat_and_mixed_losses(Path(sys.argv[1]), sys.argv[2], backend="unsloth",
                                                      model=sys.argv[3])
print(json.dumps(dict(padded=padded, flat=flat, mixed=mixed)))
"""


def unsloth_batch_losses(tmp_path, batching, attention, model_dir):
    """The padded, flat and mixed losses of padded_flat_and_mixed_losses, through Unsloth with `attention`."""
    done = subprocess.run(
        [sys.executable, "-c", LOSSES_IN_A_FRESH_PROCESS, str(tmp_path), batching, str(model_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "UNSLOTH_SDPA_PACKED_SEGMENTS": PACKED_ATTENTION[attention],
            "PYTHONPATH": os.pathsep.join(
                ["tests", "tests/finetune_lab", "labs/unsloth_finetune", os.environ.get("PYTHONPATH", "")]
            ),
        },
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "batching,attention",
    [("padding_free", "per example"), ("packing", "per example"), ("packing", "one dense block mask")],
)
def test_unsloth_padding_free_and_packed_batches_keep_examples_apart(tmp_path, base_model_dir, batching, attention):
    if not HAS["unsloth"]:
        pytest.skip("unsloth is not installed (pip install -r requirements-gpu.txt)")
    losses = unsloth_batch_losses(tmp_path, batching, attention, base_model_dir)
    print(json.dumps({"batching": batching, "attention": attention, **losses}))
    assert losses["flat"] == pytest.approx(losses["padded"], rel=2e-2)  # bf16: the sums run in another order
    assert abs(losses["mixed"] - losses["padded"]) > 5 * abs(losses["flat"] - losses["padded"])
