"""Score generated answers against known outputs, in two families (modules/05 explains both):

code   the reference is a fenced block, or Python statements with a call, assignment, import or definition.
       correct: the same program (equal syntax trees). hallucinated: uses a function, class, method, attribute or
       keyword argument of the course library that its stub (data/gardenkit_api.pyi) does not define; n/a otherwise.
prose  any other reference. correct: every specific of the reference (numbers, quoted or backticked names, commands,
       paths, identifiers, capitalised names) is in the answer and nothing was invented; with no specifics, ROUGE-L
       >= 0.5. hallucinated: the answer asserts a specific found in neither the reference nor the prompt.
Both: abstained (the answer says it does not know, and asserts nothing), exact match, token F1, ROUGE-L.
A rate that does not apply to any answer of a table is NaN, shown as n/a, never 0.
"""

import ast
import functools
import html
import json
import re
from pathlib import Path

import pandas as pd

from .api_check import DEFAULT_API as DEFAULT_API  # re-exported: a notebook scores with this module alone
from .api_check import FENCE, ApiReference, extract_code, hallucinated_calls
from .api_check import load_api as load_api

METRICS = ["accuracy", "abstained", "hallucination_rate", "exact_match", "token_f1", "rouge_l", "parses"]
_TOKEN = re.compile(r"\w+|[^\w\s]")


# ---------------------------------------------------------------- text metrics


def same_program(answer: str, reference: str) -> bool | None:
    """Equal ASTs; None when either side is not Python."""
    try:
        return ast.dump(ast.parse(answer)) == ast.dump(ast.parse(reference))
    except SyntaxError:
        return None


def token_f1(answer: str, reference: str) -> float:
    a, r = _TOKEN.findall(answer), _TOKEN.findall(reference)
    if not a or not r:
        return float(a == r)
    common = sum(min(a.count(t), r.count(t)) for t in set(a) & set(r))
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


@functools.cache
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(answer: str, reference: str) -> float:
    return _rouge().score(reference, answer)["rougeL"].fmeasure


_CODE_NODES = (ast.Call, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Import, ast.ImportFrom)
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def looks_like_code(reference: str) -> bool:
    """A fenced block, or statements holding a call, assignment, import or definition ("It is 42." is prose)."""
    if FENCE.search(reference):
        return True
    try:
        tree = ast.parse(reference)
    except SyntaxError:
        return False
    return any(isinstance(node, _CODE_NODES + _DEFINITIONS) for node in ast.walk(tree))


# Specifics an answer can assert: numbers, "quoted" or `backticked` text, paths, identifiers with _ . or inner
# capitals, and capitalised words that do not start a sentence.
_SPECIFIC = re.compile(
    r"`[^`\n]+`|\"[^\"\n]{1,60}\"|'[^'\n]{2,60}'"
    r"|(?:\.{0,2}/|~/|[A-Za-z]:\\)[\w.\-/\\]+|\b\w+(?:[._]\w+)+\b|\b[a-z]+[A-Z]\w*\b"
    r"|\b\d+(?:[.,:]\d+)*\b|(?<![.!?]\s)(?<!^)\b[A-Z][a-zA-Z]+\b",
    re.M,
)
_ABSTAIN = re.compile(
    r"\b(i (?:do not|don't) know|i'm not sure|i am not sure|i (?:cannot|can't|could not) "
    r"(?:answer|find|tell|say)|(?:no|not enough) information|i (?:do not|don't) have "
    r"(?:that|this|enough|any) information|unknown to me|not (?:documented|specified))\b",
    re.I,
)


def specifics(text: str) -> list[str]:
    """The checkable specifics a piece of prose asserts, in order, without quotes or backticks."""
    found = []
    for match in _SPECIFIC.finditer(text):
        item = match.group(0).strip("`\"'").rstrip(".,:")
        if item and item not in found and item not in ("I", "It", "The", "A", "An"):
            found.append(item)
    return found


# A reference this short without specifics ("Paris.", "Low-Rank Adaptation.") is itself what the answer must say.
SHORT_REFERENCE_WORDS = 3


def invented_specifics(answer: str, reference: str, prompt: str = "") -> list[str]:
    """Specifics of the answer found in neither the reference nor the prompt (case-insensitive)."""
    known = f"{reference}\n{prompt}".lower()
    return [item for item in specifics(answer) if item.lower() not in known]


