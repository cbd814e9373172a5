"""labs/unsloth_finetune/exercise_checks.py: each check accepts the reference solution and names what is wrong in
the answers students get wrong, without raising (exercises.ipynb runs clean before anything is written)."""

import subprocess
import sys

import torch
from helpers import LAB, REPO
from transformers import AutoTokenizer

from finetune_lab.embedded import EMBEDDED
from finetune_lab.models import resolve_model
from labs.unsloth_finetune.exercise_checks import (
    check_labels,
    check_lora_forward,
    check_qlora_weights_gb,
    labels_expected,
    weights_gb,
)


def test_the_script_twin_passes_the_reference_solutions():
    done = subprocess.run([sys.executable, str(LAB / "exercise_checks.py")], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("correct: ") == 3


def test_qlora_memory_names_the_usual_mistakes(capsys):
    assert 0.7 < weights_gb("qlora") < 0.8 < 2.1 < weights_gb("lora") < 2.3  # TinyLlama-1.1B: ~0.76 GB vs ~2.2
    check_qlora_weights_gb(None)
    check_qlora_weights_gb(2.2)  # the 16-bit model
    check_qlora_weights_gb(weights_gb("qlora"))
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("not yet: set qlora_weights_gb") and "is the 16-bit model" in out[1]
    assert out[2].startswith("correct: 0.762 GB")


def test_the_label_mask_check_names_a_mask_that_learns_the_prompt(capsys):
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(EMBEDDED))
    check_labels(labels_expected, tokenizer)

    def learns_everything(tokenizer, prompt, answer):
        ids, _ = labels_expected(tokenizer, prompt, answer)
        return ids, ids

    check_labels(learns_everything, tokenizer)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("correct: ") and out[1].startswith("not yet: ")
    assert "are learned, but the answer turn starts at" in out[1]


def test_the_lora_check_tells_a_missing_scale_from_a_missing_update(capsys):
    check_lora_forward(lambda x, W, A, B, alpha, r: x @ W.T)
    check_lora_forward(lambda x, W, A, B, alpha, r: x @ W.T + (x @ A.T) @ B.T)
    check_lora_forward(lambda x, W, A, B, alpha, r: torch.zeros(1))
    out = capsys.readouterr().out.splitlines()
    assert all(line.startswith("not yet: ") for line in out)
    assert "the base layer alone" in out[0] and "not scaled" in out[1] and "shape" in out[2]
