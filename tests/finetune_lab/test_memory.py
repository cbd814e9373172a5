"""finetune_lab.memory: Module 04's arithmetic, checked against the numbers the module prints."""

import pytest

from finetune_lab.config import ALL_LINEAR, TrainConfig
from finetune_lab.memory import MB, estimate, shape_of
from finetune_lab.models import BackendChoice, gradient_checkpointing_choice, model_config


@pytest.fixture(scope="module")
def tinyllama():
    return shape_of(model_config("tinyllama-1.1b-chat"), ALL_LINEAR)


def test_tinyllama_has_its_published_size_and_lora_r16_trains_1_percent(tinyllama):
    assert tinyllama.params == 1_100_048_384
    # r=16 on all seven projections of 22 layers: Module 04's table says 12.6M (1.1%)
    assert tinyllama.lora_per_rank * 16 == 12_615_680


def test_full_vs_lora_vs_qlora_memory_follows_the_module(tinyllama):
    full, lora, qlora = (estimate(tinyllama, TrainConfig(method=m), "float16", True) for m in ("full", "lora", "qlora"))
    # full fine-tuning in fp16 mixed precision: 16 bytes per parameter, ~17.6 GB before activations
    assert (full.weights_mb + full.training_state_mb) * MB / 1e9 == pytest.approx(17.6, abs=0.1)
    # LoRA: the 16-bit base (2.2 GB) and 16 bytes per adapter parameter (0.20 GB)
    assert lora.weights_mb * MB / 1e9 == pytest.approx(2.2, abs=0.01)
    assert lora.training_state_mb * MB / 1e9 == pytest.approx(0.20, abs=0.01)
    # QLoRA: the blocks' linear layers in NF4 (~0.52 bytes per weight), embeddings and head stay 16-bit
    assert 0.6 < qlora.weights_mb * MB / 1e9 < 0.9
    assert full.total_mb > 15 * 1024 > lora.total_mb > qlora.total_mb  # what fits on a 15 GB T4


def test_gradient_checkpointing_and_shorter_batches_need_fewer_activations(tinyllama):
    course = TrainConfig()  # LoRA r=16, batch 8 x 256 tokens
    kept = estimate(tinyllama, course, "bfloat16", gradient_checkpointing=False)
    recomputed = estimate(tinyllama, course, "bfloat16", gradient_checkpointing=True)
    short = estimate(tinyllama, course.replace(max_seq_length=128), "bfloat16", gradient_checkpointing=True)
    assert kept.activations_mb > recomputed.activations_mb > short.activations_mb
    assert kept.weights_mb == recomputed.weights_mb


def test_checkpointing_is_chosen_only_where_the_batch_would_not_fit_beside_the_weights(tinyllama):
    t4 = BackendChoice("unsloth", "cuda:0 (Tesla T4)", "float16", "lora")
    # a T4 after loading TinyLlama in fp16: ~12.5 GB free; the course batch (LoRA r=16, 8 x 256 tokens) needs ~4 GB
    # without checkpointing
    on, why = gradient_checkpointing_choice(TrainConfig(), t4, tinyllama, free_mb=12.5 * 1024)
    assert not on and why.startswith("off: ~3.7 GB") and "12.5 GB free" in why
    # the same batch on a card with 4 GB left, or 4 x the batch on the T4: recompute rather than run out
    assert gradient_checkpointing_choice(TrainConfig(), t4, tinyllama, free_mb=4 * 1024)[0]
    assert gradient_checkpointing_choice(TrainConfig(batch_size=32), t4, tinyllama, free_mb=12.5 * 1024)[0]
