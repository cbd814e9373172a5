"""What train_model.ipynb and train_tiny_model.py both need around TRL's SFTTrainer and neither shows: settings a
student need not change, atomic checkpoints, Ctrl-C and resume, the run's clock and memory, the files it leaves."""

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .checkpoints import RESUME_CONFIG, RunPaths, publish, read_json, staging_for
from .config import ConfigError, TrainConfig
from .phases import Phases
from .plots import plot_loss
from .runtime import cuda_available, is_main_process, processes

HISTORY_FILE, CURVE_FILE = "loss_history.json", "loss_curve.png"
SAMPLES_FILE, SUMMARY_FILE = "samples.json", "summary.json"
LEG_SECONDS_FILE = "train_seconds.json"
# Settings that may differ when an interrupted run is continued: they change neither the model nor the optimizer.
RESUME_MAY_CHANGE = ("wandb", "save_steps", "gradient_checkpointing", "output_dir", "run_name", "max_new_tokens")


class TrainingInterrupted(RuntimeError):
    """Ctrl-C during training: a resumable checkpoint was saved first."""


class TrainingDiverged(ConfigError):
    """The training loss became NaN or inf, or grew far above where it started: the run is stopped unsaved."""


DIVERGED_FACTOR = 3.0  # a loss this many times its first has left the pretrained model behind (learning rate too high)


