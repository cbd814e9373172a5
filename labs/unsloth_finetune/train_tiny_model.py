#!/usr/bin/env python
"""Module 04 lab, script twin of train_model.ipynb: LoRA / QLoRA fine-tuning of a small chat model.

Who it is for: students who prefer a terminal to a notebook, instructors and CI.
How to run (from the repository root, after `make setup` or `pip install -e .`):
    python labs/unsloth_finetune/train_tiny_model.py                     # the default lab: SmolLM2-135M, LoRA r=16
    python labs/unsloth_finetune/train_tiny_model.py --test_mode           # a 16-step smoke run (~1 min on 2 cores)
    python labs/unsloth_finetune/train_tiny_model.py --rank 32 --run_name smollm2-lora-r32
    python labs/unsloth_finetune/train_tiny_model.py --model tinyllama-1.1b-chat --method qlora   # GPU + hub
    python labs/unsloth_finetune/train_tiny_model.py --resume              # continue an interrupted run
    accelerate launch --num_processes 2 labs/unsloth_finetune/train_tiny_model.py --method qlora   # 2 GPUs, DDP
It prints the backend, device and method it chose, trains with a progress bar, saves
checkpoints/<run_name>/ and ends with a summary (time, steps, losses, before/after answers).
"""

from __future__ import annotations

import argparse
import dataclasses
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

# The flags are TrainConfig's fields: their names, types, defaults and help text come from finetune_lab/config.py.
FLAG_TYPES = {"int": int, "float": float, "str": str, "str | None": str}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in dataclasses.fields(TrainConfig):
        # SUPPRESS: a flag not given stays out of the namespace, so --test_mode can tell given flags from defaults
        common = dict(default=argparse.SUPPRESS, help=f"{f.metadata['help']} (default: {f.default})")
        if f.type == "tuple[str, ...]":
            parser.add_argument(f"--{f.name}", nargs="+", **common)
        elif f.type in ("bool", "bool | None"):
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, **common)
        else:
            parser.add_argument(f"--{f.name}", type=FLAG_TYPES[f.type], **common)
    parser.add_argument(
        "--heldout",
        default="data/course_heldout.jsonl",
        help="held-out JSONL for one of the test prompts ('' for none)",
    )
    parser.add_argument(
        "--test_mode",
        action="store_true",
        help="tiny run: 16 examples, 16 steps, short sequences (tests and smoke checks); flags given beside it win",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run of the same name")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    return quick_config(**given) if args.test_mode else TrainConfig(**given)


def interrupted_message(cfg: TrainConfig) -> str:
    """What Ctrl-C outside the training loop left behind, and how to go on."""
    from finetune_lab.checkpoints import RunPaths, is_finished_run

    paths = RunPaths.of(cfg.output_dir, cfg.run_name)
    if is_finished_run(paths.run):
        return f"interrupted; the run is saved in {paths.run}"
    if paths.latest_resume_checkpoint() is not None:
        return (
            f"interrupted; {paths.latest_resume_checkpoint()} holds a resumable checkpoint: run the same "
            "command with --resume to continue"
        )
    return "interrupted before any checkpoint was saved; nothing of this run was kept. Run the command again"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = None
    try:
        cfg = config_from_args(args)
        from finetune_lab.phases import process_start_time
        from finetune_lab.training import TrainingInterrupted, run_lab

        try:
            lab = run_lab(
                cfg,
                overwrite=args.overwrite,
                resume=args.resume,
                heldout_path=args.heldout or None,
                started_at=process_start_time(),
            )
        except TrainingInterrupted as stop:
            print(f"\n{stop}", file=sys.stderr)
            return 130
    except (ConfigError, DatasetError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{interrupted_message(cfg) if cfg else 'interrupted'}", file=sys.stderr)
        return 130
    from finetune_lab.runtime import is_main_process

    if is_main_process():
        lab.print_summary()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()  # under accelerate launch: NCCL warns of leaked resources on exit otherwise
    return 0


if __name__ == "__main__":
    sys.exit(main())
