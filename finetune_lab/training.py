"""Training with TRL's SFTTrainer, and the whole lab run (data -> model -> train -> save -> summary)."""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoints import RESUME_CONFIG, RunLock, RunPaths, prepare_run, read_json, writing_run
from .config import ConfigError, TrainConfig
from .data import Dataset, check_chat_markers, count_too_long, load_jsonl
from .generation import generate
from .models import BackendChoice, adapters_off, base_fingerprint, for_inference, for_training, load_for_training
from .phases import Phases
from .plots import plot_loss
from .runtime import is_main_process, processes

HISTORY_FILE, CURVE_FILE, SAMPLES_FILE, SUMMARY_FILE, LEG_SECONDS_FILE = (
    "loss_history.json",
    "loss_curve.png",
    "samples.json",
    "summary.json",
    "train_seconds.json",
)
# Settings that may differ when an interrupted run is continued: they change neither the model nor the optimizer.
RESUME_MAY_CHANGE = ("wandb", "save_steps", "gradient_checkpointing", "output_dir", "run_name", "max_new_tokens")


class TrainingInterrupted(RuntimeError):
    """Ctrl-C during training: a resumable checkpoint was saved first."""


@dataclass
class TrainResult:
    history: list[dict]
    steps: int
    seconds: float
    seconds_to_first_step: float
    peak_memory_mb: float
    trainable_params: int
    total_params: int
    effective_batch_size: int

    @property
    def losses(self) -> list[float]:
        return [h["loss"] for h in self.history if "loss" in h]

    @property
    def validation(self) -> list[dict]:
        """The held-out loss after each epoch (empty without held-out data)."""
        return [h for h in self.history if "validation_loss" in h]


