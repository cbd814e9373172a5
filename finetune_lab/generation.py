"""Batched greedy generation with the model's chat template."""

from __future__ import annotations

from tqdm.auto import tqdm


def _as_messages(prompt) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def generate(
    model,
    tokenizer,
    prompts,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    do_sample: bool = False,
    progress: bool = True,
) -> list[str]:
    """Answer each prompt (a string or a list of chat messages); greedy unless do_sample is set."""
    import torch

    answers = []
    # Decoder-only models continue from the last position, so batches are padded on the left.
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    try:
        batches = range(0, len(prompts), batch_size)
        for start in tqdm(batches, desc="generating", disable=not progress or len(batches) < 2):
            chunk = [_as_messages(p) for p in prompts[start : start + batch_size]]
            texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in chunk]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with torch.no_grad():
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=do_sample,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            for row in out[:, enc["input_ids"].shape[1] :]:
                answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers
