#!/usr/bin/env python
"""Recipe benchmark: which training recipe reaches the default's scores on the course data in the least time?

Who it is for: maintainers choosing the default recipe (CPU: laptops and CI pay for every step). How to run, from
the repository root:
    python bench/recipes.py run OUT.jsonl [RECIPE ...]     # every recipe x 3 seeds, one after the other
    python bench/recipes.py table OUT.jsonl [PLOT.png]      # mean and range over seeds, ratios to the default
Each run trains the embedded SmolLM2-135M with the lab's own train() (train_tiny_model.py) on
data/course_train.jsonl (50 examples), then answers all 50 trained and 12 held-out prompts greedily (96 new tokens)
and scores them (accuracy as in modules/05). The default recipe is a row of the same run, so the ratios compare
like with like.
"""

from __future__ import annotations

import json
import runpy
import statistics
import sys
import tempfile
import time
from pathlib import Path

from finetune_lab.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]

SEEDS = (42, 7, 1234)
# name -> the settings that differ from TrainConfig's defaults (epochs 8, lr 1e-3 linear, r16/alpha32, batch 8)
RECIPES = {
    "default": {},
    "3 epochs, lr 2e-3": dict(epochs=3, learning_rate=2e-3),
    "3 epochs, lr 3e-3": dict(epochs=3, learning_rate=3e-3),
    "4 epochs, lr 2e-3": dict(epochs=4, learning_rate=2e-3),
    "batch 4, 3 epochs, lr 2e-3": dict(batch_size=4, epochs=3, learning_rate=2e-3),
    # half the tokens per step, about as many updates as the default (52 vs 56): each step costs about half
    "batch 4, 4 epochs": dict(batch_size=4, epochs=4),
    "batch 4, 4 epochs, lr 2e-3": dict(batch_size=4, epochs=4, learning_rate=2e-3),
    # packed rows carry no padding: the same 8 epochs in fewer, fuller steps (16 instead of 56)
    "packed, 8 epochs, lr 2e-3": dict(packing=True, learning_rate=2e-3),
}


def run_one(name: str, seed: int, out: Path) -> dict:
    from finetune_lab.evaluation import aggregate, evaluate_model, load_api, load_splits

    train = runpy.run_path(str(REPO / "labs/unsloth_finetune/train_tiny_model.py"))["train"]  # the lab's own run
    cfg = TrainConfig(**RECIPES[name], seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        # 8-token test answers: the before/after samples are not what this benchmark scores
        lab = train(cfg.replace(output_dir=tmp, run_name="r", max_new_tokens=8))
        splits = load_splits({"trained": cfg.data, "held-out": "data/course_heldout.jsonl"}, cfg.system_prompt)
        start = time.perf_counter()
        table = evaluate_model(lab.model, lab.tokenizer, splits, load_api(), max_new_tokens=96)
    scores = {split: aggregate(part)["accuracy"] for split, part in table.groupby("split")}
    row = {
        "recipe": name,
        "seed": seed,
        "steps": lab.result.steps,
        "train_seconds": round(lab.result.seconds, 1),
        "final_loss": round(lab.result.losses[-1], 4),
        "trained_accuracy": round(scores["trained"], 3),
        "heldout_accuracy": round(scores["held-out"], 3),
        "eval_seconds": round(time.perf_counter() - start, 1),
    }
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
    return row


def table(results: Path, plot: Path | None = None) -> str:
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    by = {}
    for r in rows:
        by.setdefault(r["recipe"], []).append(r)
    base = statistics.mean(r["train_seconds"] for r in by["default"])
    out = [
        "| recipe | seeds | steps | training s (mean, range) | vs default | trained acc (mean, min) "
        "| held-out acc (mean, min) | target met |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, runs in by.items():
        secs = [r["train_seconds"] for r in runs]
        tr = [r["trained_accuracy"] for r in runs]
        ho = [r["heldout_accuracy"] for r in runs]
        ratio = statistics.mean(secs) / base
        met = min(tr) >= 0.95 and min(ho) >= 0.90 and ratio <= 0.5
        out.append(
            f"| {name} | {len(runs)} | {runs[0]['steps']} | {statistics.mean(secs):.1f} ({min(secs):.1f}-"
            f"{max(secs):.1f}) | {ratio:.2f}x | {statistics.mean(tr):.3f} ({min(tr):.3f}) | "
            f"{statistics.mean(ho):.3f} ({min(ho):.3f}) | {'yes' if met else 'no'} |"
        )
    if plot is not None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        for name, runs in by.items():
            ax.scatter([r["train_seconds"] for r in runs], [r["heldout_accuracy"] for r in runs], label=name)
        ax.axhline(0.90, color="grey", lw=0.8, ls="--")
        ax.axvline(base / 2, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("training seconds (2 CPU cores)")
        ax.set_ylabel("held-out accuracy")
        ax.set_title("Recipes: time vs held-out accuracy (3 seeds each)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(plot, dpi=110)
    return "\n".join(out)


if __name__ == "__main__":
    verb, path = sys.argv[1], Path(sys.argv[2])
    if verb == "run":
        names = sys.argv[3:] or list(RECIPES)
        for seed in SEEDS:  # seeds outermost: every recipe sees the machine in the same state
            for name in names:
                run_one(name, seed, path)
    elif verb == "table":
        print(table(path, Path(sys.argv[3]) if len(sys.argv) > 3 else None))
    else:
        sys.exit(__doc__)
