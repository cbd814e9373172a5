"""The checks of exercises.ipynb: each takes your answer, compares it with what the libraries compute, and prints
"correct" or what is wrong, never raising, so the notebook runs top to bottom before you have written anything.

Who it is for: students working through exercises.ipynb (and solutions.ipynb, which passes them). The script twin
of that notebook: `python labs/unsloth_finetune/exercise_checks.py` checks the reference solutions below.
"""

import functools

import torch

from finetune_lab.config import ALL_LINEAR, quick_config
from finetune_lab.memory import MB, NF4_BYTES, estimate, shape_of
from finetune_lab.models import model_config

QLORA_MODEL = "tinyllama-1.1b-chat"


VERDICTS: list[bool] = []  # every check's verdict in this process, for the script twin's exit status


def _say(correct: bool, what: str) -> None:
    """Print the verdict (returning nothing, so a notebook cell shows the sentence alone)."""
    VERDICTS.append(correct)
    print(("correct: " if correct else "not yet: ") + what)


@functools.cache
def _tinyllama():
    return shape_of(model_config(QLORA_MODEL), ALL_LINEAR)  # counted on the meta device: no download, no memory


def weights_gb(method: str) -> float:
    """TinyLlama-1.1B's frozen weights in GB under `method` ("lora": 16-bit, "qlora": NF4 blocks, the rest 16-bit),
    as the preflight's estimate counts them."""
    cfg = quick_config(model=QLORA_MODEL, method=method)
    return estimate(_tinyllama(), cfg, "bfloat16", gradient_checkpointing=False).weights_mb * MB / 1e9


def check_qlora_weights_gb(answer) -> None:
    """Exercise 1 (easy): the GB (1e9 bytes) of TinyLlama-1.1B's weights in QLoRA, within 1%."""
    if answer is None:
        return _say(False, "set qlora_weights_gb to your number of GB")
    expected = weights_gb("qlora")
    if abs(answer - expected) <= 0.01 * expected:
        return _say(True, f"{answer:.3f} GB: NF4 blocks plus 16-bit embeddings, norms and head")
    if abs(answer - _tinyllama().params * NF4_BYTES / 1e9) <= 0.01 * expected:
        return _say(False, f"{answer:.3f} GB counts every parameter in NF4; embeddings, norms and head stay 16-bit")
    if abs(answer - weights_gb("lora")) <= 0.01 * expected:
        return _say(False, f"{answer:.3f} GB is the 16-bit model (LoRA's base); QLoRA stores the blocks in NF4")
    return _say(False, f"{answer:.3f} GB; count quantizable weights x NF4_BYTES + the other parameters x 2 bytes")


def labels_expected(tokenizer, prompt: list[dict], answer: str) -> tuple[list[int], list[int]]:
    """Token ids of the whole chat and labels that learn only the answer turn (-100 elsewhere)."""
    as_text = tokenizer.apply_chat_template
    asked = tokenizer(as_text(prompt, add_generation_prompt=True, tokenize=False)).input_ids
    ids = tokenizer(as_text([*prompt, {"role": "assistant", "content": answer}], tokenize=False)).input_ids
    return ids, [-100] * len(asked) + ids[len(asked) :]


def check_labels(labels_for, tokenizer) -> None:
    """Exercise 2 (medium): labels_for(tokenizer, prompt, answer) -> (ids, labels), on an example of its own."""
    prompt = [{"role": "system", "content": "Answer with code only."}, {"role": "user", "content": "Water bed 4."}]
    answer = "garden.water(bed=4, liters=2)"
    got = labels_for(tokenizer, prompt, answer)
    if got is None:
        return _say(False, "labels_for returns None: return (ids, labels)")
    (ids, labels), (want_ids, want) = got, labels_expected(tokenizer, prompt, answer)
    if list(ids) != want_ids:
        return _say(False, f"the ids are not the chat template's tokens of the whole chat ({len(want_ids)} of them)")
    if len(labels) != len(want):
        return _say(False, f"{len(labels)} labels for {len(want)} tokens: one label per token")
    learned = [i for i, label in enumerate(labels) if label != -100]
    want_learned = [i for i, label in enumerate(want) if label != -100]
    if learned != want_learned:
        return _say(False, f"positions {learned[:3]}... are learned, but the answer turn starts at {want_learned[0]}")
    if list(labels) != want:
        return _say(False, "a learned position's label must be its own token id")
    return _say(True, f"{len(learned)} of {len(want)} tokens learned: {tokenizer.decode(ids[want_learned[0] :])!r}")


def check_lora_forward(lora_forward) -> None:
    """Exercise 3 (hard): lora_forward(x, W, A, B, alpha, r) against PEFT's LoRA layer with the same W, A and B."""
    from peft.tuners.lora import Linear as PeftLoraLinear

    rng = torch.Generator().manual_seed(0)
    d_in, d_out, r, alpha = 12, 10, 4, 8
    W, A = torch.randn(d_out, d_in, generator=rng), torch.randn(r, d_in, generator=rng)
    B, x = torch.randn(d_out, r, generator=rng), torch.randn(3, d_in, generator=rng)
    base = torch.nn.Linear(d_in, d_out, bias=False)
    base.weight.data = W.clone()
    peft_layer = PeftLoraLinear(base, adapter_name="default", r=r, lora_alpha=alpha)
    peft_layer.lora_A["default"].weight.data, peft_layer.lora_B["default"].weight.data = A.clone(), B.clone()
    with torch.no_grad():
        want, got = peft_layer(x), lora_forward(x, W, A, B, alpha, r)
    if got is None:
        return _say(False, "lora_forward returns None: return W x plus the scaled low-rank update")
    if tuple(got.shape) != tuple(want.shape):
        return _say(False, f"the output's shape is {tuple(got.shape)}, expected {tuple(want.shape)} (batch, d_out)")
    if torch.allclose(got, x @ W.T, atol=1e-5):
        return _say(False, "this is the base layer alone: add (alpha / r) * B A x")
    if torch.allclose(got, x @ W.T + (x @ A.T) @ B.T, atol=1e-5):
        return _say(False, "the update is not scaled: multiply B A x by alpha / r")
    if not torch.allclose(got, want, atol=1e-5):
        return _say(False, "the output differs from PEFT's LoRA layer: h = x W^T + (alpha / r) (x A^T) B^T")
    return _say(True, "your LoRA layer computes what PEFT's does")


# The reference solutions, as solutions.ipynb writes them.
def lora_forward_solution(x, W, A, B, alpha, r):
    return x @ W.T + (alpha / r) * (x @ A.T) @ B.T


if __name__ == "__main__":
    from transformers import AutoTokenizer

    from finetune_lab.embedded import EMBEDDED
    from finetune_lab.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(EMBEDDED))
    check_qlora_weights_gb(weights_gb("qlora"))
    check_labels(labels_expected, tokenizer)
    check_lora_forward(lora_forward_solution)
    raise SystemExit(0 if all(VERDICTS) else 1)
