#!/usr/bin/env python
"""The course run at TinyLlama-1.1B's size in fp16 (a Colab T4's precision) and bf16: step time, peak memory,
and the preflight's estimate of that peak (finetune_lab.memory) beside it.

Who it is for: maintainers filling in Module 04's memory table and checking the preflight's arithmetic. Needs a
CUDA GPU and the GPU stack; the hub is not needed. How to run, from the repository root:
    python bench/course_precision.py build DIR                 # TinyLlama shape, random weights, SmolLM2 tokenizer
    python bench/course_precision.py run DIR OUT.jsonl         # 4 cases, interleaved (a, b, b, a)
    python bench/course_precision.py table OUT.jsonl           # the markdown table (no GPU needed)
    python bench/course_precision.py table bench/results/course-precision-h200-2026-11-29.jsonl   # the published one
The model has TinyLlama-1.1B-Chat's layers with random weights (speed and memory do not depend on the values) and
the embedded SmolLM2's tokenizer, so the course examples have realistic token counts; its vocabulary is therefore
49,152 (TinyLlama: 32,000), 35M more embedding parameters. Each case is the CLI's default course run (Unsloth,
50 examples, 8 epochs, batch 8, r=16), fp16 cases under scripts/t4sim (the card reports a T4's compute
capability, so the lab picks fp16 as on Colab). Speed is the real card's, not a T4's. Every case runs with
UNSLOTH_COMPILE_DISABLE=1: under the simulation Unsloth would compile kernels for a T4 that the real card cannot run
(scripts/gpu_verify.sh), and fp16 and bf16 must be compared on the same footing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = [("lora", "bfloat16"), ("lora", "float16"), ("qlora", "float16"), ("qlora", "bfloat16")]


def course_model_config():
    """TinyLlama-1.1B's layers with the embedded SmolLM2's tokenizer, and that tokenizer."""
    from shapes import PRESET_SHAPES
    from transformers import AutoConfig, AutoTokenizer

    from finetune_lab.embedded import ensure_embedded_base

    values = dict(PRESET_SHAPES["tinyllama-1.1b-chat"])
    tokenizer = AutoTokenizer.from_pretrained(ensure_embedded_base())
    values.update(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return AutoConfig.for_model(values.pop("model_type"), **values), tokenizer


def build(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    config, tokenizer = course_model_config()
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)


def course_shape(config):
    """What the memory arithmetic needs to know about the model, counted once on the meta device."""
    from finetune_lab.config import TrainConfig
    from finetune_lab.memory import shape_of

    return shape_of(config, TrainConfig().target_modules)


def estimate_mb(shape, method: str, dtype: str, tokens_per_row: int | None = None) -> float:
    """The preflight's estimate (every row max_seq_length tokens long), or the same arithmetic at a given length."""
    from finetune_lab.config import TrainConfig
    from finetune_lab.memory import estimate

    cfg = TrainConfig(method=method)
    return estimate(shape, cfg.replace(max_seq_length=tokens_per_row or cfg.max_seq_length), dtype, True).total_mb


def longest_course_row(tokenizer) -> int:
    """Tokens in the longest training row: the collator pads each batch to its longest row, not to max_seq_length."""
    from finetune_lab.config import TrainConfig
    from finetune_lab.data import load_jsonl

    rows = load_jsonl(REPO / TrainConfig().data).trl_rows()
    return max(
        len(tokenizer(tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=False))["input_ids"])
        for r in rows
    )


def run(model_dir: Path, results: Path) -> None:
    from transformers import AutoConfig

    shape = course_shape(AutoConfig.from_pretrained(model_dir))
    for method, dtype in CASES:
        name = f"{method}-{dtype}"
        env = {**os.environ, "UNSLOTH_COMPILE_DISABLE": "1"}
        if dtype == "float16":
            env["PYTHONPATH"] = f"{REPO / 'scripts' / 't4sim'}:{env.get('PYTHONPATH', '')}"
        done = subprocess.run(
            [
                sys.executable,
                str(REPO / "labs/unsloth_finetune/train_tiny_model.py"),
                "--model",
                str(model_dir),
                "--method",
                method,
                "--heldout",
                "",
                "--output_dir",
                str(results.parent / "runs"),
                "--run_name",
                name,
                "--overwrite",
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env,
        )
        (results.parent / f"{name}.log").write_text(done.stdout[-20000:] + done.stderr[-20000:])
        row = {"method": method, "dtype": dtype, "rc": done.returncode}
        summary = results.parent / "runs" / name / "summary.json"
        if summary.exists():
            s = json.loads(summary.read_text())
            row.update(
                device=s["device"],
                chosen_dtype=s["dtype"],
                backend=s["backend"],
                steps=s["steps"],
                train_seconds=s["train_seconds"],
                step_ms=round(1000 * s["train_seconds"] / s["steps"], 1),
                peak_mb=s["peak_memory_mb"],
                first_loss=s["first_loss"],
                last_loss=s["last_loss"],
                estimate_mb=round(estimate_mb(shape, method, dtype)),
            )
        print(json.dumps(row), flush=True)
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")


def table(results: Path) -> str:
    """Needs no GPU: the estimate at the longest row is recomputed here from the same arithmetic."""
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    config, tokenizer = course_model_config()
    shape, longest = course_shape(config), longest_course_row(tokenizer)
    out = [
        f"| method | dtype (as chosen) | steps | training s | ms/step | peak GiB measured | preflight estimate GiB "
        f"(rows of max_seq_length) | estimate at the longest row ({longest} tokens) GiB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r["rc"]:
            out.append(f"| {r['method']} | {r['dtype']} | failed (rc {r['rc']}) | | | | | |")
            continue
        at_longest = estimate_mb(shape, r["method"], r["chosen_dtype"], longest)
        out.append(
            f"| {r['method']} | {r['chosen_dtype']} ({r['device'].split(' (', 1)[-1][:-1]}) | {r['steps']} | "
            f"{r['train_seconds']} | {r['step_ms']} | {r['peak_mb'] / 1024:.2f} | "
            f"{r['estimate_mb'] / 1024:.2f} ({r['estimate_mb'] / r['peak_mb']:.2f}x) | "
            f"{at_longest / 1024:.2f} ({at_longest / r['peak_mb']:.2f}x) |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    verb = sys.argv[1]
    if verb == "build":
        build(Path(sys.argv[2]))
    elif verb == "run":
        run(Path(sys.argv[2]), Path(sys.argv[3]))
    elif verb == "table":
        print(table(Path(sys.argv[2])))
    else:
        sys.exit(__doc__)
