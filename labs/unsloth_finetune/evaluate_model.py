#!/usr/bin/env python
"""Module 04 lab, script twin of evaluate_model.ipynb: score a fine-tuned run against known outputs.

Who it is for: students checking "is my model ready?", instructors comparing runs, CI.
How to run (from the repository root):
    python labs/unsloth_finetune/evaluate_model.py checkpoints/smollm2-lora-r16
    python labs/unsloth_finetune/evaluate_model.py checkpoints/smollm2-lora-r16 --limit 4 --no_base   # quick look
    python labs/unsloth_finetune/evaluate_model.py checkpoints/my-run --train my_module03.jsonl [--heldout mine.jsonl]
It answers every prompt of the files the run trained and validated on (or those given) with the base model
(adapter off) and the fine-tuned model, scores the answers as code or prose (modules/05: accuracy, abstained,
hallucination rate, exact match, token F1, ROUGE-L, parses) and writes <run>/eval/ (eval-limitN/ with --limit):
per_example.csv/.json (the column "hallucinated" holds the invented calls or specifics), summary.json and
scores.png, replacing an earlier one only once complete. A rate that does not apply prints n/a.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from finetune_lab.checkpoints import (
    CheckpointError,
    RunPaths,
    check_writable,
    load_checkpoint,
    read_run_config,
    run_lock,
)
from finetune_lab.config import ConfigError, TrainConfig, at_least
from finetune_lab.data import DatasetError
from finetune_lab.evaluation import DEFAULT_API, evaluate_model, load_api, load_splits, run_data, save_evaluation
from finetune_lab.tracking import log_run_files, wandb_run


def eval_folder(args: argparse.Namespace) -> str:
    """eval/ for a full evaluation (the model card quotes it); eval-limitN/ for a quick look, kept beside it."""
    return f"eval-limit{args.limit}" if args.limit else "eval"


def evaluate(args: argparse.Namespace, data: dict[str, str], split_off: float) -> pd.DataFrame:
    """The notebook's section 4: every prompt answered by the base (adapter off) and the fine-tuned model, scored,
    and written to <run>/eval/. Returns the summary table."""
    api = load_api(args.api)  # a wrong path stops here, before the model loads
    run_dir = Path(args.run_dir)
    read_run_config(run_dir)  # not a run folder: said first
    check_writable(run_dir)  # a read-only run folder stops here too, before any answer is generated
    with run_lock(RunPaths.of(run_dir.parent, run_dir.name)):  # no training replaces the run meanwhile
        model, tokenizer, run_config = load_checkpoint(run_dir)
        max_new_tokens = args.max_new_tokens or run_config.get("max_new_tokens", TrainConfig.max_new_tokens)
        datasets = load_splits(data, run_config.get("system_prompt"), args.limit, split_off)
        tables = []
        if not args.no_base and hasattr(model, "disable_adapter"):  # full fine-tuning left no base to ask
            with model.disable_adapter():
                tables.append(evaluate_model(model, tokenizer, datasets, api, max_new_tokens, label="base"))
        tables.append(evaluate_model(model, tokenizer, datasets, api, max_new_tokens, label="fine-tuned"))
        table = pd.concat(tables, ignore_index=True)
        # a quick look (--limit) is kept beside the full evaluation, which the model card quotes, not over it
        summary = save_evaluation(run_dir, table, run_dir / eval_folder(args) if args.limit else None)
    if args.wandb:  # a wandb run named after the training run, offline unless WANDB_API_KEY is set
        cfg = TrainConfig.from_dict({**run_config, "wandb": True, "run_name": f"{run_dir.name}-eval"})
        with wandb_run(cfg, run_dir.parent):
            log_run_files(run_dir / eval_folder(args), table=table, table_name="eval")
            log_run_files(run_dir / eval_folder(args), table=summary, table_name="eval_summary")
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("run_dir", help="a finished run folder, e.g. checkpoints/smollm2-lora-r16")
    parser.add_argument(
        "--train", help="your training file (e.g. your Module 03 dataset), scored instead of the run's own"
    )
    parser.add_argument(
        "--heldout",
        help="your held-out file; without it, 20%% of --train is split off deterministically and scored as held out",
    )
    parser.add_argument(
        "--data", nargs="+", help="NAME=FILE pairs to evaluate on (default: the files the run trained and validated on)"
    )
    parser.add_argument("--api", default=str(DEFAULT_API), help="the course library's API stub (.pyi)")
    parser.add_argument("--limit", type=at_least(0), default=0, help="first N examples of each file only (0: all)")
    parser.add_argument(
        "--max_new_tokens", type=at_least(1), default=None, help="cap on each answer (default: the run's own cap)"
    )
    parser.add_argument("--no_base", action="store_true", help="skip the base model (adapter off)")
    parser.add_argument(
        "--wandb", action="store_true", help="log the tables and plot to wandb (offline unless WANDB_API_KEY is set)"
    )
    return parser


def data_files(args, parser) -> tuple[dict[str, str], float]:
    """The named files to score and the share of a lone --train file to split off as held out."""
    if args.data:
        try:
            return dict(item.split("=", 1) for item in args.data), 0.0
        except ValueError:
            parser.error("--data takes NAME=FILE pairs, e.g. trained=data/course_train.jsonl")
    if not args.train:
        train, heldout = run_data(read_run_config(args.run_dir))
        return {"trained": train, **({"held-out": heldout} if heldout else {})}, 0.0
    if args.heldout:
        return {"trained": args.train, "held-out": args.heldout}, 0.0
    print(
        f"no --heldout file: 20% of {args.train} is split off (the same examples every time) and scored "
        "as held out; they are truly held out only if the run was trained without them"
    )
    return {"trained": args.train}, 0.2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        data, split_off = data_files(args, parser)
        summary = evaluate(args, data, split_off)
    except (CheckpointError, ConfigError, DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. the disk filled up while the files were written
        print(f"error: the evaluation could not be saved ({err}); an earlier one is unchanged", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "\ninterrupted; the evaluation writes its files at the end, so nothing of it was written", file=sys.stderr
        )
        return 130
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="n/a"))
    print(f"\nwritten: {Path(args.run_dir) / eval_folder(args)}/per_example.csv, summary.json, scores.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
