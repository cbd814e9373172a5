"""Load and validate the course's JSONL datasets.

Three schemas are accepted, one per file (Module 03 explains each):
  alpaca             {"instruction": ..., "input": optional, "output": ...}
  chat               {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}
  prompt_completion  {"prompt": ..., "completion": ...}
Every line is checked before any model loads; each problem names the file, the line, what is wrong and the fix. Every
example becomes a conversational prompt/completion pair: the prompt is the chat up to the last assistant turn, the
completion is that turn, and only the completion's tokens are trained on.
"""

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

SCHEMAS = {
    "alpaca": "instruction/input/output",
    "chat": "messages (a list of {role, content})",
    "prompt_completion": "prompt/completion",
}
ROLES = ("system", "user", "assistant")
# A single example this long is almost surely a pasted file or a broken export, not a training example.
MAX_LINE_CHARS = 100_000


class DatasetError(ValueError):
    """A dataset problem, with the file and line it was found at and how to fix it."""

    def __init__(self, path: Path | str, problem: str, fix: str, line: int | None = None):
        where = f"{path}, line {line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {problem}. Fix: {fix}")
        self.path, self.line, self.problem, self.fix = str(path), line, problem, fix


@dataclass
class Example:
    prompt: list[dict]  # chat messages ending in a user turn
    completion: str  # the assistant answer the model learns
    line: int  # where it came from, for messages about it
    ignored_turns: int = 0  # chat turns after the last assistant answer (nothing to learn from them)

    @property
    def prompt_key(self) -> str:
        """The prompt as one comparable string: duplicates, the held-out split and overlaps are found by it."""
        return json.dumps(self.prompt, sort_keys=True)

    @property
    def user_text(self) -> str:
        return self.prompt[-1]["content"]


@dataclass
class Dataset:
    path: Path
    schema: str
    examples: list[Example]
    duplicates: int = 0
    warnings: list[str] = field(default_factory=list)
    sha256: str = ""  # of the file as read: a resumed run and the evaluation tell when it has changed since

    def __len__(self) -> int:
        return len(self.examples)

    def trl_rows(self) -> list[dict]:
        """TRL's conversational prompt/completion rows: the trainer masks the prompt's tokens out of the loss."""
        return [
            {"prompt": e.prompt, "completion": [{"role": "assistant", "content": e.completion}]} for e in self.examples
        ]


TELLTALES = {"alpaca": {"instruction", "output"}, "chat": {"messages"}, "prompt_completion": {"prompt", "completion"}}


def _text(row: dict, key: str, path, line: int, optional: bool = False) -> str:
    value = row.get(key)
    if value is None and optional:
        return ""
    if key not in row:
        raise DatasetError(path, f'field "{key}" is missing', f'add the "{key}" field (a string) to this line', line)
    if not isinstance(value, str):
        problem = f'field "{key}" is {type(value).__name__}, not a string'
        raise DatasetError(path, problem, f'make "{key}" a JSON string (in quotes)', line)
    if not value.strip() and not optional:
        raise DatasetError(path, f'field "{key}" is empty', f'write the text of "{key}" or delete this line', line)
    return value


def _example_from_chat(row: dict, path, line: int) -> Example:
    def fail(problem: str, fix: str) -> DatasetError:
        return DatasetError(path, problem, fix, line)

    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        fix = 'write "messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]'
        raise fail('"messages" is not a non-empty list', fix)
    clean = []
    for i, turn in enumerate(messages):
        if not isinstance(turn, dict):
            problem = f"message {i} is {type(turn).__name__}, not an object"
            raise fail(problem, 'write each message as {"role": ..., "content": ...}')
        if turn.get("role") not in ROLES:
            problem = f"message {i} has role {turn.get('role')!r}, which is not one of {', '.join(ROLES)}"
            raise fail(problem, "use system, user or assistant as the role")
        clean.append({"role": turn["role"], "content": _text(turn, "content", path, line)})
    last_assistant = max((i for i, t in enumerate(clean) if t["role"] == "assistant"), default=None)
    if last_assistant is None:
        fix = "end the messages with the answer the model should give, role assistant"
        raise fail("the chat has no assistant turn to learn from", fix)
    prompt = clean[:last_assistant]
    if not any(t["role"] == "user" for t in prompt):
        fix = "put the user's question before the assistant's answer"
        raise fail("the assistant turn has no user turn before it", fix)
    ignored = len(clean) - 1 - last_assistant
    return Example(prompt, clean[last_assistant]["content"], line, ignored_turns=ignored)