def stop_on_divergence():
    """A callback that stops training, unsaved, once the loss is NaN, inf or DIVERGED_FACTOR times its first."""
    from transformers import TrainerCallback

    class StopOnDivergence(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            losses = [row["loss"] for row in state.log_history if "loss" in row]
            if losses and not losses[-1] <= DIVERGED_FACTOR * losses[0]:  # NaN compares False
                raise TrainingDiverged(
                    f"the training loss went from {losses[0]:.3f} to {losses[-1]:.3f} by step {state.global_step}: "
                    "the run diverged and was stopped with nothing of it saved (an earlier run of this name, if any, "
                    "is unchanged). Lower the learning rate "
                    f"(--learning_rate, now {args.learning_rate:g})"
                )

    return StopOnDivergence()


@dataclass
class TrainResult:
    history: list[dict]  # one row per step (loss) and one per evaluation (validation_loss)
    steps: int
    seconds: float  # over all legs of an interrupted and resumed run
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


def check_validation(cfg: TrainConfig, validation: bool) -> None:
    """Settings that choose the epoch by the validation loss need held-out data: checked before anything loads."""
    if cfg.restores_best and not validation:
        fix = "pass a held-out file (--heldout FILE), or train without --keep_best / --early_stopping_patience"
        raise ConfigError(
            f"keep_best and early_stopping_patience need held-out data to measure the validation loss; {fix}"
        )


def sft_plumbing(cfg: TrainConfig, choice, output_dir: str | Path, validation: bool = False) -> dict:
    """The SFTConfig settings a student need not change (where checkpoints go, seeds, optimizer, data loading, DDP,
    best-epoch bookkeeping); both twins spell out the rest."""
    check_validation(cfg, validation)
    return dict(
        output_dir=str(output_dir),
        # Packing cuts each row at max_length, truncating an example only if it alone is longer; padding-free
        # batches without packing keep examples whole (the lab warns about long ones instead).
        max_length=cfg.max_seq_length if cfg.truncates_long_examples else None,
        padding_free=cfg.padding_free or cfg.packing,
        packing_strategy="bfd",  # best-fit decreasing: whole examples per row, never one cut across two rows
        gradient_checkpointing=False,  # switched on with the adapter (Unsloth has its own variant)
        optim="adamw_torch_fused" if choice.on_gpu else "adamw_torch",
        save_strategy="epoch" if cfg.restores_best else "steps",  # the best epoch needs a checkpoint to go back to
        save_steps=cfg.save_steps,
        save_total_limit=2,
        logging_nan_inf_filter=False,  # a NaN loss is logged as NaN (the filter would log 0) and stops the run
        load_best_model_at_end=cfg.restores_best,
        metric_for_best_model="eval_loss" if cfg.restores_best else None,
        greater_is_better=False if cfg.restores_best else None,
        per_device_eval_batch_size=cfg.batch_size,
        seed=cfg.seed,
        data_seed=cfg.seed,
        run_name=cfg.run_name,
        # LoRA with non-reentrant checkpointing uses every trainable parameter each step: skip DDP's search.
        ddp_find_unused_parameters=False if processes().world_size > 1 else None,
        dataloader_num_workers=0,
        dataloader_pin_memory=choice.on_gpu,
        use_cpu=not choice.on_gpu,  # on a CPU, torchrun/accelerate processes then train as one DDP (gloo)
        # Tokenize in this process: the lab's examples take well under a second, worker processes seconds to start
        # (Unsloth reads 1 as in-process and sizes a pool of up to 8 for None; TRL reads None as in-process).
        dataset_num_proc=1 if choice.backend == "unsloth" else None,
    )


def trainer_class():
    """SFTTrainer whose checkpoint-N folders appear only when complete (built on first use: Unsloth patches it)."""
    from transformers.trainer_utils import rotate_checkpoints
    from trl import SFTTrainer

    class AtomicSFTTrainer(SFTTrainer):
        _staging_root = None

        def _get_output_dir(self, trial):
            return self._staging_root or super()._get_output_dir(trial)

        def _save_checkpoint(self, model, trial):
            if processes().world_size > 1:  # every rank writes its own RNG state: no shared staging folder
                return super()._save_checkpoint(model, trial)
            final_root = Path(super()._get_output_dir(trial))
            staging = staging_for(final_root / f"checkpoint-{self.state.global_step}")
            self._staging_root = str(staging)
            try:
                super()._save_checkpoint(model, trial)  # writes <staging>/checkpoint-N
            except BaseException:  # a full disk, say: no half-written checkpoint is left to resume from
                shutil.rmtree(staging, ignore_errors=True)
                raise
            finally:
                self._staging_root = None
            for written in staging.iterdir():
                publish(written, final_root / written.name)
            staging.rmdir()
            best = self.state.best_model_checkpoint  # named where it was written, so load_best_model_at_end missed it
            if best and ".partial-" in Path(best).parent.name:
                self.state.best_model_checkpoint = str(final_root / Path(best).name)
            rotate_checkpoints(
                output_dir=str(final_root),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=False,
            )

    return AtomicSFTTrainer


def keep_fp16_master_weights(trainer) -> None:
    """fp16's loss scaler unscales only fp32 gradients, but TRL casts a quantized model's adapters to bf16, so QLoRA on
    a T4 stopped at step 1 ("_amp_foreach_non_finite_check_and_unscale_cuda" not implemented for 'BFloat16').
    Unsloth's trainer keeps them fp32 for that reason; this does it for the transformers backend."""
    import torch

    if trainer.args.fp16:
        for param in trainer.model.parameters():
            if param.requires_grad and param.dtype == torch.bfloat16:
                param.data = param.data.to(torch.float32)


def effective_batch_size(cfg: TrainConfig, rows: int, world: int) -> int:
    """Examples (or packed rows) per optimizer step: a batch_size larger than the data takes all of it."""
    return min(cfg.batch_size, math.ceil(rows / world)) * world * cfg.grad_accum


def peak_memory_mb() -> float:
    """Peak GPU memory of this process, or on a CPU its peak resident memory (RAM)."""
    import torch

    if cuda_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        import resource
    except ImportError:  # Windows: psutil (it comes with accelerate) has the peak there
        import psutil

        return psutil.Process().memory_info().peak_wset / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def train_clock(resume_dir: Path, resumed: bool):
    """A callback that notes when the first step ended and the training seconds over all legs of a resumed run: each
    checkpoint records the total so far, so steps redone after a kill are not counted twice."""
    from transformers import TrainerCallback

    path = Path(resume_dir) / LEG_SECONDS_FILE

    class TrainClock(TrainerCallback):
        before = json.loads(path.read_text())["train_seconds"] if resumed and path.exists() else 0.0
        start, first_step_at = time.perf_counter(), None

        @property
        def total(self) -> float:
            return self.before + time.perf_counter() - self.start

        def record(self) -> None:
            if is_main_process() and path.parent.exists():
                path.write_text(json.dumps({"train_seconds": self.total}))

        def on_step_end(self, args, state, control, **kwargs):
            self.first_step_at = self.first_step_at or time.perf_counter()

        def on_save(self, args, state, control, **kwargs):
            self.record()

    return TrainClock()


def data_record(train, heldout) -> dict:
    """Which data a run trained and validated on, and the content hash of each file as it was read."""
    return {
        "heldout": str(heldout.path) if heldout else None,
        "data_sha256": train.sha256,
        "heldout_sha256": heldout.sha256 if heldout else None,
    }


def run_trainer(trainer, cfg: TrainConfig, paths: RunPaths, resume_from: Path | None, phases: Phases, data: dict):
    """trainer.train(), timed; on Ctrl-C save a resumable checkpoint in paths.resume and raise TrainingInterrupted.
    A fresh run first records its settings and data there (what marks the folder as this run's resumable state)."""
    if resume_from is None and is_main_process():
        paths.resume.mkdir(parents=True, exist_ok=True)
        (paths.resume / RESUME_CONFIG).write_text(json.dumps({**cfg.to_dict(), **data}, indent=1))
    clock = train_clock(paths.resume, resume_from is not None)
    trainer.add_callback(clock)
    start = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except KeyboardInterrupt:
        trainer._save_checkpoint(trainer.model, None)
        clock.record()
        raise TrainingInterrupted(
            f"interrupted at step {trainer.state.global_step}; a resumable checkpoint is in "
            f"{paths.resume / f'checkpoint-{trainer.state.global_step}'}. Run it again with resume=True (--resume) "
            "to continue."
        ) from None
    end = time.perf_counter()
    first_step_at = clock.first_step_at or end  # no step ran (nothing left after a resume): no first step either
    phases.add("first step (compile, warm-up)", first_step_at - start)
    phases.add("training", end - first_step_at)
    return result_of(trainer, cfg, clock.total, first_step_at - start if clock.first_step_at else math.nan)


def result_of(trainer, cfg: TrainConfig, seconds: float, seconds_to_first_step: float = math.nan) -> TrainResult:
    """What a finished trainer did: its loss history, steps, time, peak memory and sizes."""
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    history = []
    for row in trainer.state.log_history:
        if "loss" in row:
            history.append({k: row[k] for k in ("step", "epoch", "loss", "learning_rate", "grad_norm") if k in row})
        elif "eval_loss" in row:
            history.append({"step": row["step"], "epoch": row["epoch"], "validation_loss": row["eval_loss"]})
    return TrainResult(
        history=history,
        steps=trainer.state.global_step,
        seconds=seconds,
        seconds_to_first_step=seconds_to_first_step,
        peak_memory_mb=peak_memory_mb(),
        trainable_params=trainable,
        total_params=sum(p.numel() for p in trainer.model.parameters()),
        effective_batch_size=effective_batch_size(cfg, len(trainer.train_dataset), processes().world_size),
    )


def check_resume(paths: RunPaths, cfg: TrainConfig, data: dict) -> None:
    """Refuse to continue an interrupted run with settings or data that would change what trains, listing them."""
    saved = read_json(paths.resume / RESUME_CONFIG, "start again with overwrite=True (--overwrite)")
    now = json.loads(json.dumps({**cfg.to_dict(), **data}))  # tuples as lists, as saved
    changed = [
        f"the content of {now[key.removesuffix('_sha256')]} (edited since the run started)"
        if key.endswith("_sha256")
        else f"{key} {saved[key]!r} (interrupted run) vs {value!r} (now)"
        for key, value in now.items()
        if key in saved and key not in RESUME_MAY_CHANGE and saved[key] != value  # in saved: older runs lack some
    ]
    if changed:
        raise ConfigError(
            f"resume=True (--resume) continues {paths.resume}, which was started with other settings: "
            f"{'; '.join(changed)}. Run it with the settings it started with, or pass overwrite=True (--overwrite) "
            "(instead of resume) to start again with the new ones"
        )


def pick_test_prompts(train, heldout, n_train: int = 3, n_heldout: int = 1):
    """A few trained prompts (did it learn?) and held-out ones (did it generalise?), with their references."""
    picked = train.examples[:n_train] + (heldout.examples[:n_heldout] if heldout else [])
    return [ex.prompt for ex in picked], [ex.completion for ex in picked]


def samples_of(prompts: list[list[dict]], references: list[str], before: list[str], after: list[str]) -> list[dict]:
    """The test prompts' answers as samples.json keeps them."""
    rows = zip(prompts, references, before, after)
    return [{"prompt": p[-1]["content"], "messages": p, "reference": r, "before": b, "after": a} for p, r, b, a in rows]


def summary(cfg: TrainConfig, choice, result: TrainResult, run_dir: Path, phases: Phases, wall: float = math.nan):
    """summary.json: what the run did, with `wall` seconds from the process start to the saved weights."""
    losses, validation = result.losses, result.validation
    best = min(validation, key=lambda h: h["validation_loss"], default=None)
    return {
        "run": cfg.run_name,
        **{k: getattr(choice, k) for k in ("backend", "device", "dtype", "method")},
        "rank": cfg.rank,
        "steps": result.steps,
        "train_seconds": round(result.seconds, 1),
        "seconds_to_first_step": round(result.seconds_to_first_step, 1),
        "first_loss": round(losses[0], 4) if losses else None,
        "last_loss": round(losses[-1], 4) if losses else None,
        "last_validation_loss": round(validation[-1]["validation_loss"], 4) if validation else None,
        "best_validation_loss": round(best["validation_loss"], 4) if best else None,
        "best_validation_step": best["step"] if best else None,
        "peak_memory_mb": round(result.peak_memory_mb),
        "trainable_params": result.trainable_params,
        "total_params": result.total_params,
        "effective_batch_size": result.effective_batch_size,
        "checkpoint": str(run_dir),
        "loss_curve": str(run_dir / CURVE_FILE),
        "wall_seconds": None if math.isnan(wall) else round(wall, 1),
        "phase_seconds": phases.rounded(),
    }


def print_summary(values: dict, samples: list[dict], warnings: list[str], phases: Phases) -> None:
    """The CLI's closing report: the numbers (n/a where none applies), where the time went, the answers."""
    print("\n=== Lab summary ===")
    for key, value in values.items():
        if key != "phase_seconds":  # the table below
            print(f"{key:>22}: {'n/a' if value is None else value}")
    if phases.seconds:
        print("\n--- where the time went (wall seconds; total: process start to saved weights)")
        print(phases.table(values["wall_seconds"]))
    for warning in warnings:
        print(f"   warning: {warning}")
    for i, s in enumerate(samples, 1):
        print(f"\n--- test prompt {i}: {s['prompt']}\n[reference]\n{s['reference']}\n[before]\n{s['before']}")
        print(f"[after]\n{s['after']}")


def run_record(cfg: TrainConfig, choice, model, train_data, heldout=None) -> dict:
    """run_config.json: the settings, how it ran, and what the base and data were (load_checkpoint checks them)."""
    from .models import base_fingerprint

    return {
        **cfg.to_dict(),
        **data_record(train_data, heldout),
        "backend_choice": vars(choice),
        "base_fingerprint": base_fingerprint(model),
        "dataset_schema": train_data.schema,
        "examples": len(train_data),
    }


def write_run_files(folder: Path, cfg: TrainConfig, history: list[dict], samples: list[dict], values: dict) -> None:
    """What the lab keeps beside the weights: loss history and curve, sample answers, summary."""
    (folder / HISTORY_FILE).write_text(json.dumps(history, indent=1))
    plot_loss(history, folder / CURVE_FILE, title=f"{cfg.run_name}: loss")
    (folder / SAMPLES_FILE).write_text(json.dumps(samples, indent=1))
    (folder / SUMMARY_FILE).write_text(json.dumps(values, indent=1))
