#!/usr/bin/env python
"""Module 04 lab, script twin of train_model.ipynb: LoRA / QLoRA fine-tuning of a small chat model.

Who it is for: students who prefer a terminal to a notebook, instructors and CI.
How to run (from the repository root, after `make setup`):
    python labs/unsloth_finetune/train_tiny_model.py                     # the default lab: SmolLM2-135M, LoRA r=16
    python labs/unsloth_finetune/train_tiny_model.py --test_mode           # a 16-step smoke run (~1 min on 2 cores)
    python labs/unsloth_finetune/train_tiny_model.py --rank 32 --run_name smollm2-lora-r32
    python labs/unsloth_finetune/train_tiny_model.py --model tinyllama-1.1b-chat --method qlora   # GPU + hub
    python labs/unsloth_finetune/train_tiny_model.py --resume              # continue an interrupted run
    accelerate launch --num_processes 2 labs/unsloth_finetune/train_tiny_model.py --method qlora   # 2 GPUs, DDP
It prints the backend, device and method it chose, trains with a progress bar, saves checkpoints/<run_name>/ and
ends with a summary (time, steps, losses, before/after answers).

It reads like the notebook: the same library calls in the same order (data, model, adapters, answers before,
SFTConfig and SFTTrainer, training, answers after, save), one function per notebook section, run top to bottom by
train(). The package (finetune_lab) holds what neither shows: validation, device and dtype, run folders, reports.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from dataclasses import dataclass

import psutil

from finetune_lab.checkpoints import (
    CheckpointError,
    RunPaths,
    is_finished_run,
    prepare_run,
    replacing_note,
    run_lock,
    writing_run,
)
from finetune_lab.config import ConfigError, TrainConfig, add_config_flags, config_from_args
from finetune_lab.data import DatasetError, check_chat_markers, count_too_long, heldout_overlap, load_jsonl
from finetune_lab.generation import generate
from finetune_lab.models import (
    adapters_off,
    check_target_modules,
    choose_backend,
    for_inference,
    for_training,
    gradient_checkpointing_choice,
    import_backend,
    nf4_config,
    resolve_model,
    use_dense_packed_mask,
    weights_dtype,
)
from finetune_lab.phases import Phases
from finetune_lab.runtime import is_main_process, processes
from finetune_lab.tracking import log_run_files, wandb_run
from finetune_lab.training import (
    TrainingDiverged,
    TrainingInterrupted,
    check_resume,
    check_validation,
    data_record,
    effective_batch_size,
    keep_fp16_master_weights,
    pick_test_prompts,
    print_summary,
    run_record,
    run_trainer,
    samples_of,
    sft_plumbing,
    stop_on_divergence,
    summary,
    trainer_class,
    write_run_files,
)


def load_data(cfg: TrainConfig, heldout_path: str | None):
    """Section 1: every line of the training and held-out files checked before a model loads."""
    train_data = load_jsonl(cfg.data, cfg.system_prompt)
    heldout = load_jsonl(heldout_path, cfg.system_prompt) if heldout_path else None
    if cfg.limit_examples:
        train_data.examples = train_data.examples[: cfg.limit_examples]
    if cfg.limit_heldout and heldout is not None:
        heldout.examples = heldout.examples[: cfg.limit_heldout]
    overlap = heldout_overlap(train_data, heldout) if heldout is not None else None
    if overlap:
        train_data.warnings.append(overlap)
    return train_data, heldout


def load_model(cfg: TrainConfig, choice):
    """Section 3: the base model and its tokenizer, through Unsloth on a CUDA GPU, else transformers."""
    import torch

    model_path = resolve_model(cfg.model)
    dtype = getattr(torch, weights_dtype(choice))
    on_gpu = {"device_map": {"": processes().local_rank}} if choice.on_gpu else {}
    if choice.backend == "unsloth":
        from unsloth import FastLanguageModel

        model, tokenizer = FastLanguageModel.from_pretrained(
            model_path,
            max_seq_length=cfg.max_seq_length,
            dtype=dtype,
            load_in_4bit=cfg.method == "qlora",
            full_finetuning=cfg.method == "full",
            **on_gpu,
        )
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(
            model_path,
            dtype=dtype,
            quantization_config=nf4_config(dtype) if cfg.method == "qlora" else None,
            **({**on_gpu, "attn_implementation": "sdpa"} if choice.on_gpu else {}),
        )
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:  # batches are padded to their longest example; the end token can pad
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def add_adapters(model, cfg: TrainConfig, choice, checkpointing: bool):
    """Section 5: LoRA on the target layers (full fine-tuning trains the model as it is)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.method == "full":
        if checkpointing:
            model.gradient_checkpointing_enable()
        return model
    check_target_modules(model, cfg.target_modules, cfg.model)
    if choice.backend == "unsloth":
        from unsloth import FastLanguageModel

        return FastLanguageModel.get_peft_model(
            model,
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=sorted(cfg.target_modules),
            bias="none",
            use_gradient_checkpointing="unsloth" if checkpointing else False,
            random_state=cfg.seed,
        )
    if cfg.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    elif checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def model_for_training(cfg: TrainConfig, phases: Phases, examples: int):
    """Sections 3 to 5: the backend for this machine, the base model, and its adapters; and the choice made.
    `examples`: how many the run trains on (Unsloth's compile is decided from the run's length)."""
    choice = choose_backend(cfg)
    with phases("import libraries"):
        import_backend(choice, cfg, examples)  # Unsloth first: it patches transformers, TRL and PEFT when imported
    print(f"[finetune_lab] {choice}")
    if use_dense_packed_mask(cfg, choice):  # Unsloth reads it at its first packed batch; a value you set wins
        os.environ.setdefault("UNSLOTH_SDPA_PACKED_SEGMENTS", "0")
    import torch

    torch.manual_seed(cfg.seed)  # LoRA's A matrices start random: the same seed gives the notebook's run
    with phases("load model"):
        model, tokenizer = load_model(cfg, choice)
    with phases("add adapters"):
        checkpointing, why = gradient_checkpointing_choice(cfg, choice)
        print(f"[finetune_lab] gradient checkpointing {why}")
        model = add_adapters(model, cfg, choice, checkpointing)
    return model, tokenizer, choice


