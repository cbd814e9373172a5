"""gguf_export.py: NF4 rounding for QLoRA runs, full fine-tuning runs, the tokenizer fix, answers compared."""

import json
import shutil

import pytest
import torch
from gguf_export import (
    NF4_LEVELS,
    as_byte_level_bpe,
    base_as_trained,
    first_difference,
    plan_export,
    round_to_nf4,
)


def test_round_to_nf4_keeps_each_blocks_largest_value_and_uses_16_levels():
    torch.manual_seed(0)
    weight = torch.randn(8, 96)  # 768 values: 12 blocks of 64
    rounded = round_to_nf4(weight)
    blocks, original = rounded.reshape(-1, 64), weight.reshape(-1, 64)
    scale = original.abs().amax(dim=1, keepdim=True)
    assert torch.allclose(blocks.abs().amax(dim=1, keepdim=True), scale)
    levels = torch.tensor(NF4_LEVELS)
    normalized = blocks / scale
    assert torch.allclose(normalized.unsqueeze(-1).sub(levels).abs().amin(-1), torch.zeros_like(normalized), atol=1e-6)
    # nearest level: no value moves by more than half of the widest gap between levels
    assert (rounded - weight).abs().div(scale.repeat_interleave(64, 0).reshape(weight.shape)).max() <= 0.16


def test_a_qlora_run_merges_onto_its_nf4_base_and_leaves_the_adapter_and_embeddings_alone():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    small = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=256
    )
    model = get_peft_model(LlamaForCausalLM(small), LoraConfig(r=4, target_modules=["q_proj", "down_proj"]))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    base_before, lora_before = layer.base_layer.weight.clone(), layer.lora_A["default"].weight.clone()
    untouched = model.base_model.model.model.layers[0].self_attn.k_proj.weight.clone()  # no LoRA, still NF4 in QLoRA
    embeddings = model.get_input_embeddings().weight.clone()
    base_as_trained(model, "qlora")
    assert torch.equal(layer.base_layer.weight, round_to_nf4(base_before))
    assert not torch.equal(layer.base_layer.weight, base_before)
    assert torch.equal(model.base_model.model.model.layers[0].self_attn.k_proj.weight, round_to_nf4(untouched))
    assert torch.equal(layer.lora_A["default"].weight, lora_before)
    assert torch.equal(model.get_input_embeddings().weight, embeddings)


def test_plan_export_says_what_a_qlora_or_full_run_gets(trained_run, base_model_dir, tmp_path):
    qlora = tmp_path / "qlora"
    shutil.copytree(trained_run, qlora)
    config = json.loads((qlora / "run_config.json").read_text())
    (qlora / "run_config.json").write_text(json.dumps({**config, "method": "qlora"}))
    assert "merged onto that base de-quantized" in plan_export(qlora).notes[0]

    full = tmp_path / "full"
    full.mkdir()
    for item in base_model_dir.iterdir():
        (full / item.name).symlink_to(item)
    (full / "run_config.json").write_text(json.dumps({**config, "method": "full"}))
    plan = plan_export(full)
    assert "no adapter to merge" in plan.notes[0]
    assert plan.staging.exists() and not plan.folder.exists()


def test_the_byte_level_fix_keeps_every_token_and_every_decoded_text(base_model_dir, tmp_path):
    from transformers import AutoTokenizer

    text = 'garden.plant("onion", bed=4, count=8)\n  x = 1 # 33 ünïcödé 🦙 <|im_end|>'
    before = AutoTokenizer.from_pretrained(base_model_dir)
    fixed = tmp_path / "tokenizer"
    before.save_pretrained(fixed)
    as_byte_level_bpe(fixed / "tokenizer.json")
    after = AutoTokenizer.from_pretrained(fixed)
    assert json.loads((fixed / "tokenizer.json").read_text())["decoder"]["type"] == "ByteLevel"
    ids = before(text)["input_ids"]
    assert after(text)["input_ids"] == ids
    assert after.decode(ids) == before.decode(ids) == text


def test_first_difference_counts_tokens(base_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    assert first_difference("garden.water(bed=1)", "garden.water(bed=1)", tokenizer) is None
    same_start = len(tokenizer("garden.", add_special_tokens=False)["input_ids"])
    assert first_difference("garden.water(bed=1)", "garden.plant(bed=1)", tokenizer) == same_start
    assert first_difference("import gardenkit", "garden.plant()", tokenizer) == 0


def test_an_unknown_export_type_lists_the_choices(trained_run):
    from gguf_export import ExportError

    with pytest.raises(ExportError, match="f16 .*q8_0 .*8-bit"):
        plan_export(trained_run, ("q5",))
