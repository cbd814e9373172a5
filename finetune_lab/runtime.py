"""The runtime state of a lab process, read once here and passed on: which data-parallel process this is, quick
mode, the cache folder, hub access, the GPU (if any) and the one dtype decision (`choose_dtype`: fp16 on a Colab T4,
bf16 on Ampere or newer, fp32 on a CPU). No other module reads WORLD_SIZE, RANK, LOCAL_RANK, FINETUNE_LAB_QUICK,
FINETUNE_LAB_CACHE, HF_HUB_OFFLINE, UNSLOTH_COMPILE_DISABLE or asks torch for a GPU."""

import functools
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from .config import DTYPES, ConfigError

FALSE = ("", "0", "false", "False")


@dataclass(frozen=True)
class Processes:
    """The data-parallel processes of this run (`accelerate launch` / torchrun), one GPU each. Not accelerate's
    PartialState: it would start the process group and the CUDA device before the trainer (and CUDA_VISIBLE_DEVICES)."""

    world_size: int
    rank: int  # this process among all of them (not LoRA's rank r)
    local_rank: int  # this process on its machine: the index of its GPU

    @property
    def is_main(self) -> bool:
        """The process that writes run folders, plots and summaries, and prints them."""
        return self.rank == 0


@functools.cache
def processes() -> Processes:
    env = os.environ.get
    return Processes(int(env("WORLD_SIZE", "1")), int(env("RANK", "0")), int(env("LOCAL_RANK", "0")))


def is_main_process() -> bool:
    return processes().is_main


if processes().world_size == 1:
    # One process trains on one GPU (on several, Trainer would wrap the model in nn.DataParallel, which TRL refuses);
    # more GPUs: `accelerate launch --num_processes N ...`. Set before torch starts CUDA.
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")


# Unsloth's compile as the user set it before the lab started (None: the lab decides per run, models.compile_choice).
UNSLOTH_COMPILE_DISABLE = os.environ.get("UNSLOTH_COMPILE_DISABLE")


@functools.cache
def ci_quick() -> bool:
    """The one switch that shortens notebook and lab runs under CI (FINETUNE_LAB_QUICK=1)."""
    return os.environ.get("FINETUNE_LAB_QUICK", "") not in FALSE


@functools.cache
def cache_dir() -> Path:
    """Where the embedded model is converted and kept (FINETUNE_LAB_CACHE, default ~/.cache/finetune_lab)."""
    return Path(os.environ.get("FINETUNE_LAB_CACHE", Path.home() / ".cache" / "finetune_lab"))


def hub_offline() -> str | None:
    """Why nothing may be downloaded from the Hugging Face hub (an offline flag), or None."""
    flag = next((v for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if os.environ.get(v, "") not in FALSE), None)
    return f"{flag} is set" if flag else None


def hub_unreachable_reason() -> str | None:
    """Why models cannot be downloaded from the Hugging Face hub right now, or None when they can."""
    if hub_offline():
        return hub_offline()
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        return "the Hugging Face hub cannot be reached"
    return None


@dataclass(frozen=True)
class Gpu:
    name: str
    capability: tuple[int, int]
    total_mb: float
    free_mb: float

    @property
    def native_bf16(self) -> bool:
        """bf16 matrix units arrived with Ampere (8.0); a T4 (7.5) or V100 (7.0) only emulates bf16, slowly."""
        return self.capability >= (8, 0)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def gpu(index: int | None = None) -> Gpu | None:
    """The CUDA card this process trains on (its local rank's unless `index` says), or None on a CPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    index = processes().local_rank if index is None else index
    free, total = torch.cuda.mem_get_info(index)
    name, capability = torch.cuda.get_device_name(index), tuple(torch.cuda.get_device_capability(index))
    return Gpu(name, capability, total / 2**20, free / 2**20)


def native_dtype(card: Gpu | None) -> str:
    """bf16 on Ampere and newer, fp16 on older cards, fp32 on a CPU (not is_bf16_supported(): True on a T4)."""
    if card is None:
        return "float32"
    return "bfloat16" if card.native_bf16 else "float16"


def choose_dtype(requested: str, card: Gpu | None) -> str:
    """The dtype to train and run in: the card's native one for "auto", else the request if the card can run it."""
    if requested not in DTYPES:
        raise ConfigError(f"dtype {requested!r} is not one of {', '.join(DTYPES)}")
    if requested == "auto":
        return native_dtype(card)
    if card is None and requested != "float32":
        raise ConfigError(
            f"{requested} training needs a CUDA GPU; on a CPU the lab trains in float32. "
            'Use dtype="auto" (--dtype auto) or "float32"'
        )
    if card is not None and requested == "bfloat16" and not card.native_bf16:
        raise ConfigError(
            f"{card.name} (compute capability {card.capability[0]}.{card.capability[1]}) has no native bfloat16: the "
            'trainer refuses it and emulation would be slow. Use dtype="float16" (--dtype float16) or "auto", which '
            "picks it"
        )
    return requested
