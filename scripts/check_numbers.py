#!/usr/bin/env python
"""The measured numbers the course text quotes, checked against the files they come from (or rewritten from them).

Who it is for: anyone who edits README.md, modules/ or a notebook's text, or regenerates an executed copy. A quoted
number is marked in the Markdown by an HTML comment right after it, invisible once rendered:
    took 219.1<!-- n:ranks.16.train_seconds --> s
The key names a value that `sources` reads from an executed notebook, the lab's own arithmetic or a table of
bench/results/ (`results.FILE.ROW.COLUMN`: the file's stem, the first row whose first cell is ROW, or ROW/WORD where
rows share a first cell and WORD begins the second, the column headed COLUMN, spaces as `_`); the quoted number must
equal that value rounded to the decimals it is written with. A block of printed output quoted whole follows the
comment `<!-- excerpt: FILE -->` and must repeat FILE's lines, from its first line to the first one, at least the
block's length on, that its last line begins.
From the repository root:
    python scripts/check_numbers.py            # exit 1 and list every quoted number its source contradicts
    python scripts/check_numbers.py --write    # rewrite the quoted numbers from their sources (same decimals)
tests/scripts/test_check_numbers.py runs the check with the tests.
"""

import argparse
import functools
import itertools
import json
import re
import sys
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXECUTED = Path("labs/unsloth_finetune/executed")
TEXTS = ("README.md", "modules/*/README.md", "labs/unsloth_finetune/*.ipynb")
MARKED = re.compile(r"(?P<number>\d[\d,]*(?:\.\d+)?)<!-- n:(?P<key>[^\s>]+) -->")
# A block of printed output quoted whole: the comment names the file whose lines it must repeat.
EXCERPT = re.compile(r"<!-- excerpt: (?P<source>\S+) -->\n(?P<fence>`{3,})text\n(?P<body>.*?)\n(?P=fence)\n", re.S)


class _Tables(HTMLParser):
    """The cells of every HTML table, row by row: how a notebook keeps a DataFrame it displayed (stdlib only; pandas'
    read_html needs lxml, which the lab does not install)."""

    def __init__(self):
        super().__init__()
        self.rows, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(self._cell.strip())
            self._cell = None


@functools.cache
def executed_cells(root: Path, notebook: str) -> list[dict]:
    return json.loads((root / EXECUTED / notebook).read_text())["cells"]


def displayed_tables(root: Path, notebook: str) -> list[list[dict]]:
    """Each DataFrame an executed notebook displayed, as a list of {column: cell} rows (the index column is '')."""
    tables = []
    for out in (o for c in executed_cells(root, notebook) if c["cell_type"] == "code" for o in c["outputs"]):
        page = "".join(out.get("data", {}).get("text/html", []))
        if "<table" in page:
            parser = _Tables()
            parser.feed(page)
            head, *body = [row for row in parser.rows if row]
            tables.append([dict(zip(head, row)) for row in body])
    return tables


def printed(root: Path, notebook: str) -> str:
    cells = executed_cells(root, notebook)
    return "".join(t for c in cells if c["cell_type"] == "code" for o in c["outputs"] for t in o.get("text", []))


def minutes(root: Path, notebook: str) -> dict[str, float]:
    """How long an executed copy ran, in minutes: in all, and per numbered section (`## 11.` -> minutes.NAME.11),
    from the times the kernel stamped on each code cell."""
    stem, section, spans = Path(notebook).stem, "0", {}
    for cell in executed_cells(root, notebook):
        heading = re.match(r"## (\d+)\.", "".join(cell["source"])) if cell["cell_type"] == "markdown" else None
        section = heading[1] if heading else section
        if stamps := cell.get("metadata", {}).get("execution"):
            start, end = (datetime.fromisoformat(stamps[k]) for k in ("iopub.execute_input", "shell.execute_reply"))
            spans.setdefault(section, []).append((start, end))
    every = [span for part in spans.values() for span in part]
    values = {f"minutes.{stem}": (max(e for _, e in every) - min(s for s, _ in every)).total_seconds() / 60}
    for name, part in spans.items():
        values[f"minutes.{stem}.{name}"] = sum((e - s).total_seconds() for s, e in part) / 60
    return values