def score(answer: str, reference: str, api: ApiReference | None = None, prompt: str = "") -> dict:
    """All scores of one answer against its reference (and the prompt, which prose answers may repeat)."""
    exact = answer.split() == reference.split()  # equal but for whitespace
    row = {"exact_match": float(exact), "token_f1": token_f1(answer, reference), "rouge_l": rouge_l(answer, reference)}
    abstained = bool(_ABSTAIN.search(answer))  # says it does not know (and so asserts nothing of its own)
    if looks_like_code(reference):
        code = extract_code(answer)
        reference_code = extract_code(reference)
        uses_api = api is not None and bool(api_names_used(reference_code, api))
        unknown = hallucinated_calls(code, api) if uses_api else []
        row.update(
            family="code",
            parses=float(same_program(code, code) is not None),
            accuracy=float(bool(same_program(code, reference_code))),
            abstained=float(abstained),
            hallucinated=", ".join(unknown),
            hallucination_rate=float(bool(unknown)) if uses_api else float("nan"),
        )
        return row
    invented = [] if abstained else invented_specifics(answer, reference, prompt)
    expected = specifics(reference)
    lowered = answer.lower()
    if expected:
        covered = all(item.lower() in lowered for item in expected)
    elif len(reference.split()) <= SHORT_REFERENCE_WORDS:  # "Paris.": a name that starts its sentence is no specific
        covered = reference.strip().rstrip(".!").lower() in lowered
    else:
        covered = row["rouge_l"] >= 0.5
    row.update(
        family="prose",
        parses=float("nan"),
        accuracy=float(exact or (covered and not invented)),
        abstained=float(abstained),
        hallucinated=", ".join(invented),
        hallucination_rate=float(bool(invented)),
    )
    return row


def mark_invented(answer: str, hallucinated: str = "", family: str = "prose") -> str:
    """The whole answer as wrapped HTML, each invented span (score's `hallucinated`) in <mark>."""
    answer = html.escape(answer)
    for item in filter(None, hallucinated.split(", ")):
        # a code finding names its owner ("Garden.irrigate", "Garden(soil=)"): mark the invented name itself
        span = re.findall(r"\w+", item)[-1] if family == "code" else item
        answer = re.sub(
            rf"(?<![\w>]){re.escape(html.escape(span))}(?!\w)", lambda m: f"<mark>{m.group(0)}</mark>", answer
        )
    return f"<pre style='white-space: pre-wrap; text-align: left'>{answer}</pre>"


def highlight_invented(table: pd.DataFrame) -> str:
    """An HTML table of the answers that invented something, each invented span in <mark> (for the notebook)."""
    columns = dict.fromkeys([*table, "model", "split"])  # a table scored without a model name gets an empty one
    found = table[table["hallucinated"] != ""].reindex(columns=list(columns), fill_value="")
    found["answer"] = [mark_invented(r["answer"], r["hallucinated"], r.get("family", "")) for _, r in found.iterrows()]
    found["prompt"] = found["prompt"].map(html.escape)
    return found[["model", "split", "prompt", "answer"]].to_html(escape=False, index=False)


def api_names_used(code: str, api: ApiReference) -> bool:
    """Whether a piece of code touches the API's module or a variable named after one of its classes."""
    names = {api.module, *api.module_names(), *(c.lower() for c in api.classes)}
    return any(re.search(rf"\b{re.escape(n)}\b", code) for n in names)


def score_answers(
    prompts: list[str], references: list[str], answers: list[str], api: ApiReference | None = None, split: str = ""
) -> pd.DataFrame:
    rows = [
        {"split": split, "prompt": p, "reference": r, "answer": a, **score(a, r, api, p)}
        for p, r, a in zip(prompts, references, answers)
    ]
    return pd.DataFrame(rows)


def aggregate(table: pd.DataFrame) -> dict[str, float]:
    """Mean of each metric over the answers it applies to; NaN (shown as n/a) where it applies to none."""
    return {m: float(table[m].mean()) if table[m].notna().any() else float("nan") for m in METRICS if m in table}


# ---------------------------------------------------------------- evaluating models and checkpoints