def training_args(cfg: TrainConfig, choice, output_dir, validation: bool, **overrides):
    """Section 7: SFTConfig, the settings that matter spelled out (the notebook comments each), on sft_plumbing."""
    from trl import SFTConfig

    args = dict(
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=2,
        weight_decay=0.0,
        completion_only_loss=True,
        packing=cfg.packing,
        bf16=choice.on_gpu and choice.dtype == "bfloat16",
        fp16=choice.on_gpu and choice.dtype == "float16",
        logging_steps=1,
        eval_strategy="epoch" if validation else "no",
        report_to=["wandb"] if cfg.wandb else "none",
    )
    return SFTConfig(**{**sft_plumbing(cfg, choice, output_dir, validation), **args, **overrides})


def make_trainer(model, tokenizer, cfg: TrainConfig, args, train_data, heldout=None):
    """Section 7: SFTTrainer over prompt/completion rows (or rows already tokenized, as the benchmark's)."""
    from datasets import Dataset as HFDataset
    from transformers import EarlyStoppingCallback

    def rows(data):
        return data if isinstance(data, HFDataset) else HFDataset.from_list(data.trl_rows())

    callbacks = [stop_on_divergence()]  # a NaN or exploding loss ends the run unsaved, with what to lower
    if cfg.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    trainer = trainer_class()(
        model=model,
        args=args,
        train_dataset=rows(train_data),
        eval_dataset=rows(heldout) if heldout is not None else None,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    keep_fp16_master_weights(trainer)
    return trainer


def data_warnings(cfg: TrainConfig, train_data, tokenizer) -> list[str]:
    """What the student should know about the data before training: duplicates, batches, long examples."""
    world = processes().world_size
    batch = effective_batch_size(cfg, len(train_data), world)
    warnings = list(train_data.warnings)
    if cfg.batch_size * world > len(train_data):
        warnings.append(
            f"batch_size {cfg.batch_size} x {world} process(es) is more than the {len(train_data)} examples: every "
            f"step trains on all of them (effective batch size {batch})"
        )
    if is_main_process():
        unit = f"rows of up to {cfg.max_seq_length} packed tokens" if cfg.packing else "examples"
        print(
            f"[finetune_lab] effective batch size {batch} {unit} = {batch // (cfg.grad_accum * world)} per device x "
            f"{cfg.grad_accum} accumulation x {world} process(es)"
        )
    too_long = count_too_long(train_data, tokenizer, cfg.max_seq_length)
    if too_long == len(train_data):
        raise ConfigError(
            f"every example of {cfg.data} is longer than max_seq_length={cfg.max_seq_length} tokens, so every "
            "answer would be cut short or lost; raise max_seq_length (--max_seq_length)"
        )
    if too_long:
        fate = "truncated (their end is cut)" if cfg.truncates_long_examples else "kept whole (padding-free batches)"
        warnings.append(
            f"{too_long} example(s) exceed max_seq_length={cfg.max_seq_length} tokens and are {fate}; raise "
            "max_seq_length (--max_seq_length) to cover them"
        )
    for warning in warnings:
        print(f"[finetune_lab] warning: {warning}")
    return warnings


@dataclass
class Run:
    """What train() did: the summary's numbers, the answers, and the trained model."""

    config: TrainConfig
    result: object  # finetune_lab.training.TrainResult
    summary: dict
    samples: list[dict]
    warnings: list[str]
    model: object
    tokenizer: object


def train(cfg: TrainConfig, heldout_path=None, overwrite=False, resume=False, callbacks=(), started_at=None) -> Run:
    """The lab from data to saved run folder, in the notebook's order; `started_at` (a time.time() stamp) gives
    the wall time to the saved weights."""
    train_data, heldout = load_data(cfg, heldout_path)
    check_validation(cfg, validation=heldout is not None)
    data = data_record(train_data, heldout)
    paths, phases = RunPaths.of(cfg.output_dir, cfg.run_name), Phases()
    # one lock per run, taken by the main process; the data-parallel processes of the run share it
    with run_lock(paths) if is_main_process() else contextlib.nullcontext():
        prepare_run(cfg.output_dir, cfg.run_name, overwrite=overwrite, resume=resume)
        if overwrite and (note := replacing_note(paths)):
            print(f"[finetune_lab] {note}")
        if resume:
            check_resume(paths, cfg, data)
        model, tokenizer, choice = model_for_training(cfg, phases, len(train_data))
        for dataset in (train_data, heldout):
            if dataset is not None:
                check_chat_markers(dataset, tokenizer, cfg.model)
        warnings = data_warnings(cfg, train_data, tokenizer)
        prompts, references = pick_test_prompts(train_data, heldout)
        for_inference(model, choice)
        with phases("generate before"), adapters_off(model):
            before = generate(model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens)
        if not resume and is_main_process():
            shutil.rmtree(paths.resume, ignore_errors=True)  # --overwrite: the stale interrupted state of this name
        for_training(model, choice)
        with phases("build trainer (tokenize)"):
            args = training_args(cfg, choice, paths.resume, validation=heldout is not None)
            trainer = make_trainer(model, tokenizer, cfg, args, train_data, heldout)
        for callback in callbacks:
            trainer.add_callback(callback)
        with wandb_run(cfg, paths.run.parent):
            try:
                result = run_trainer(
                    trainer, cfg, paths, paths.latest_resume_checkpoint() if resume else None, phases, data
                )
            except TrainingDiverged:
                shutil.rmtree(paths.resume, ignore_errors=True)  # nothing worth resuming
                raise
            for_inference(model, choice)
            with phases("generate after"):
                after = generate(model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens)
            run = Run(cfg, result, {}, samples_of(prompts, references, before, after), warnings, model, tokenizer)
            if is_main_process():  # one writer: the other data-parallel processes hold the same weights
                run.summary = save(run, choice, paths, (train_data, heldout), phases, started_at)
    return run


def save(run: Run, choice, paths: RunPaths, data: tuple, phases: Phases, started_at: float | None) -> dict:
    """Section 10: the run folder, written atomically (adapter, tokenizer, settings, history, curve, answers);
    `data`: the training and held-out Datasets."""
    with writing_run(paths, run_record(run.config, choice, run.model, *data)) as folder:
        with phases("save"):
            run.model.save_pretrained(folder)
            run.tokenizer.save_pretrained(folder)
        wall = time.time() - started_at if started_at is not None else float("nan")
        values = summary(run.config, choice, run.result, paths.run, phases, wall)
        write_run_files(folder, run.config, run.result.history, run.samples, values)
    log_run_files(paths.run)
    return values


def interrupted_message(cfg: TrainConfig) -> str:
    """What Ctrl-C outside the training loop left behind, and how to go on."""
    paths = RunPaths.of(cfg.output_dir, cfg.run_name)
    if is_finished_run(paths.run):
        return f"interrupted; the run is saved in {paths.run}"
    if paths.latest_resume_checkpoint() is not None:
        return (
            f"interrupted; {paths.latest_resume_checkpoint()} holds a resumable checkpoint: run the same command "
            "with --resume to continue"
        )
    return "interrupted before any checkpoint was saved; nothing of this run was kept. Run the command again"


def build_parser() -> argparse.ArgumentParser:
    parser = add_config_flags(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
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


def main(argv: list[str] | None = None) -> int:
    from safetensors import SafetensorError

    args = build_parser().parse_args(argv)
    cfg = None
    try:
        cfg = config_from_args(args, quick=args.test_mode)
        started_at = psutil.Process().create_time()  # the wall time counts from the process start, imports included
        run = train(cfg, args.heldout or None, args.overwrite, args.resume, started_at=started_at)
    except TrainingInterrupted as stop:
        print(f"\n{stop}", file=sys.stderr)
        return 130
    except (ConfigError, DatasetError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (OSError, SafetensorError) as err:  # a full disk at a checkpoint or at the save, say
        print(
            f"error: the run could not be written ({err}); nothing of it was published and an earlier run of this "
            "name is unchanged. Free some space (or choose another --output_dir) and run the command again",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(f"\n{interrupted_message(cfg) if cfg else 'interrupted'}", file=sys.stderr)
        return 130
    if is_main_process():
        print_summary(run.summary, run.samples, run.warnings, Phases(run.summary["phase_seconds"]))
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()  # under accelerate launch: NCCL warns of leaked resources on exit otherwise
    return 0


if __name__ == "__main__":
    sys.exit(main())