def peak_memory_mb() -> float:
    """Peak GPU memory of this process, or on a CPU its peak resident memory (RAM)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    except ImportError:  # Windows has no resource module; psutil comes with accelerate
        import psutil

        return psutil.Process().memory_info().peak_wset / 2**20


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def sft_plumbing(cfg: TrainConfig, choice: BackendChoice, output_dir: str | Path, validation: bool = False) -> dict:
    """The SFTConfig settings a student need not change: where checkpoints go, seeds, the device's optimizer and
    data loading, data-parallel details, and the best-epoch bookkeeping. train_model.ipynb spells out the rest."""
    if cfg.restores_best and not validation:
        raise ConfigError(
            "keep_best and early_stopping_patience need held-out data to measure the validation loss on "
            "(--heldout FILE)"
        )
    on_gpu = choice.on_gpu
    args = dict(
        output_dir=str(output_dir),
        # Packing cuts each row at max_length, truncating an example only if it alone is longer; padding-free
        # batches without packing keep examples whole (the lab warns about long ones instead).
        max_length=cfg.max_seq_length if cfg.truncates_long_examples else None,
        padding_free=cfg.padding_free or cfg.packing,
        # best-fit decreasing: whole examples per row, never one cut across two rows
        packing_strategy="bfd",
        # Gradient checkpointing is switched on with the adapter (Unsloth has its own variant).
        gradient_checkpointing=False,
        optim="adamw_torch_fused" if on_gpu else "adamw_torch",
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        per_device_eval_batch_size=cfg.batch_size,
        seed=cfg.seed,
        data_seed=cfg.seed,
        run_name=cfg.run_name,
        # LoRA with non-reentrant checkpointing uses every trainable parameter each step: skip DDP's search.
        ddp_find_unused_parameters=False if processes().world_size > 1 else None,
        dataloader_num_workers=0,
        dataloader_pin_memory=on_gpu,
        use_cpu=not on_gpu,  # on a CPU, torchrun/accelerate processes then train as one DDP (gloo)
        # Tokenize in this process: the lab's few hundred examples take well under a second, while worker processes
        # take seconds to start (Unsloth sizes a pool of up to 8 for None; it reads 1 as "in-process", and TRL None).
        dataset_num_proc=1 if choice.backend == "unsloth" else None,
    )
    if cfg.restores_best:
        args.update(
            load_best_model_at_end=True,
            metric_for_best_model="eval_loss",
            greater_is_better=False,
            save_strategy="epoch",  # the best epoch must have a checkpoint to go back to
        )
    return args


def make_sft_config(
    cfg: TrainConfig, choice: BackendChoice, output_dir: str | Path, validation: bool = False, **overrides
):
    """SFTConfig from the lab's TrainConfig: the settings train_model.ipynb writes out in a cell (with their
    trade-offs), on top of sft_plumbing. `validation`: a held-out set is evaluated after every epoch."""
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
        completion_only_loss=True,  # loss on the answer only; the prompt tokens are masked with -100
        packing=cfg.packing,
        bf16=choice.on_gpu and choice.dtype == "bfloat16",
        fp16=choice.on_gpu and choice.dtype == "float16",
        logging_steps=1,
        eval_strategy="epoch" if validation else "no",
        report_to=["wandb"] if cfg.wandb else "none",
    )
    args.update(overrides)
    return SFTConfig(**{**sft_plumbing(cfg, choice, output_dir, validation), **args})


def _trainer_class():
    # Built on first use: with Unsloth, trl.SFTTrainer is patched at `import unsloth`.
    from transformers.trainer_utils import rotate_checkpoints
    from trl import SFTTrainer

    class AtomicSFTTrainer(SFTTrainer):
        """SFTTrainer whose checkpoint-N folders appear only when completely written."""

        _staging_root = None

        def _get_output_dir(self, trial):
            return self._staging_root or super()._get_output_dir(trial)

        def _save_checkpoint(self, model, trial):
            if processes().world_size > 1:  # every rank writes its own RNG state: no shared staging folder
                return super()._save_checkpoint(model, trial)
            final_root = Path(super()._get_output_dir(trial))
            final_root.mkdir(parents=True, exist_ok=True)
            staging = final_root / f".partial-{self.state.global_step}"
            shutil.rmtree(staging, ignore_errors=True)
            self._staging_root = str(staging)
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._staging_root = None
            for written in staging.iterdir():
                target = final_root / written.name
                if target.exists():
                    shutil.rmtree(target)
                written.rename(target)
            staging.rmdir()
            rotate_checkpoints(
                output_dir=str(final_root),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=False,
            )

    return AtomicSFTTrainer


class _FirstStepTimer:
    def __init__(self):
        from transformers import TrainerCallback

        outer = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if outer.at is None:
                    outer.at = time.perf_counter()

        self.at = None
        self.callback = Callback()


def build_trainer(
    model,
    tokenizer,
    dataset,
    cfg: TrainConfig,
    choice: BackendChoice,
    output_dir: str | Path,
    sft_config=None,
    callbacks=(),
    validation: Dataset | None = None,
):
    """TRL's SFTTrainer over a lab Dataset (prompt/completion rows, tokenized and masked on construction) or an
    already tokenized Hugging Face dataset (input_ids), as the benchmark uses; `validation` is evaluated after
    every epoch."""
    from datasets import Dataset as HFDataset

    rows = HFDataset.from_list(dataset.trl_rows()) if isinstance(dataset, Dataset) else dataset
    args = sft_config or make_sft_config(cfg, choice, output_dir, validation=validation is not None)
    if cfg.early_stopping_patience:
        from transformers import EarlyStoppingCallback

        callbacks = [*callbacks, EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience)]
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=rows,
        eval_dataset=HFDataset.from_list(validation.trl_rows()) if validation is not None else None,
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    keep_fp16_master_weights(trainer)
    return trainer


def keep_fp16_master_weights(trainer) -> None:
    """fp16 training scales the loss, and its scaler only unscales fp32 gradients; TRL casts a quantized model's
    trainable adapters to bf16 (sft_trainer.py, after the QLoRA paper), so a QLoRA run on a T4 stopped at its first
    step with `"_amp_foreach_non_finite_check_and_unscale_cuda" not implemented for 'BFloat16'` (seen through
    transformers + PEFT under scripts/t4sim, 2026-11-29). Unsloth's patched trainer keeps fp32 there for the same
    reason; this does it for the transformers backend."""
    import torch

    if not trainer.args.fp16:
        return
    for param in trainer.model.parameters():
        if param.requires_grad and param.dtype == torch.bfloat16:
            param.data = param.data.to(torch.float32)


def effective_batch_size(cfg: TrainConfig, rows: int, world: int) -> int:
    """Examples (or packed rows) per optimizer step: a batch_size larger than the data takes all of it."""
    return min(cfg.batch_size, math.ceil(rows / world)) * world * cfg.grad_accum


class _LegClock:
    """Training seconds over all legs of a run (interrupted, then resumed): each checkpoint records the total so
    far in the resume folder, so steps redone after a kill are not counted twice."""

    def __init__(self, resume_dir: Path, resumed: bool):
        from transformers import TrainerCallback

        self.path = resume_dir / LEG_SECONDS_FILE
        self.before = json.loads(self.path.read_text())["train_seconds"] if resumed and self.path.exists() else 0.0
        self.start = time.perf_counter()
        clock = self

        class Callback(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                clock.record()

        self.callback = Callback()

    @property
    def total(self) -> float:
        return self.before + time.perf_counter() - self.start

    def record(self) -> None:
        if is_main_process() and self.path.parent.exists():
            self.path.write_text(json.dumps({"train_seconds": self.total}))


def train(
    model,
    tokenizer,
    dataset: Dataset,
    cfg: TrainConfig,
    choice: BackendChoice,
    output_dir: str | Path,
    sft_config=None,
    callbacks=(),
    resume_from: str | Path | None = None,
    validation: Dataset | None = None,
    phases: Phases | None = None,
) -> TrainResult:
    """Fine-tune in place (measuring the loss on `validation` after every epoch); on Ctrl-C save a resumable
    checkpoint in output_dir and raise TrainingInterrupted."""
    phases = phases or Phases()
    timer = _FirstStepTimer()
    if resume_from is None and is_main_process():  # marks the folder as this run's resumable state (see checkpoints)
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / RESUME_CONFIG).write_text(json.dumps(cfg.to_dict(), indent=1))
    clock = _LegClock(Path(output_dir), resume_from is not None)
    for_training(model, choice)
    with phases("build trainer (tokenize)"):
        trainer = build_trainer(
            model,
            tokenizer,
            dataset,
            cfg,
            choice,
            output_dir,
            sft_config,
            [timer.callback, clock.callback, *callbacks],
            validation,
        )
    sft_config = trainer.args
    start = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        end = time.perf_counter()
    except KeyboardInterrupt:
        trainer._save_checkpoint(trainer.model, None)
        clock.record()
        where = Path(sft_config.output_dir) / f"checkpoint-{trainer.state.global_step}"
        raise TrainingInterrupted(
            f"interrupted at step {trainer.state.global_step}; a resumable checkpoint is in "
            f"{where}. Run it again with resume=True (--resume) to continue."
        ) from None
    first_step_at = timer.at or end  # no step ran (nothing left to train after a resume): no first step either
    phases.add("first step (compile, warm-up)", first_step_at - start)
    phases.add("training", end - first_step_at)
    return result_of(trainer, cfg, clock.total, (timer.at - start) if timer.at else float("nan"))


def result_of(trainer, cfg: TrainConfig, seconds: float, seconds_to_first_step: float = float("nan")) -> TrainResult:
    """What a finished trainer did: its loss history, steps, time, peak memory and sizes."""
    trainable, total = count_parameters(trainer.model)
    return TrainResult(
        history=loss_history(trainer.state.log_history),
        steps=trainer.state.global_step,
        seconds=seconds,
        seconds_to_first_step=seconds_to_first_step,
        peak_memory_mb=peak_memory_mb(),
        trainable_params=trainable,
        total_params=total,
        effective_batch_size=effective_batch_size(cfg, len(trainer.train_dataset), processes().world_size),
    )


def loss_history(log_history: list[dict]) -> list[dict]:
    """The trainer's log as the lab keeps it: one row per step (loss) and one per evaluation (validation_loss)."""
    rows = []
    for row in log_history:
        if "loss" in row:
            rows.append({k: v for k, v in row.items() if k in ("step", "epoch", "loss", "learning_rate", "grad_norm")})
        elif "eval_loss" in row:
            rows.append({"step": row["step"], "epoch": row["epoch"], "validation_loss": row["eval_loss"]})
    return rows


