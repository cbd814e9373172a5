"""Random-weight models shaped like the hub presets, for speed and code-path checks on machines without a hub.

Training throughput and memory do not depend on the weights' values, so a model built from a preset's
config measures the same as the real one; what it answers is meaningless. Used by bench/lora_speed.py and
bench/check_presets.py and the tests (the device has no hub access).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from finetune_lab.models import PRESET_SHAPES

# TinyLlama-Chat and StableLM-2-Zephyr both use the Zephyr chat format.
ZEPHYR_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + eos_token + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def toy_chat_tokenizer():
    """A 400-token byte-level BPE with the Zephyr chat template (ids 0-3: pad, bos, eos, unk)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    text = ["the quick brown fox jumps over the lazy dog %d" % i for i in range(200)]
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<s>", "</s>", "<unk>"]))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.chat_template = ZEPHYR_TEMPLATE
    return fast


def build_preset_shape(preset: str, out_dir: str | Path) -> Path:
    """Save a bf16 model with the preset's architecture and random weights, plus a toy Zephyr tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    values = dict(PRESET_SHAPES[preset])
    config = AutoConfig.for_model(values.pop("model_type"), bos_token_id=1, eos_token_id=2, pad_token_id=0, **values)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).to(torch.bfloat16).save_pretrained(out_dir)
    toy_chat_tokenizer().save_pretrained(out_dir)
    return Path(out_dir)


def build_like(like: str | Path, out_dir: str | Path) -> Path:
    """The architecture and tokenizer of the model folder `like`, with random bf16 weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(like)).to(torch.bfloat16).save_pretrained(out_dir)
    for item in Path(like).iterdir():
        if item.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(item, out_dir)
    return Path(out_dir)