@functools.cache
def sources(root: Path) -> dict[str, float]:
    """Every key a text may quote, with its value."""
    values = {}
    for notebook in sorted(p.name for p in (root / EXECUTED).glob("*.ipynb")):
        values.update(minutes(root, notebook))
    ranks = next(t for t in displayed_tables(root, "train_model.ipynb") if t and "trainable_params" in t[0])
    for row in ranks:
        for column in set(row) - {"", "rank"}:
            values[f"ranks.{row['rank']}.{column.replace(' ', '_')}"] = float(row[column])
    train = printed(root, "train_model.ipynb")
    trained = re.search(r"(\d+) steps in ([\d.]+) s, loss ([\d.]+) -> ([\d.]+), peak memory ([\d,]+) MB", train)
    values.update({"train.steps": float(trained[1]), "train.seconds": float(trained[2])})
    values.update({"train.first_loss": float(trained[3]), "train.last_loss": float(trained[4])})
    values["train.peak_mb"] = float(trained[5].replace(",", ""))
    epochs = re.search(r"validation loss after each epoch: (.*)", train)
    for epoch, loss in re.findall(r"(\d+): ([\d.]+)", epochs[1] if epochs else ""):
        values[f"train.validation.{epoch}"] = float(loss)
    scores = next(t for t in displayed_tables(root, "evaluate_model.ipynb") if t and "hallucination_rate" in t[0])
    for row in scores:
        for column in ("accuracy", "hallucination_rate", "exact_match", "token_f1", "rouge_l", "parses"):
            values[f"eval.{row['model']}.{row['split']}.{column}"] = float(row[column])
    from finetune_lab.config import ALL_LINEAR, quick_config
    from finetune_lab.memory import MB, MemoryEstimate, estimate, shape_of
    from finetune_lab.models import model_config

    for short, model in (("smollm2", "smollm2-135m"), ("tinyllama", "tinyllama-1.1b-chat")):  # the preflight's sums
        shape = shape_of(model_config(model), ALL_LINEAR)

        def sized(method: str, dtype: str) -> MemoryEstimate:
            return estimate(shape, quick_config(model=model, method=method), dtype, False)

        lora, full = sized("lora", "bfloat16"), sized("full", "float16")
        keys = {
            "16bit_gb": lora.weights_mb * MB / 1e9,
            "fp32_gb": sized("lora", "float32").weights_mb * MB / 1e9,
            "qlora_base_gb": sized("qlora", "bfloat16").weights_mb * MB / 1e9,
            "lora_state_gb": lora.training_state_mb * MB / 1e9,
            "lora_params_m": lora.trainable_params / 1e6,
            "lora_pct": 100 * lora.trainable_params / shape.params,
            "full_fp16_gb": (full.weights_mb + full.training_state_mb) * MB / 1e9,
        }
        values.update({f"memory.{short}.{key}": value for key, value in keys.items()})
    return {**values, **results_tables(root)}


def results_tables(root: Path) -> dict[str, float]:
    """Every number in every cell of every Markdown table in bench/results/: results.FILE.ROW.COLUMN for the cell's
    first number, results.FILE.ROW.COLUMN#N for its Nth ("2.85 (1.14x)": #2 is 1.14)."""
    values = {}
    for path in sorted((root / "bench" / "results").glob("*.md")):
        lines, head = path.read_text().splitlines(), None
        for line, after in zip(lines, [*lines[1:], ""]):
            cells = [c.strip().replace(" ", "_") for c in line.strip().strip("|").split("|")]
            if after.startswith("| ---"):
                head = cells
            elif not line.startswith("|"):
                head = None
            elif head and not line.startswith("| ---"):
                # ROW is the first cell, or first/second where two rows share a first cell ("lora/float16")
                rows = (cells[0], f"{cells[0]}/{re.split(r'[_(]', cells[1])[0]}")
                for column, cell in zip(head[1:], cells[1:]):
                    numbers = [float(n.replace(",", "")) for n in re.findall(r"\d[\d,]*(?:\.\d+)?", cell)]
                    for row, (n, number) in itertools.product(rows, enumerate(numbers, 1)):
                        values.setdefault(f"results.{path.stem}.{row}.{column}{f'#{n}' if n > 1 else ''}", number)
    return values