# ---------------------------------------------------------------- the whole lab run


@dataclass
class LabRun:
    config: TrainConfig
    choice: BackendChoice
    result: TrainResult
    run_dir: Path
    prompts: list[list[dict]]  # chat messages (system prompt + user turn) as the model saw them
    references: list[str]
    before: list[str]
    after: list[str]
    warnings: list[str] = field(default_factory=list)
    model: object = None
    tokenizer: object = None
    phases: Phases = field(default_factory=Phases)
    started_at: float | None = None  # time.time() when the process started (the CLI), for wall_seconds
    wall_seconds: float = float("nan")  # start to saved weights; nan without started_at (a notebook's kernel)

    def summary(self) -> dict:
        losses = self.result.losses
        return {
            "run": self.config.run_name,
            "backend": self.choice.backend,
            "device": self.choice.device,
            "dtype": self.choice.dtype,
            "method": self.choice.method,
            "rank": self.config.rank,
            "steps": self.result.steps,
            "train_seconds": round(self.result.seconds, 1),
            "seconds_to_first_step": round(self.result.seconds_to_first_step, 1),
            "first_loss": round(losses[0], 4) if losses else None,
            "last_loss": round(losses[-1], 4) if losses else None,
            **validation_summary(self.result.validation),
            "peak_memory_mb": round(self.result.peak_memory_mb),
            "trainable_params": self.result.trainable_params,
            "total_params": self.result.total_params,
            "effective_batch_size": self.result.effective_batch_size,
            "checkpoint": str(self.run_dir),
            "loss_curve": str(self.run_dir / CURVE_FILE),
            "wall_seconds": None if math.isnan(self.wall_seconds) else round(self.wall_seconds, 1),
            "phase_seconds": self.phases.rounded(),
        }

    def print_summary(self) -> None:
        s = self.summary()
        print("\n=== Lab summary ===")
        for key in (
            "backend",
            "device",
            "dtype",
            "method",
            "rank",
            "steps",
            "train_seconds",
            "seconds_to_first_step",
            "first_loss",
            "last_loss",
            "last_validation_loss",
            "best_validation_loss",
            "best_validation_step",
            "peak_memory_mb",
            "trainable_params",
            "effective_batch_size",
            "checkpoint",
            "loss_curve",
        ):
            print(f"{key:>22}: {'n/a' if s[key] is None else s[key]}")
        if self.phases.seconds:
            wall = None if math.isnan(self.wall_seconds) else self.wall_seconds
            print("\n--- where the time went (wall seconds; total: process start to saved weights)")
            print(self.phases.table(wall))
        for warning in self.warnings:
            print(f"   warning: {warning}")
        for i, (prompt, ref, b, a) in enumerate(zip(self.prompts, self.references, self.before, self.after), 1):
            print(f"\n--- test prompt {i}: {prompt[-1]['content']}\n[reference]\n{ref}\n[before]\n{b}\n[after]\n{a}")


