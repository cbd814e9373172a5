#!/usr/bin/env python
"""Module 04 lab, script twin of evaluate_model.ipynb: score a fine-tuned run against known outputs.

Who it is for: students checking "is my model ready?", instructors comparing runs, CI.
How to run (from the repository root):
    python labs/unsloth_finetune/evaluate_model.py checkpoints/smollm2-lora-r16
    python labs/unsloth_finetune/evaluate_model.py checkpoints/smollm2-lora-r16 --limit 4 --no_base   # quick look
It answers every prompt of the training and held-out files with the base model (adapter off) and the
fine-tuned model, scores the answers (accuracy, exact match, token F1, ROUGE-L, parses, hallucinated
API calls) and writes <run>/eval/: per_example.csv/.json, summary.json and scores.png.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run from a checkout without installing the package

from finetune_lab.checkpoints import CheckpointError  # noqa: E402
from finetune_lab.config import ConfigError  # noqa: E402
from finetune_lab.data import DatasetError  # noqa: E402
from finetune_lab.evaluation import DEFAULT_API, evaluate_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("run_dir", help="a finished run folder, e.g. checkpoints/smollm2-lora-r16")
    parser.add_argument("--data", nargs="+", default=["trained=data/course_train.jsonl",
                                                      "held-out=data/course_heldout.jsonl"],
                        help="NAME=FILE pairs to evaluate on")
    parser.add_argument("--api", default=str(DEFAULT_API), help="the course library's API stub (.pyi)")
    parser.add_argument("--limit", type=int, default=0, help="first N examples of each file only (0: all)")
    parser.add_argument("--max_new_tokens", type=int, default=96)
    parser.add_argument("--no_base", action="store_true", help="skip the base model (adapter off)")
    parser.add_argument("--wandb", action="store_true",
                        help="log the tables and plot to wandb (offline unless WANDB_API_KEY is set)")
    args = parser.parse_args(argv)
    try:
        data = dict(item.split("=", 1) for item in args.data)
    except ValueError:
        parser.error("--data takes NAME=FILE pairs, e.g. trained=data/course_train.jsonl")
    try:
        _, summary = evaluate_checkpoint(args.run_dir, data, args.api, compare_base=not args.no_base,
                                         limit=args.limit, max_new_tokens=args.max_new_tokens, wandb=args.wandb)
    except (CheckpointError, ConfigError, DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; the evaluation writes its files at the end, so nothing of it was written",
              file=sys.stderr)
        return 130
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nwritten: {Path(args.run_dir) / 'eval'}/per_example.csv, summary.json, scores.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
