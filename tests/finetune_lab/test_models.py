"""finetune_lab.models: when gradient checkpointing and Unsloth's compile are on, and the base model's answers from
fresh adapters."""

import pytest
import train_tiny_model as lab
from helpers import REPO

import finetune_lab.runtime
from finetune_lab.config import TrainConfig, quick_config
from finetune_lab.generation import generate
from finetune_lab.models import (
    COMPILE_MIN_STEPS,
    BackendChoice,
    adapters_off,
    compile_choice,
    gradient_checkpointing_choice,
    planned_steps,
)
from finetune_lab.phases import Phases

CPU = BackendChoice("transformers", "cpu", "float32", "lora")


def test_gradient_checkpointing_is_off_on_a_cpu_unless_configured():
    assert gradient_checkpointing_choice(TrainConfig(), CPU) == (
        False,
        "off: a CPU run is bound by compute, and recomputing layers would only add to it",
    )
    assert gradient_checkpointing_choice(TrainConfig(gradient_checkpointing=True), CPU) == (True, "on: as configured")


def test_the_steps_a_run_plans_are_counted_as_the_trainer_counts_them():
    assert planned_steps(TrainConfig(), 50) == 56  # the course run: 7 batches of 8 a epoch, 8 epochs
    assert planned_steps(TrainConfig(grad_accum=2), 50) == 24  # 3 updates of 2 batches an epoch
    assert planned_steps(TrainConfig(epochs=1.5), 50) == 11
    assert planned_steps(quick_config(), 50) == 16  # max_steps wins
    assert planned_steps(TrainConfig(limit_examples=16), 50) == 16


def test_unsloth_compiles_only_for_a_run_long_enough_to_repay_it_unless_the_user_set_it(monkeypatch):
    monkeypatch.setattr(finetune_lab.runtime, "UNSLOTH_COMPILE_DISABLE", None)
    on, why = compile_choice(TrainConfig(), 50)
    assert not on and why.startswith("off: 56 optimizer steps of up to 8 x 256 tokens")
    long_run = TrainConfig(max_seq_length=1024, max_steps=COMPILE_MIN_STEPS)
    assert compile_choice(long_run, 50) == (
        True,
        f"on: {COMPILE_MIN_STEPS:,} optimizer steps of up to 8 x 1024 tokens; the compile (~24 s once) pays from "
        f"about {COMPILE_MIN_STEPS:,} steps",
    )
    monkeypatch.setattr(finetune_lab.runtime, "UNSLOTH_COMPILE_DISABLE", "0")
    assert compile_choice(TrainConfig(), 50) == (True, "on: as set (UNSLOTH_COMPILE_DISABLE=0)")
    monkeypatch.setattr(finetune_lab.runtime, "UNSLOTH_COMPILE_DISABLE", "partial")
    assert not compile_choice(long_run, 50)[0]


@pytest.mark.slow
def test_fresh_adapters_change_no_answer_so_the_before_answers_are_the_base_models(tmp_path, base_model_dir):
    cfg = TrainConfig(data=str(REPO / "data" / "course_train.jsonl"), output_dir=str(tmp_path))
    model, tokenizer, _ = lab.model_for_training(cfg, Phases(), examples=50)
    prompts = ["Plant 8 onions in bed 4 of `garden`.", "What is LoRA?"]
    with_adapters = generate(model, tokenizer, prompts, max_new_tokens=12, progress=False)
    with adapters_off(model):
        assert model.base_model.model.model.layers[0].self_attn.q_proj.disable_adapters
        without = generate(model, tokenizer, prompts, max_new_tokens=12, progress=False)
    assert not model.base_model.model.model.layers[0].self_attn.q_proj.disable_adapters  # back on afterwards
    assert without == with_adapters  # LoRA's B starts at zero
