"""Greedy generation with the model's chat template: the test answers, the evaluation and the export's parity."""

from dataclasses import dataclass

from tqdm.auto import tqdm

# Greedy whatever the model's own generation_config samples with (its temperature, top_p, top_k unset, not ignored).
GREEDY = dict(do_sample=False, temperature=None, top_p=None, top_k=None)


@dataclass
class Answer:
    text: str
    tokens: int  # generated tokens, the end-of-turn token included
    stopped: bool  # ended at the end-of-turn token, not at the token cap


def greedy_answers(model, tokenizer, prompts, max_new_tokens: int = 128, batch_size: int = 8, progress: bool = True):
    """Greedy answers to each prompt (a string or chat messages); batch_size=1 pads nothing, so only the weights can
    make two models' answers differ (the export's parity)."""
    import torch

    found = []
    # Decoder-only models continue from the last position, so batches are padded on the left.
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    try:
        batches = range(0, len(prompts), batch_size)
        for start in tqdm(batches, desc="generating", disable=not progress or len(batches) < 2):
            chunk = [
                [{"role": "user", "content": p}] if isinstance(p, str) else p
                for p in prompts[start : start + batch_size]
            ]
            texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in chunk]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with torch.no_grad():
                ends = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
                out = model.generate(**enc, **GREEDY, **ends, max_new_tokens=max_new_tokens)
            for row in out[:, enc["input_ids"].shape[1] :].tolist():
                stopped = tokenizer.eos_token_id in row  # what follows it is padding
                row = row[: row.index(tokenizer.eos_token_id) + 1] if stopped else row
                found.append(Answer(tokenizer.decode(row, skip_special_tokens=True).strip(), len(row), stopped))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return found


def generate(model, tokenizer, prompts, max_new_tokens: int = 128, batch_size: int = 8, progress: bool = True):
    """The answers' texts."""
    return [a.text for a in greedy_answers(model, tokenizer, prompts, max_new_tokens, batch_size, progress)]