def validation_summary(validation: list[dict]) -> dict:
    """Last and lowest held-out loss (None, shown as n/a, when nothing was held out)."""
    best = min(validation, key=lambda h: h["validation_loss"], default=None)
    return {
        "last_validation_loss": round(validation[-1]["validation_loss"], 4) if validation else None,
        "best_validation_loss": round(best["validation_loss"], 4) if best else None,
        "best_validation_step": best["step"] if best else None,
    }


def run_record(lab: LabRun, dataset: Dataset) -> dict:
    """run_config.json: the settings, how it ran, and what the base and data were (load_checkpoint checks them)."""
    return {
        **lab.config.to_dict(),
        "backend_choice": vars(lab.choice),
        "base_fingerprint": base_fingerprint(lab.model),
        "dataset_schema": dataset.schema,
        "examples": len(dataset),
    }


def write_run_files(folder: Path, lab: LabRun) -> None:
    """What the lab keeps beside the weights: loss history and curve, sample answers, summary."""
    (folder / HISTORY_FILE).write_text(json.dumps(lab.result.history, indent=1))
    plot_loss(lab.result.history, folder / CURVE_FILE, title=f"{lab.config.run_name}: loss")
    samples = [
        {"prompt": p[-1]["content"], "messages": p, "reference": r, "before": b, "after": a}
        for p, r, b, a in zip(lab.prompts, lab.references, lab.before, lab.after)
    ]
    (folder / SAMPLES_FILE).write_text(json.dumps(samples, indent=1))
    (folder / SUMMARY_FILE).write_text(json.dumps(lab.summary(), indent=1))