def texts(root: Path) -> list[Path]:
    return sorted(p for pattern in TEXTS for p in root.glob(pattern))


def quoted(number: str, value: float) -> str:
    """`value` written as `number` is: the same decimals, thousands separators where it has them."""
    decimals = len(number.split(".")[1]) if "." in number else 0
    return f"{value:{',' if ',' in number else ''}.{decimals}f}"


def excerpt(source: str, body: str) -> str | None:
    """The stretch of `source` that `body` quotes, with the source's numbers: from the body's first line to the first
    line, at least the body's length further on, that begins as the body's last one does (up to its first digit)."""
    lines, quoted_lines = source.splitlines(), body.splitlines()
    if quoted_lines[0] not in lines:
        return None
    start, stem = lines.index(quoted_lines[0]), re.match(r"\D*", quoted_lines[-1])[0]
    end = next((i for i in range(start + len(quoted_lines) - 1, len(lines)) if lines[i].startswith(stem)), None)
    return None if end is None else "\n".join(lines[start : end + 1])


def check(root: Path, write: bool = False) -> tuple[int, list[str]]:
    """How many numbers and excerpts are quoted, and one line per quote that its source contradicts (or that names
    no source); with write, fix them."""
    values, problems, marked = sources(root), [], 0
    for path in texts(root):
        text = path.read_text()

        def where(match: re.Match) -> str:  # numbers are rewritten within their line, so line numbers hold
            return f"{path.relative_to(root)}:{match.string.count(chr(10), 0, match.start()) + 1}"

        def compare(match: re.Match) -> str:
            number, key = match["number"], match["key"]
            if key not in values:
                problems.append(f"{where(match)}: {key} is no known source (see this script's header)")
                return match[0]
            if number != quoted(number, values[key]):
                problems.append(
                    f"{where(match)}: quotes {number} for {key}, its source says "
                    f"{quoted(number, values[key])}; fix: python scripts/check_numbers.py --write"
                )
                return match[0].replace(number, quoted(number, values[key]), 1)
            return match[0]

        def compare_excerpt(match: re.Match) -> str:
            source = root / match["source"]
            found = excerpt(source.read_text(), match["body"]) if source.is_file() else None
            if found is None:
                problems.append(f"{where(match)}: {match['source']} holds no such block; copy the block from it again")
                return match[0]
            if found != match["body"]:
                problems.append(
                    f"{where(match)}: differs from {match['source']}; fix: python scripts/check_numbers.py --write"
                )
                return match[0].replace(match["body"], found, 1)
            return match[0]

        new, found = MARKED.subn(compare, text)
        new, excerpts = EXCERPT.subn(compare_excerpt, new)
        marked += found + excerpts
        if write and new != text:
            path.write_text(new)
    return marked, problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the quoted numbers from their sources")
    parser.add_argument("--root", type=Path, default=REPO, help="the repository to check (default: this one)")
    args = parser.parse_args(argv)
    marked, problems = check(args.root, args.write)
    for problem in problems:
        print(problem, file=sys.stderr)
    verdict = "rewritten" if args.write else "contradicted"
    print(f"{marked} quoted numbers and blocks, {len(problems)} {verdict} by their sources")
    return 1 if problems and not args.write else 0


if __name__ == "__main__":
    raise SystemExit(main())