def _example(row: dict, schema: str, path, line: int, system_prompt: str | None) -> Example:
    # A row's own "system" field (Alpaca and prompt/completion files often carry one) wins over the run's default.
    system_prompt = _text(row, "system", path, line, optional=True) or system_prompt
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    if schema != "chat":
        if schema == "alpaca":
            user, extra = _text(row, "instruction", path, line), _text(row, "input", path, line, optional=True)
            user, answer = f"{user}\n\n{extra}" if extra else user, _text(row, "output", path, line)  # input after it
        else:
            user, answer = _text(row, "prompt", path, line), _text(row, "completion", path, line)
        return Example(system + [{"role": "user", "content": user}], answer, line)
    example = _example_from_chat(row, path, line)
    if system and example.prompt[0]["role"] != "system":
        example.prompt = system + example.prompt
    return example


def content_hash(raw: bytes) -> str:
    """A file's fingerprint (sha256 of its bytes): runs record it, resumes and evaluations compare it."""
    return hashlib.sha256(raw).hexdigest()


def _read_lines(path: Path) -> tuple[list[tuple[int, str]], str]:
    if not path.exists():
        fix = "check the path (it is read relative to the folder you run from)"
        raise DatasetError(path, "the file does not exist", fix)
    if path.is_dir():
        raise DatasetError(path, "this is a folder, not a file", "pass the path of a .jsonl file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        fix = "save the file as UTF-8 (most editors have it under 'Save with encoding')"
        line = raw[: err.start].count(b"\n") + 1
        raise DatasetError(path, f"byte {raw[err.start]:#04x} is not UTF-8", fix, line) from None
    if not text.strip():
        what = "the file is empty" if not text else "the file holds only blank lines"
        raise DatasetError(path, what, 'put one JSON object per line, e.g. {"instruction": "...", "output": "..."}')
    # JSONL lines end at a newline only: a string may hold U+2028 or U+0085, which str.splitlines() would split at
    lines = [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]
    return lines, content_hash(raw)


def _parse(path: Path, n: int, line: str) -> dict:
    """One line as a JSON object, or the DatasetError that says what is wrong with it."""
    if len(line) > MAX_LINE_CHARS:
        fix = "split it into shorter examples, or check that a whole file was not pasted into one field"
        raise DatasetError(path, f"the line is {len(line):,} characters long (limit {MAX_LINE_CHARS:,})", fix, n)
    try:
        row = json.loads(line)
    except RecursionError:
        fix = "write each example as an object of strings (a chat: a list of role/content objects)"
        raise DatasetError(path, "the line nests arrays or objects too deeply to be an example", fix, n) from None
    except json.JSONDecodeError as err:
        fix = "check for a cut-off line, a missing quote or comma, or single quotes (JSON needs double quotes)"
        raise DatasetError(path, f"the line is not valid JSON ({err.msg} at column {err.colno})", fix, n) from None
    if not isinstance(row, dict):
        fix = "write each example as one {...} object per line"
        raise DatasetError(path, f"the line is a JSON {type(row).__name__}, not an object", fix, n)
    return row


def load_jsonl(path: str | Path, system_prompt: str | None = None) -> Dataset:
    """Read and validate every line of a JSONL dataset; raise DatasetError at the first bad one."""
    path = Path(path)
    schema, schema_line, examples = None, 0, []
    lines, sha256 = _read_lines(path)
    for n, line in lines:
        row = _parse(path, n, line)
        found = [name for name, telltale in TELLTALES.items() if telltale & set(row)]  # the schemas the row is in
        if len(found) != 1:
            names = "; ".join(f"{k}: {v}" for k, v in SCHEMAS.items())
            what = f"mix {' and '.join(found)}, two" if found else "match none"
            problem = f"the fields {sorted(row)} {what} of the three schemas ({names})"
            raise DatasetError(path, problem, "rename the fields to exactly one of those schemas", n)
        row_schema = found[0]
        if schema is None:
            schema, schema_line = row_schema, n
        elif row_schema != schema:
            problem = f"this line uses the {row_schema} schema but line {schema_line} uses {schema}"
            raise DatasetError(path, problem, "use one schema for the whole file", n)
        examples.append(_example(row, schema, path, n, system_prompt))
    seen = Counter((ex.prompt_key, ex.completion) for ex in examples)
    dataset = Dataset(path, schema, examples, duplicates=sum(c - 1 for c in seen.values()), sha256=sha256)
    if dataset.duplicates:
        most = max(seen.values())
        dataset.warnings.append(
            f"{path}: {dataset.duplicates} duplicate example(s); they are kept, so an example that appears {most} "
            f"times weighs {most} times as much as the others (remove the copies unless that is what you want)"
        )
    trailing = [str(ex.line) for ex in examples if ex.ignored_turns]
    if trailing:
        dataset.warnings.append(
            f"{path}, line(s) {', '.join(trailing[:10])}: the chat goes on after its last assistant answer; those "
            "turns are not trained on (end each chat with the answer to learn)"
        )
    return dataset


# Chat formats whose turn markers are plain text rather than special tokens (Zephyr's <|user|>, Llama-2's [INST]).
_TEMPLATE_MARKER = re.compile(r"<\|[^|\s]{1,40}\|>|\[/?INST\]|<</?SYS>>")


def chat_markers(tokenizer) -> list[str]:
    """The control markers of a model: its tokenizer's special tokens and its chat template's turn markers."""
    markers = set(tokenizer.all_special_tokens)
    markers |= {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    markers |= set(_TEMPLATE_MARKER.findall(template))
    return sorted((m for m in markers if len(m) >= 3), key=len, reverse=True)


_WHERE = {
    "system": ("the system prompt", "it would rewrite the instructions the model is given"),
    "user": ("a user turn", "it injects a fake turn into the conversation"),
    "assistant": ("an earlier assistant turn", "it fakes a turn boundary in the context"),
    "answer": ("the answer", "an answer that contains it teaches the model to stop there, or to write the other "
               "side of the conversation itself"),
}  # fmt: skip


def check_chat_markers(dataset: Dataset, tokenizer, model_name: str) -> None:
    """Refuse text that the chat template would read as control tokens, naming the marker, the field and the line."""
    markers = chat_markers(tokenizer)
    for ex in dataset.examples:
        fields = [(t["content"], t["role"]) for t in ex.prompt] + [(ex.completion, "answer")]
        for text, part in fields:
            found = next((m for m in markers if m in text), None)
            if found:
                where, harm = _WHERE[part]
                problem = f'{where} contains "{found}", which {model_name} reads as a control marker of its chat format'
                fix = f'remove "{found}" from the text (or write it differently, e.g. without its brackets or pipes)'
                raise DatasetError(dataset.path, f"{problem}: {harm}", fix, ex.line)


def split_heldout(dataset: Dataset, fraction: float) -> tuple[Dataset, Dataset]:
    """A held-out part: the `fraction` of examples (at least one) whose prompts hash lowest, whatever the order."""
    import math

    def key(ex):
        return hashlib.sha1(ex.prompt_key.encode()).hexdigest()

    ranked = sorted(dataset.examples, key=key)
    held = {id(ex) for ex in ranked[: max(1, math.ceil(fraction * len(ranked)))]}
    if len(held) == len(ranked):
        raise DatasetError(
            dataset.path,
            f"{len(ranked)} example(s) are too few to split off a held-out part",
            "add examples, or give a held-out file of its own",
        )
    kept = [ex for ex in dataset.examples if id(ex) not in held]
    heldout = [ex for ex in dataset.examples if id(ex) in held]
    return (
        Dataset(dataset.path, dataset.schema, kept, warnings=list(dataset.warnings), sha256=dataset.sha256),
        Dataset(dataset.path, dataset.schema, heldout, sha256=dataset.sha256),
    )


def count_too_long(dataset: Dataset, tokenizer, max_seq_length: int) -> int:
    """How many examples exceed max_seq_length tokens once rendered by the chat template."""
    too_long = 0
    for ex in dataset.examples:
        ids = tokenizer.apply_chat_template(
            ex.prompt + [{"role": "assistant", "content": ex.completion}], tokenize=True, return_dict=True
        )["input_ids"]
        too_long += len(ids) > max_seq_length
    return too_long


def heldout_overlap(train: Dataset, heldout: Dataset) -> str | None:
    """A warning when held-out prompts also stand in the training file: scores on them measure memory, not learning."""
    trained = {ex.prompt_key for ex in train.examples}
    shared = [str(ex.line) for ex in heldout.examples if ex.prompt_key in trained]
    if shared:
        return (
            f"{heldout.path}, line(s) {', '.join(shared[:10])}: {len(shared)} of the {len(heldout)} held-out prompts "
            f"are also in {train.path}, so the validation loss and held-out scores partly measure memory; remove "
            "them from one of the files"
        )
    return None
