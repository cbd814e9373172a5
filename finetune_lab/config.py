"""The typed configuration of one training run, shared by the CLI, the notebooks and the tests."""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass

METHODS = ("lora", "qlora", "full")
BACKENDS = ("auto", "unsloth", "transformers")
DTYPES = ("auto", "bfloat16", "float16", "float32")
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MAX_RUN_NAME_BYTES = 200
# Tells the base model what is asked (code for the course library), so that base vs fine-tuned compares
# code with code and the base model's invented API calls can be counted.
COURSE_SYSTEM_PROMPT = "You write Python code that uses the gardenkit library. Answer with code only."


class ConfigError(ValueError):
    """A setting that cannot work, reported before any heavy work starts."""


def setting(default, help: str):
    """A TrainConfig field with its help text: the CLI's flags are built from these (name, type, default, help)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    model: str = setting("smollm2-135m", "a preset (smollm2-135m, tinyllama-1.1b-chat, ...), a hub id or a folder")
    data: str = setting("data/course_train.jsonl", "training JSONL (alpaca, chat or prompt/completion schema)")
    method: str = setting("lora", "lora | qlora (4-bit base, CUDA only) | full")
    backend: str = setting("auto", "auto (Unsloth on a CUDA GPU if installed) | unsloth | transformers")
    dtype: str = setting("auto", "auto (bf16 on Ampere+, fp16 on a T4, fp32 on a CPU) | bfloat16 | float16 | float32")
    rank: int = setting(16, "LoRA rank r: capacity of the adapter (16 or 32 in this lab)")
    alpha: int = setting(32, "LoRA alpha: the update is scaled by alpha/r")
    dropout: float = setting(0.0, "dropout on the adapter's input")
    # All seven linear projections of a Llama block: adapting all of them trains several times the parameters of
    # LoRA on the attention projections alone, and is what Unsloth and QLoRA recommend for quality per parameter.
    target_modules: tuple[str, ...] = setting(ALL_LINEAR, "linear layers that get LoRA")
    epochs: float = setting(8.0, "passes over the data (ignored when --max_steps > 0)")
    batch_size: int = setting(8, "examples per device per step")
    grad_accum: int = setting(1, "gradient accumulation: steps whose gradients add up to one update")
    learning_rate: float = setting(1e-3, "peak learning rate (linear decay)")
    max_seq_length: int = setting(256, "tokens per example; longer ones are truncated")
    seed: int = setting(42, "same seed, data and config: the same loss curve on a CPU")
    max_steps: int = setting(-1, "stop after this many optimizer steps (> 0; overrides epochs)")
    save_steps: int = setting(20, "a resumable checkpoint every N optimizer steps")
    # Same loss, no compute on padding (position ids restart at each example); the course's short examples are bound
    # by launch overhead, not by pad tokens, so it is off by default.
    padding_free: bool = setting(False, "batches without pad tokens (examples end to end, attention kept per example)")
    # Several whole examples per row (best-fit decreasing), attention per example: several times the tokens a step for
    # the same overhead; the loss means the same, but an epoch has fewer, larger steps.
    packing: bool = setting(False, "fill each row with whole examples: fewer, fuller steps (fastest on a GPU)")
    gradient_checkpointing: bool | None = setting(
        None, "recompute activations in the backward pass; default: on only where the batch would not fit without it"
    )
    system_prompt: str | None = setting(COURSE_SYSTEM_PROMPT, "said before every prompt ('' for the model's default)")
    output_dir: str = setting("checkpoints", "folder that holds run folders")
    run_name: str = setting("smollm2-lora-r16", "name of this run's folder under --output_dir")
    wandb: bool = setting(False, "log to Weights & Biases while training (offline unless WANDB_API_KEY is set)")
    limit_examples: int = setting(0, "> 0 trains on the first N examples only (quick runs)")
    limit_heldout: int = setting(0, "> 0 validates on the first N held-out examples only (quick runs)")
    max_new_tokens: int = setting(96, "length cap of the before/after test answers")
    # The held-out loss after every epoch chooses the epoch (EarlyStoppingCallback, load_best_model_at_end); that makes
    # the held-out scores a little optimistic, so both are off by default.
    early_stopping_patience: int = setting(0, "stop after N epochs without a lower validation loss; implies keep_best")
    keep_best: bool = setting(False, "end with the weights of the epoch with the lowest validation loss")

    def __post_init__(self):
        self.target_modules = tuple(self.target_modules)
        # "~/x" means the home folder, as in a shell (a Python path would make a folder named "~" here)
        self.data, self.output_dir = os.path.expanduser(self.data), os.path.expanduser(self.output_dir)
        self.system_prompt = self.system_prompt or None
        self.validate()

    def validate(self) -> None:
        for name, allowed in (("method", METHODS), ("backend", BACKENDS), ("dtype", DTYPES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        positive = "rank alpha epochs batch_size grad_accum learning_rate max_seq_length save_steps max_new_tokens"
        for name in positive.split():
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be greater than 0, got {getattr(self, name)}")
        for name in ("early_stopping_patience", "limit_examples", "limit_heldout", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ConfigError("target_modules is empty: name at least one linear layer, e.g. q_proj")
        if not self.run_name or any(c in self.run_name for c in "/\\") or self.run_name.startswith("."):
            raise ConfigError(f"run_name {self.run_name!r} must be a plain folder name (no slashes, no leading dot)")
        if len(self.run_name.encode()) > MAX_RUN_NAME_BYTES:  # the staging and .resume names must fit too
            raise ConfigError(
                f"run_name is {len(self.run_name.encode())} bytes long; file systems allow 255 for a folder name and "
                f"the lab adds to it: keep it to {MAX_RUN_NAME_BYTES} (--run_name)"
            )

    @property
    def restores_best(self) -> bool:
        """Whether training ends on the best epoch's weights (early stopping needs them to go back to)."""
        return self.keep_best or self.early_stopping_patience > 0

    @property
    def truncates_long_examples(self) -> bool:
        """Whether examples longer than max_seq_length are cut: always, except in padding-free batches without
        packing, which TRL lays out whole (it needs max_length=None there)."""
        return self.packing or not self.padding_free

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