def save_lab_run(lab: LabRun, paths: RunPaths, dataset: Dataset) -> Path:
    """Write the run folder (adapter, tokenizer, config, loss history and curve, samples, summary) atomically;
    train_model.ipynb makes the same calls in a cell."""
    from . import tracking

    with writing_run(paths, run_record(lab, dataset)) as folder:
        with lab.phases("save"):
            lab.model.save_pretrained(folder)
            lab.tokenizer.save_pretrained(folder)
        if lab.started_at is not None:
            lab.wall_seconds = time.time() - lab.started_at
        write_run_files(folder, lab)
    tracking.log_run_files(paths.run)
    return paths.run


def pick_test_prompts(train: Dataset, heldout: Dataset | None, n_train: int = 3, n_heldout: int = 1):
    """A few trained prompts (did it learn?) and held-out ones (did it generalise?)."""
    picked = train.examples[:n_train] + (heldout.examples[:n_heldout] if heldout else [])
    return [ex.prompt for ex in picked], [ex.completion for ex in picked]


def resume_differences(saved: dict, cfg: TrainConfig) -> list[str]:
    """Settings of `cfg` that differ from those an interrupted run was started with (and would change what trains)."""
    now = json.loads(json.dumps(cfg.to_dict()))  # tuples as lists, as saved
    return [
        f"{key} {saved.get(key)!r} (interrupted run) vs {value!r} (now)"
        for key, value in now.items()
        if key not in RESUME_MAY_CHANGE and saved.get(key) != value
    ]


def run_lab(
    cfg: TrainConfig,
    overwrite: bool = False,
    resume: bool = False,
    heldout_path: str | None = None,
    lora_config=None,
    sft_config=None,
    callbacks=(),
    started_at: float | None = None,
) -> LabRun:
    """Validate everything, train, save the run folder and return what the summary shows (with the wall time
    from `started_at`, a time.time() stamp, to the saved weights, when given)."""
    dataset = load_jsonl(cfg.data, cfg.system_prompt)  # every line checked before a model loads
    heldout = load_jsonl(heldout_path, cfg.system_prompt) if heldout_path else None
    paths = RunPaths.of(cfg.output_dir, cfg.run_name)
    lock = RunLock(paths)
    if is_main_process():  # one lock per run; the data-parallel processes of the run share it
        lock.acquire()
    try:
        return _locked_run(
            cfg,
            paths,
            dataset,
            heldout,
            overwrite,
            resume,
            lora_config,
            sft_config,
            callbacks,
            started_at,
        )
    finally:
        lock.release()


