"""The runtime state of a lab process, read once here and passed on: which data-parallel process this is (world
size, process rank, local rank, main process), quick mode, the cache folder, the GPU (if any), its native precision
and the one dtype decision of the lab. No other module reads WORLD_SIZE, RANK, LOCAL_RANK, FINETUNE_LAB_QUICK or
FINETUNE_LAB_CACHE.

Every part of the lab that needs a dtype (loading for training, the trainer's bf16/fp16 flags, reloading a run,
generation, evaluation, the notebooks' first cell) asks `choose_dtype`, so a Colab T4 trains and reloads in fp16
and an Ampere or newer card in bf16, whatever `torch.cuda.is_bf16_supported()` says (it answers True on a T4,
which only emulates bf16, slowly).
"""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from .config import DTYPES, ConfigError

# bf16 matrix units arrived with Ampere (compute capability 8.0): A100, RTX 30xx, L4, H100. Older cards (T4: 7.5,
# V100: 7.0) run fp16 natively and bf16 only in emulation.
NATIVE_BF16_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class Processes:
    """The data-parallel processes of this run: more than one under `accelerate launch` / torchrun, one GPU each."""

    world_size: int
    rank: int  # this process among all of them (not LoRA's rank r)
    local_rank: int  # this process on its machine: the index of its GPU

    @property
    def is_main(self) -> bool:
        """The process that writes run folders, plots and summaries, and prints them."""
        return self.rank == 0


@functools.cache
def processes() -> Processes:
    return Processes(
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        rank=int(os.environ.get("RANK", "0")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def is_main_process() -> bool:
    return processes().is_main


@functools.cache
def ci_quick() -> bool:
    """The one switch that shortens notebook and lab runs under CI (FINETUNE_LAB_QUICK=1)."""
    return os.environ.get("FINETUNE_LAB_QUICK", "") not in ("", "0", "false", "False")


@functools.cache
def cache_dir() -> Path:
    """Where the embedded model is converted and kept (FINETUNE_LAB_CACHE, default ~/.cache/finetune_lab)."""
    return Path(os.environ.get("FINETUNE_LAB_CACHE", Path.home() / ".cache" / "finetune_lab"))


@dataclass(frozen=True)
class Gpu:
    name: str
    capability: tuple[int, int]
    total_mb: float
    free_mb: float

    @property
    def native_bf16(self) -> bool:
        return self.capability >= NATIVE_BF16_CAPABILITY


def gpu(index: int | None = None) -> Gpu | None:
    """The CUDA card this process trains on (its local rank's unless `index` says), or None on a CPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    index = processes().local_rank if index is None else index
    free, total = torch.cuda.mem_get_info(index)
    return Gpu(
        torch.cuda.get_device_name(index), tuple(torch.cuda.get_device_capability(index)), total / 2**20, free / 2**20
    )


def native_dtype(capability: tuple[int, int] | None) -> str:
    """bfloat16 on Ampere and newer, float16 on older cards, float32 on a CPU."""
    if capability is None:
        return "float32"
    return "bfloat16" if tuple(capability) >= NATIVE_BF16_CAPABILITY else "float16"


def choose_dtype(requested: str, card: Gpu | None) -> str:
    """The dtype to train and run in: the card's native one for "auto", else the request if the card can run it."""
    if requested not in DTYPES:
        raise ConfigError(f"dtype {requested!r} is not one of {', '.join(DTYPES)}")
    if requested == "auto":
        return native_dtype(card.capability if card else None)
    if card is None and requested != "float32":
        raise ConfigError(
            f"{requested} training needs a CUDA GPU; on a CPU the lab trains in float32. "
            'Use dtype="auto" (--dtype auto) or "float32"'
        )
    if card is not None and requested == "bfloat16" and not card.native_bf16:
        major, minor = card.capability
        raise ConfigError(
            f"{card.name} (compute capability {major}.{minor}) has no native bfloat16: the trainer "
            'refuses it and emulation would be slow. Use dtype="float16" (--dtype float16) or "auto", which picks it'
        )
    return requested


def hub_unreachable_reason() -> str | None:
    """Why models cannot be downloaded from the Hugging Face hub right now, or None when they can."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "") not in ("", "0", "false", "False"):
            return f"{var} is set"
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        return "the Hugging Face hub cannot be reached"
    return None
