#!/usr/bin/env python
"""Module 04 bonus, script twin of the last section of train_model.ipynb: LoRA rank 16 vs 32.

Who it is for: students doing the bonus exercise; instructors preparing the comparison slide.
How to run (from the repository root):
    python labs/unsloth_finetune/compare_ranks.py               # both ranks, full course data
    python labs/unsloth_finetune/compare_ranks.py --test_mode     # 16 examples, 16 steps each, 4 eval prompts
    python labs/unsloth_finetune/compare_ranks.py --ranks 8 16 32 --overwrite
Trains one run per rank with the same seed, data and settings (alpha = 2 x rank, so the update scale alpha/r stays
the same; every flag of train_tiny_model.py applies), overlays the loss curves and prints a table of training
time, trainable parameters, final and best validation loss and evaluation scores; both are saved as
<output_dir>/<run_name>-ranks.csv / .png next to the runs (<run_name>-r16, -r32).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from train_tiny_model import train

from finetune_lab.checkpoints import CheckpointError
from finetune_lab.config import ConfigError, TrainConfig, add_config_flags, config_from_args
from finetune_lab.data import DatasetError
from finetune_lab.evaluation import aggregate, evaluate_model, load_api, load_splits
from finetune_lab.plots import plot_losses
from finetune_lab.runtime import is_main_process


def compare_ranks(cfg: TrainConfig, ranks, heldout: str, overwrite: bool = False, eval_limit: int = 0):
    """One run per rank, evaluated on the training and held-out files; returns (table, figure)."""
    histories, rows = {}, []
    datasets = load_splits({"trained": cfg.data, "held-out": heldout}, cfg.system_prompt, eval_limit)
    api = load_api()
    for rank in ranks:
        run = train(cfg.replace(rank=rank, alpha=2 * rank, run_name=f"{cfg.run_name}-r{rank}"), heldout, overwrite)
        histories[f"rank {rank}"] = run.result.history
        row = {
            "rank": rank,
            "alpha": 2 * rank,
            "trainable_params": run.result.trainable_params,
            "train_seconds": round(run.result.seconds, 1),
            "steps": run.result.steps,
            "final_loss": round(run.result.losses[-1], 4),
            "best_validation_loss": run.summary.get("best_validation_loss"),
        }
        table = evaluate_model(run.model, run.tokenizer, datasets, api, cfg.max_new_tokens, label=f"r{rank}")
        for split, part in table.groupby("split", sort=False):
            for metric, value in aggregate(part).items():
                if metric in ("accuracy", "rouge_l", "hallucination_rate"):
                    row[f"{split} {metric}"] = round(value, 3)
        rows.append(row)
    table, out = pd.DataFrame(rows), Path(cfg.output_dir)
    main = is_main_process()  # under accelerate every process trains; one writes the comparison
    if main:
        table.to_csv(out / f"{cfg.run_name}-ranks.csv", index=False)
    title = "LoRA rank " + " vs ".join(str(r) for r in ranks)
    return table, plot_losses(histories, out / f"{cfg.run_name}-ranks.png" if main else None, title=title)


def main(argv: list[str] | None = None) -> int:
    parser = add_config_flags(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.set_defaults(run_name="smollm2-ranks")
    parser.add_argument("--ranks", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--heldout", default="data/course_heldout.jsonl", help="validation loss and held-out scores")
    parser.add_argument(
        "--eval_limit", type=int, help="score the first N examples of each file (default: all; 4 in test mode)"
    )
    parser.add_argument("--test_mode", action="store_true", help="tiny runs (tests and smoke checks)")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier runs of the same names")
    args = parser.parse_args(argv)
    eval_limit = args.eval_limit if args.eval_limit is not None else (4 if args.test_mode else 0)
    try:
        cfg = config_from_args(args, quick=args.test_mode)
        table, _ = compare_ranks(cfg, args.ranks, args.heldout, args.overwrite, eval_limit)
    except (ConfigError, DatasetError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if is_main_process():
        print(table.to_string(index=False))
        print(f"\nloss curves: {Path(cfg.output_dir) / (cfg.run_name + '-ranks.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
