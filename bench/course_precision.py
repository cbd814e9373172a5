#!/usr/bin/env python
"""The course run at TinyLlama-1.1B's size in fp16 (a Colab T4's precision) and bf16: step time, peak memory,
and the preflight's estimate of that peak (finetune_lab.memory) beside it.

Who it is for: maintainers filling in Module 04's memory table and checking the preflight's arithmetic. Needs a
CUDA GPU and the GPU stack; the hub is not needed. How to run, from the repository root:
    python bench/course_precision.py build DIR                 # TinyLlama shape, random weights, SmolLM2 tokenizer
    python bench/course_precision.py run DIR OUT.jsonl         # 4 cases, interleaved (a, b, b, a)
    python bench/course_precision.py table OUT.jsonl           # the markdown table
The model has TinyLlama-1.1B-Chat's layers with random weights (speed and memory do not depend on the values) and
the embedded SmolLM2's tokenizer, so the course examples have realistic token counts; its vocabulary is therefore
49,152 (TinyLlama: 32,000), 35M more embedding parameters. Each case is the CLI's default course run (Unsloth,
50 examples, 8 epochs, batch 8, r=16), fp16 cases under scripts/t4sim (the card reports a T4's compute
capability, so the lab picks fp16 as on Colab). Speed is the real card's, not a T4's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CASES = [("lora", "bfloat16"), ("lora", "float16"), ("qlora", "float16"), ("qlora", "bfloat16")]


def build(out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from finetune_lab.embedded import ensure_embedded_base
    from finetune_lab.shapes import PRESET_SHAPES

    values = dict(PRESET_SHAPES["tinyllama-1.1b-chat"])
    tokenizer = AutoTokenizer.from_pretrained(ensure_embedded_base())
    values.update(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    AutoModelForCausalLM.from_config(config).to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)


def estimate_mb(model_dir: Path, method: str, dtype: str) -> float:
    from transformers import AutoConfig

    from finetune_lab.config import TrainConfig
    from finetune_lab.memory import estimate, shape_of

    cfg = TrainConfig()
    shape = shape_of(AutoConfig.from_pretrained(model_dir), cfg.target_modules)
    return estimate(shape, method, dtype, cfg.rank, cfg.batch_size, cfg.max_seq_length, True).total_mb


def run(model_dir: Path, results: Path) -> None:
    for method, dtype in CASES:
        name = f"{method}-{dtype}"
        env = dict(os.environ)
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
                estimate_mb=round(estimate_mb(model_dir, method, dtype)),
            )
        print(json.dumps(row), flush=True)
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")


def table(results: Path) -> str:
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    out = [
        "| method | dtype (as chosen) | steps | training s | ms/step | peak GiB measured | preflight estimate GiB "
        "| estimate / measured |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r["rc"]:
            out.append(f"| {r['method']} | {r['dtype']} | failed (rc {r['rc']}) | | | | | |")
            continue
        out.append(
            f"| {r['method']} | {r['chosen_dtype']} ({r['device'].split(' (', 1)[-1][:-1]}) | {r['steps']} | "
            f"{r['train_seconds']} | {r['step_ms']} | {r['peak_mb'] / 1024:.2f} | {r['estimate_mb'] / 1024:.2f} | "
            f"{r['estimate_mb'] / r['peak_mb']:.2f}x |"
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