# The shortest run that still teaches the model its first prompts (the tests check that it did): the CLI's --test_mode
# and the notebooks under FINETUNE_LAB_QUICK=1. The base model never stops early, so max_new_tokens sets its time.
QUICK_OVERRIDES = dict(
    limit_examples=16, limit_heldout=4, max_steps=16, batch_size=4, save_steps=8, max_seq_length=128, max_new_tokens=48
)


def quick_config(**overrides) -> TrainConfig:
    return TrainConfig(**{"run_name": "quick", **QUICK_OVERRIDES, **overrides})


FLAG_TYPES = {"int": int, "float": float, "str": str, "str | None": str}


def add_config_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """TrainConfig's fields as flags for the CLI, the preflight and the rank comparison. Not HfArgumentParser: it
    imports transformers before the backend is chosen, so before Unsloth, which then warns and patches less."""
    for f in dataclasses.fields(TrainConfig):
        # SUPPRESS: a flag not given stays out of the namespace, so --test_mode can tell given flags from defaults
        common = dict(default=argparse.SUPPRESS, help=f"{f.metadata['help']} (default: {f.default})")
        if f.type == "tuple[str, ...]":
            parser.add_argument(f"--{f.name}", nargs="+", **common)
        elif f.type in ("bool", "bool | None"):
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, **common)
        else:
            parser.add_argument(f"--{f.name}", type=FLAG_TYPES[f.type], **common)
    return parser


def at_least(low: int):
    """An argparse type: a whole number of at least `low` (the scripts' --limit 0+, --max_new_tokens 1+)."""

    def parse(text: str) -> int:
        if int(text) < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, got {text}")
        return int(text)

    return parse


def config_from_args(args: argparse.Namespace, quick: bool = False) -> TrainConfig:
    """The TrainConfig of the flags given (quick: on top of QUICK_OVERRIDES, which the flags given beat)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    return quick_config(**given) if quick else TrainConfig(**given)


def as_flags(cfg: TrainConfig) -> list[str]:
    """The flags that give `cfg` to the lab's scripts (those not at their defaults)."""
    flags = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value == f.default:
            continue
        if isinstance(value, bool):
            flags.append(f"--{'' if value else 'no-'}{f.name}")
        else:
            flags += [f"--{f.name}", *(map(str, value) if isinstance(value, tuple) else [str(value or "")])]
    return flags
