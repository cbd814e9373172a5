#!/usr/bin/env python
"""Module 04 lab, script twin of train_model.ipynb: LoRA / QLoRA fine-tuning of a small chat model.

Who it is for: students who prefer a terminal to a notebook, instructors and CI.
How to run (from the repository root, after `make setup` or `pip install -e .`):
    python labs/unsloth_finetune/train_tiny_model.py                       # the default lab: SmolLM2-135M, LoRA r=16, CPU ok
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
if "WORLD_SIZE" not in os.environ:
    # One process trains on one GPU (else Trainer wraps the model in nn.DataParallel, which TRL refuses);
    # more GPUs: `accelerate launch --num_processes N ...`.
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")
sys.path.insert(0, str(REPO))  # run from a checkout without installing the package

from finetune_lab.checkpoints import CheckpointError  # noqa: E402
from finetune_lab.config import ConfigError, TrainConfig, quick_config  # noqa: E402
from finetune_lab.data import DatasetError  # noqa: E402
from finetune_lab.models import PRESETS  # noqa: E402

HELP = {
    "model": f"preset ({', '.join(PRESETS)}), hub id or local folder",
    "data": "training JSONL (alpaca, chat or prompt/completion schema)",
    "method": "lora | qlora (4-bit base, CUDA only) | full",
    "backend": "auto | unsloth | transformers",
    "dtype": "auto | bfloat16 | float16 | float32; auto: bf16 on Ampere and newer, fp16 on older cards such as "
             "Colab's T4, fp32 on a CPU",
    "rank": "LoRA rank r: capacity of the adapter (16 or 32 in this lab)",
    "alpha": "LoRA alpha: the update is scaled by alpha/r",
    "epochs": "passes over the data (ignored when --max_steps > 0)",
    "batch_size": "examples per device per step",
    "learning_rate": "peak learning rate (linear decay)",
    "max_steps": "stop after this many optimizer steps (> 0)",
    "padding_free": "batches without pad tokens (examples end to end, attention kept per example)",
    "packing": "fill each row with several whole examples up to --max_seq_length: more tokens per step, "
               "fewer steps per epoch (on a GPU the fastest way through the course data)",
    "output_dir": "folder that holds run folders",
    "run_name": "name of this run's folder under --output_dir",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        default = getattr(defaults, f.name)
        name = f"--{f.name}"
        if f.name == "target_modules":
            parser.add_argument(name, nargs="+", default=list(default), help="linear layers that get LoRA")
        elif isinstance(default, bool) or f.name == "gradient_checkpointing":
            parser.add_argument(name, action=argparse.BooleanOptionalAction, default=default, help=HELP.get(f.name))
        else:
            kind = float if isinstance(default, float) else int if isinstance(default, int) else str
            parser.add_argument(name, type=kind, default=default, help=HELP.get(f.name))
    parser.add_argument("--heldout", default="data/course_heldout.jsonl",
                        help="held-out JSONL for one of the test prompts ('' for none)")
    parser.add_argument("--test_mode", action="store_true",
                        help="tiny run: 16 examples, 16 steps, short sequences (tests and smoke checks)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run of the same name")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    if not args.test_mode:
        return TrainConfig(**given)
    defaults = TrainConfig().to_dict()
    defaults["target_modules"] = list(defaults["target_modules"])
    changed = {k: v for k, v in given.items() if v != defaults[k]}  # flags given on the command line win
    return quick_config(**changed)


def interrupted_message(cfg: TrainConfig) -> str:
    """What Ctrl-C outside the training loop left behind, and how to go on."""
    from finetune_lab.checkpoints import RunPaths, is_finished_run
    paths = RunPaths.of(cfg.output_dir, cfg.run_name)
    if is_finished_run(paths.run):
        return f"interrupted; the run is saved in {paths.run}"
    if paths.latest_resume_checkpoint() is not None:
        return (f"interrupted; {paths.latest_resume_checkpoint()} holds a resumable checkpoint: run the same "
                "command with --resume to continue")
    return "interrupted before any checkpoint was saved; nothing of this run was kept. Run the command again"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = None
    try:
        cfg = config_from_args(args)
        from finetune_lab.training import TrainingInterrupted, run_lab
        try:
            lab = run_lab(cfg, overwrite=args.overwrite, resume=args.resume, heldout_path=args.heldout or None)
        except TrainingInterrupted as stop:
            print(f"\n{stop}", file=sys.stderr)
            return 130
    except (ConfigError, DatasetError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{interrupted_message(cfg) if cfg else 'interrupted'}", file=sys.stderr)
        return 130
    from finetune_lab.models import is_main_process
    if is_main_process():
        lab.print_summary()
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()   # under accelerate launch: NCCL warns of leaked resources on exit otherwise
    return 0


if __name__ == "__main__":
    sys.exit(main())