def evaluate_model(model, tokenizer, datasets: dict, api=None, max_new_tokens: int = 96, label: str = ""):
    """Generate for every example of each named dataset and score it; one row per example."""
    from .generation import generate

    tables = []
    for split, dataset in datasets.items():
        prompts = [ex.prompt for ex in dataset.examples]
        answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
        users, references = [ex.user_text for ex in dataset.examples], [ex.completion for ex in dataset.examples]
        tables.append(score_answers(users, references, answers, api, split).assign(file=str(dataset.path)))
    out = pd.concat(tables, ignore_index=True)
    out.insert(0, "model", label)
    return out


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """Aggregates per model and split: the numbers the module asks for."""
    rows = []
    for (model, split), part in table.groupby(["model", "split"], sort=False):
        families = part["family"].value_counts()
        family = " + ".join(f"{families[f]} {f}" for f in ("code", "prose") if f in families)
        file = part["file"].iloc[0] if "file" in part else None  # the model card names what was scored
        rows.append({"model": model, "split": split, "file": file, "n": len(part), "family": family, **aggregate(part)})
    return pd.DataFrame(rows)


COURSE_HELDOUT = "data/course_heldout.jsonl"  # what runs recorded before they named their held-out file


def run_data(run_config: dict) -> tuple[str, str | None]:
    """The training and held-out files a run used (its run_config.json names them): what is scored by default.
    Says so where one has changed since, and stops where one is gone."""
    from .data import DatasetError, content_hash

    files = (run_config["data"], run_config.get("heldout", COURSE_HELDOUT))
    for path, key in zip(files, ("data_sha256", "heldout_sha256")):
        if path and not Path(path).is_file():
            fix = "pass the files to score: --train FILE [--heldout FILE] (TRAIN_FILE, HELDOUT_FILE in the notebook)"
            raise DatasetError(path, "the run trained with this file, which is no longer there", fix)
        if path and run_config.get(key) and content_hash(Path(path).read_bytes()) != run_config[key]:  # no parse
            print(f"note: {path} has changed since the run trained with it; its current content is scored")
    return files


def load_splits(data: dict[str, str], system_prompt: str | None = None, limit: int = 0, split_off: float = 0.0) -> dict:
    """Named JSONL files -> validated Datasets, each cut to `limit` examples when limit > 0; with one file and
    split_off > 0, that share of it becomes a deterministic held-out split, named so."""
    from .data import load_jsonl, split_heldout

    splits = {split: load_jsonl(path, system_prompt) for split, path in data.items()}
    if split_off and len(data) == 1:
        ((name, path),) = data.items()
        splits[name], held = split_heldout(splits[name], split_off)
        splits[f"held-out ({split_off:.0%} of {Path(path).name}, split off)"] = held
    for dataset in splits.values():
        dataset.examples = dataset.examples[: limit or None]
    return splits


def save_evaluation(run_dir: str | Path, table: pd.DataFrame, out_dir: str | Path | None = None) -> pd.DataFrame:
    """Write <run_dir>/eval/ (or out_dir) whole, under the run's lock: per_example.csv and .json, summary.json,
    scores.png, and (for the run's own eval/) its model card with these scores. Returns the summary table."""
    from .checkpoints import RunPaths, run_lock, staged
    from .model_card import write_model_card
    from .plots import plot_scores

    run_dir, summary = Path(run_dir), summary_table(table)
    with run_lock(RunPaths.of(run_dir.parent, run_dir.name)):
        with staged(Path(out_dir) if out_dir else run_dir / "eval") as out:
            table.to_csv(out / "per_example.csv", index=False)
            (out / "per_example.json").write_text(table.to_json(orient="records", indent=1))
            # n/a is null in JSON (json.dumps would write NaN, which is not JSON)
            records = summary.astype(object).where(summary.notna(), None).to_dict(orient="records")
            (out / "summary.json").write_text(json.dumps(records, indent=1))
            bars = {f"{r['model']} ({r['split']})": r for r in summary.to_dict(orient="records")}
            metrics = [m for m in ("accuracy", "rouge_l", "hallucination_rate") if m in summary]
            plot_scores(bars, metrics, out / "scores.png", title=f"{run_dir.name}: base vs fine-tuned")
        if out_dir is None:
            write_model_card(run_dir)  # its Scores section now has these numbers
    return summary
