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
    qlora_weights_gb_expected,
)


def test_the_script_twin_passes_the_reference_solutions():
    done = subprocess.run([sys.executable, str(LAB / "exercise_checks.py")], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("correct: ") == 3


def test_qlora_memory_names_the_usual_mistakes(capsys):
    assert 0.7 < qlora_weights_gb_expected() < 0.8  # TinyLlama-1.1B: ~0.76 GB, not "about 0.6"
    assert not check_qlora_weights_gb(None)
    assert not check_qlora_weights_gb(2.2)  # the 16-bit model
    out = capsys.readouterr().out
    assert "set qlora_weights_gb" in out and "is the 16-bit model" in out


def test_the_label_mask_check_names_a_mask_that_learns_the_prompt(capsys):
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(EMBEDDED))
    assert check_labels(labels_expected, tokenizer)

    def learns_everything(tokenizer, prompt, answer):
        ids, _ = labels_expected(tokenizer, prompt, answer)
        return ids, ids

    assert not check_labels(learns_everything, tokenizer)
    assert "are learned, but the answer turn starts at" in capsys.readouterr().out


def test_the_lora_check_tells_a_missing_scale_from_a_missing_update(capsys):
    assert not check_lora_forward(lambda x, W, A, B, alpha, r: x @ W.T)
    assert not check_lora_forward(lambda x, W, A, B, alpha, r: x @ W.T + (x @ A.T) @ B.T)
    assert not check_lora_forward(lambda x, W, A, B, alpha, r: torch.zeros(1))
    out = capsys.readouterr().out
    assert "the base layer alone" in out and "not scaled" in out and "shape" in out
