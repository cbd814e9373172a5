"""finetune_lab.models: when gradient checkpointing is on, and the base model's answers from fresh adapters."""

import pytest
import train_tiny_model as lab
from helpers import REPO

from finetune_lab.config import TrainConfig
from finetune_lab.generation import generate
from finetune_lab.models import BackendChoice, adapters_off, gradient_checkpointing_choice
from finetune_lab.phases import Phases

CPU = BackendChoice("transformers", "cpu", "float32", "lora")


def test_gradient_checkpointing_is_off_on_a_cpu_unless_configured():
    assert gradient_checkpointing_choice(TrainConfig(), CPU) == (
        False,
        "off: a CPU run is bound by compute, and recomputing layers would only add to it",
    )
    assert gradient_checkpointing_choice(TrainConfig(gradient_checkpointing=True), CPU) == (True, "on: as configured")


@pytest.mark.slow
def test_fresh_adapters_change_no_answer_so_the_before_answers_are_the_base_models(tmp_path, base_model_dir):
    cfg = TrainConfig(data=str(REPO / "data" / "course_train.jsonl"), output_dir=str(tmp_path))
    model, tokenizer, _ = lab.model_for_training(cfg, Phases())
    prompts = ["Plant 8 onions in bed 4 of `garden`.", "What is LoRA?"]
    with_adapters = generate(model, tokenizer, prompts, max_new_tokens=12, progress=False)
    with adapters_off(model):
        assert model.base_model.model.model.layers[0].self_attn.q_proj.disable_adapters
        without = generate(model, tokenizer, prompts, max_new_tokens=12, progress=False)
    assert not model.base_model.model.model.layers[0].self_attn.q_proj.disable_adapters  # back on afterwards
    assert without == with_adapters  # LoRA's B starts at zero
