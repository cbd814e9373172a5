#!/usr/bin/env python
"""Run the hub presets' architectures through the lab's CLI on a CUDA GPU, on both backends.

Who it is for: maintainers checking that TinyLlama-1.1B-Chat and StableLM-2-Zephyr-1.6B still train through
Unsloth and through transformers + PEFT, on a machine without hub access (weights are random, built from
each preset's config by bench/shapes.py; the tokenizer is a toy one with the Zephyr chat template).
How to run, from the repository root:   python bench/check_presets.py [OUT_DIR]
(PRESETS="tinyllama-1.1b-chat" limits the presets; each runs LoRA and QLoRA on both backends, or the
COMBOS given, e.g. COMBOS="unsloth:qlora transformers:qlora".)
Prints one JSON line per (preset, backend, method): exit code, steps, first/last loss, seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from shapes import PRESET_SHAPES, build_preset_shape

REPO = Path(__file__).resolve().parents[1]

COMBOS = [("unsloth", "lora"), ("transformers", "lora"), ("unsloth", "qlora"), ("transformers", "qlora")]


def main(out: Path) -> int:
    failures = 0
    combos = [tuple(c.split(":")) for c in os.environ["COMBOS"].split()] if os.environ.get("COMBOS") else COMBOS
    for preset in os.environ.get("PRESETS", " ".join(PRESET_SHAPES)).split():
        model_dir = Path("/tmp/preset-shapes") / preset
        if not (model_dir / "config.json").exists():
            build_preset_shape(preset, model_dir)
        for backend, method in combos:
            run_name = f"{preset}-{backend}-{method}"
            start = time.perf_counter()
            done = subprocess.run(
                [
                    sys.executable,
                    str(REPO / "labs/unsloth_finetune/train_tiny_model.py"),
                    "--model",
                    str(model_dir),
                    "--backend",
                    backend,
                    "--method",
                    method,
                    # the toy tokenizer spells words byte by byte: 512 tokens hold an example
                    "--test_mode",
                    "--max_steps",
                    "4",
                    "--max_seq_length",
                    "512",
                    "--output_dir",
                    str(out),
                    "--run_name",
                    run_name,
                    "--overwrite",
                ],
                capture_output=True,
                text=True,
                cwd=REPO,
            )
            (out / f"{run_name}.log").write_text(done.stdout[-20000:] + done.stderr[-20000:])
            row = {
                "preset": preset,
                "backend": backend,
                "method": method,
                "rc": done.returncode,
                "seconds": round(time.perf_counter() - start, 1),
            }
            history = out / run_name / "loss_history.json"
            if history.exists():
                losses = [h["loss"] for h in json.loads(history.read_text()) if "loss" in h]
                row.update(steps=len(losses), first_loss=round(losses[0], 3), last_loss=round(losses[-1], 3))
            else:
                row["error"] = (done.stderr.strip().splitlines() or ["?"])[-1][:300]
            failures += done.returncode != 0
            print(json.dumps(row), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/preset-runs")
    target.mkdir(parents=True, exist_ok=True)
    sys.exit(main(target))
