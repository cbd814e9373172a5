"""Preflight: will this lab run here, and with what? Versions, device, precision, the model, and its memory.

For students before their first run (the notebooks' first cell prints it) and anyone reporting a problem:
    python -m finetune_lab.doctor                                  # the notebooks' default model, LoRA
    python -m finetune_lab.doctor --model tinyllama-1.1b-chat --method full   # any flag of train_tiny_model.py
It exits 1 when the estimated peak memory does not fit, after printing the fix.
"""

import argparse
import importlib.metadata
import platform
import sys
from dataclasses import dataclass

import psutil

from .config import ConfigError, TrainConfig, add_config_flags, config_from_args
from .data import DatasetError, load_jsonl
from .memory import MB, MemoryEstimate, estimate, shape_of
from .models import (
    BackendChoice,
    HubUnavailable,
    choose_backend,
    default_model,
    gradient_checkpointing_choice,
    import_backend,
    model_config,
)
from .runtime import Gpu, gpu

PACKAGES = "torch transformers trl peft unsloth unsloth_zoo bitsandbytes xformers finetune-lab".split()
# Left free beside the estimate: the CUDA context and allocator slack on a GPU; Python, torch and the tokenizer
# on a CPU.
HEADROOM_MB = {"gpu": 1024, "cpu": 1536}


def versions() -> str:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} -")
    return f"python {platform.python_version()} | " + " | ".join(found)


def fix_for(cfg: TrainConfig, card: Gpu | None) -> str:
    if cfg.method == "full":
        return 'train adapters instead: method="lora"' + (' or "qlora" (4-bit base)' if card else "")
    if cfg.method == "lora" and card is not None:
        return 'method="qlora" stores the frozen base in 4 bits; or lower batch_size / max_seq_length'
    return "lower batch_size or max_seq_length, or choose a smaller model"


@dataclass
class Preflight:
    config: TrainConfig
    choice: BackendChoice
    card: Gpu | None
    model_reason: str
    memory: MemoryEstimate | None
    free_mb: float

    @property
    def headroom_mb(self) -> float:
        return HEADROOM_MB["gpu" if self.card else "cpu"]

    @property
    def fits(self) -> bool | None:
        return None if self.memory is None else self.memory.total_mb + self.headroom_mb <= self.free_mb

    def lines(self) -> list[str]:
        cfg, card, mem, free = self.config, self.card, self.memory, self.free_mb / 1024
        device = f"{card.name}, compute capability {card.capability[0]}.{card.capability[1]}" if card else "cpu"
        native = ("yes" if card.native_bf16 else "no (fp16 only; bf16 would be emulated)") if card else "n/a (CPU)"
        rank = f" r={cfg.rank}" if cfg.method != "full" else ""
        out = [
            versions(),
            f"device: {device} | native bf16: {native} | dtype: {self.choice.dtype} | backend: {self.choice.backend}",
            f"free {'GPU memory' if card else 'RAM'}: {free:.1f} GB",
            f"model: {cfg.model} ({self.model_reason})",
            f"method: {cfg.method}{rank}, batch {cfg.batch_size} x {cfg.max_seq_length} tokens",
        ]
        if mem is None:
            return out + ["estimated peak memory: n/a (the model's config could not be read)"]
        out.append(
            f"estimated peak memory: {mem.total_mb / 1024:.2f} GB = weights {mem.weights_mb / 1024:.2f} + "
            f"training state {mem.training_state_mb / 1024:.2f} + activations {mem.activations_mb / 1024:.2f} "
            f"({mem.trainable_params:,} trainable parameters)"
        )
        if self.fits:
            return out + [f"fits: yes ({free:.1f} GB free)"]
        needed = f"{mem.total_mb / 1024:.1f} GB needed (+ {self.headroom_mb / 1024:.1f} GB headroom)"
        return out + [f"fits: NO, {needed} but {free:.1f} GB free. Fix: {fix_for(cfg, card)}"]

    def print(self) -> None:
        print("=== finetune_lab preflight ===")
        print("\n".join(self.lines()))


def preflight(cfg: TrainConfig | None = None, model_reason: str = "given") -> Preflight:
    """Check `cfg` on this machine (default: the notebooks' model for this machine, LoRA with the lab's settings).
    Imports Unsloth first when it will train, so the first notebook cell leaves the imports in the right order."""
    card = gpu()
    if cfg is None:
        model, model_reason = default_model(card)
        cfg = TrainConfig(model=model)
    choice = choose_backend(cfg)
    # the run's length decides Unsloth's compile; no other backend needs the data read here
    import_backend(choice, cfg, len(load_jsonl(cfg.data, cfg.system_prompt)) if choice.backend == "unsloth" else 0)
    free_mb = card.free_mb if card else psutil.virtual_memory().available / MB
    try:
        shape = shape_of(model_config(cfg.model), cfg.target_modules)
    except (HubUnavailable, OSError, ValueError) as err:
        if isinstance(err, ConfigError) and not isinstance(err, HubUnavailable):
            raise  # a name that is wrong, not just out of reach: say so instead of a report of n/a
        memory = None
    else:
        beside_weights = free_mb - estimate(shape, cfg, choice.dtype, gradient_checkpointing=False).weights_mb
        checkpointing, _ = gradient_checkpointing_choice(cfg, choice, shape, beside_weights)
        memory = estimate(shape, cfg, choice.dtype, gradient_checkpointing=checkpointing)
    return Preflight(cfg, choice, card, model_reason, memory, free_mb)


def main(argv: list[str] | None = None) -> int:
    parser = add_config_flags(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    args = parser.parse_args(argv)  # every training flag; --model defaults to the notebooks' choice for this machine
    try:
        model, reason = (args.model, "given") if hasattr(args, "model") else default_model(gpu())
        report = preflight(config_from_args(argparse.Namespace(**{**vars(args), "model": model})), reason)
    except (ConfigError, DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report.print()
    return 0 if report.fits is not False else 1


if __name__ == "__main__":
    sys.exit(main())