def _locked_run(cfg, paths, dataset, heldout, overwrite, resume, lora_config, sft_config, callbacks, started_at):
    from . import tracking

    phases = Phases()
    prepare_run(cfg.output_dir, cfg.run_name, overwrite=overwrite, resume=resume)
    if resume:
        changed = resume_differences(
            read_json(paths.resume / RESUME_CONFIG, "start again with overwrite=True (--overwrite)"), cfg
        )
        if changed:
            raise ConfigError(
                f"resume=True (--resume) continues {paths.resume}, which was started with other settings: "
                f"{'; '.join(changed)}. Run it with the settings it started with, or pass overwrite=True (--overwrite) "
                "(instead of resume) to start again with the new ones"
            )
    if cfg.limit_examples:
        dataset.examples = dataset.examples[: cfg.limit_examples]
    if cfg.limit_heldout and heldout is not None:
        heldout.examples = heldout.examples[: cfg.limit_heldout]
    model, tokenizer, choice = load_for_training(cfg, lora_config, phases=phases)
    for data in (dataset, heldout):
        if data is not None:
            check_chat_markers(data, tokenizer, cfg.model)
    world = processes().world_size
    batch = effective_batch_size(cfg, len(dataset), world)
    warnings = list(dataset.warnings)
    if cfg.batch_size * world > len(dataset):
        warnings.append(
            f"batch_size {cfg.batch_size} x {world} process(es) is more than the {len(dataset)} "
            f"examples: every step trains on all of them (effective batch size {batch})"
        )
    if is_main_process():
        unit = f"rows of up to {cfg.max_seq_length} packed tokens" if cfg.packing else "examples"
        print(
            f"[finetune_lab] effective batch size {batch} {unit} = {batch // (cfg.grad_accum * world)} "
            f"per device x {cfg.grad_accum} accumulation x {world} process(es)"
        )
    too_long = count_too_long(dataset, tokenizer, cfg.max_seq_length)
    if too_long == len(dataset):
        raise ConfigError(
            f"every example of {cfg.data} is longer than max_seq_length={cfg.max_seq_length} tokens, "
            "so every answer would be cut short or lost; raise max_seq_length (--max_seq_length)"
        )
    if too_long:
        fate = (
            "truncated (their end is cut)"
            if cfg.truncates_long_examples
            else "kept whole (padding-free batches are not truncated)"
        )
        warnings.append(
            f"{too_long} example(s) exceed max_seq_length={cfg.max_seq_length} tokens and are {fate}; "
            "raise max_seq_length (--max_seq_length) to cover them"
        )
    for warning in warnings:
        print(f"[finetune_lab] warning: {warning}")
    prompts, references = pick_test_prompts(dataset, heldout)
    for_inference(model, choice)
    with phases("generate before"), adapters_off(model):
        before = generate(model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens)
    resume_from = paths.latest_resume_checkpoint() if resume else None
    if not resume and is_main_process():
        shutil.rmtree(paths.resume, ignore_errors=True)  # --overwrite: the stale interrupted state of this run name
    with tracking.wandb_run(cfg, paths.run.parent):
        result = train(
            model, tokenizer, dataset, cfg, choice, paths.resume, sft_config, callbacks, resume_from, heldout, phases
        )
        for_inference(model, choice)
        with phases("generate after"):
            after = generate(model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens)
        lab = LabRun(
            cfg,
            choice,
            result,
            paths.run,
            prompts,
            references,
            before,
            after,
            warnings,
            model,
            tokenizer,
            phases,
            started_at,
        )
        if is_main_process():  # one writer: the other data-parallel processes hold the same weights
            save_lab_run(lab, paths, dataset)
    return lab
