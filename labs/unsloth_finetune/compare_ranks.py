#!/usr/bin/env python
"""Module 04 bonus, script twin of the last section of train_model.ipynb: LoRA rank 16 vs 32.

Who it is for: students doing the bonus exercise; instructors preparing the comparison slide.
How to run (from the repository root):
    python labs/unsloth_finetune/compare_ranks.py               # both ranks, full course data (~6 min on 2 CPU cores)
    python labs/unsloth_finetune/compare_ranks.py --test_mode     # 16 examples, 16 steps each, 4 eval prompts
    python labs/unsloth_finetune/compare_ranks.py --ranks 8 16 32 --overwrite
Trains one run per rank with the same seed and data (alpha = 2 x rank), overlays the loss curves and
prints a table of training time, trainable parameters, final loss and evaluation scores; both are saved
as checkpoints/<run_name>-ranks.csv / .png next to the runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run from a checkout without installing the package
from finetune_lab.runtime import processes  # noqa: E402

if processes().world_size == 1:
    # One process trains on one GPU (else Trainer wraps the model in nn.DataParallel, which TRL refuses);
    # more GPUs: `accelerate launch --num_processes N ...`.
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")

from finetune_lab.checkpoints import CheckpointError  # noqa: E402
from finetune_lab.config import ConfigError, TrainConfig, quick_config  # noqa: E402
from finetune_lab.data import DatasetError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--model", default=TrainConfig.model)
    parser.add_argument("--data", default=TrainConfig.data)
    parser.add_argument("--heldout", default="data/course_heldout.jsonl")
    parser.add_argument("--output_dir", default=TrainConfig.output_dir)
    parser.add_argument("--run_name", default="smollm2-ranks", help="runs are named <run_name>-r<rank>")
    parser.add_argument("--test_mode", action="store_true", help="tiny runs (tests and smoke checks)")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier runs of the same names")
    args = parser.parse_args(argv)
    from finetune_lab.comparisons import compare_ranks

    common = dict(model=args.model, data=args.data, output_dir=args.output_dir, run_name=args.run_name)
    try:
        cfg = quick_config(**common) if args.test_mode else TrainConfig(**common)
        table, _ = compare_ranks(
            cfg,
            args.ranks,
            overwrite=args.overwrite,
            eval_data={"trained": args.data, "held-out": args.heldout},
            eval_limit=4 if args.test_mode else 0,
        )
    except (ConfigError, DatasetError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table.drop(columns=["run"]).to_string(index=False))
    print(f"\nloss curves: {Path(args.output_dir) / (args.run_name + '-ranks.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
