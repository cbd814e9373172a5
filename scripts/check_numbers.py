#!/usr/bin/env python
"""The measured numbers the course text quotes, checked against the files they come from (or rewritten from them).

Who it is for: anyone who edits README.md, modules/ or a notebook's text, or regenerates an executed copy. A quoted
number is marked in the Markdown by an HTML comment right after it, invisible once rendered:
    took 219.1<!-- n:ranks.16.train_seconds --> s
The key names a value that `sources` reads from an executed notebook, the lab's own arithmetic or a table of
bench/results/ (`results.FILE.ROW.COLUMN`: the file's stem, the first row whose first cell is ROW, the column headed
COLUMN, spaces as `_`); the quoted number must equal that value rounded to the decimals it is written with. From
the repository root:
    python scripts/check_numbers.py            # exit 1 and list every quoted number its source contradicts
    python scripts/check_numbers.py --write    # rewrite the quoted numbers from their sources (same decimals)
tests/scripts/test_check_numbers.py runs the check with the tests.
"""

import argparse
import functools
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXECUTED = Path("labs/unsloth_finetune/executed")
TEXTS = ("README.md", "modules/*/README.md", "labs/unsloth_finetune/*.ipynb")
MARKED = re.compile(r"(?P<number>-?\d[\d,]*(?:\.\d+)?)<!-- n:(?P<key>[^\s>]+) -->")


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


def displayed_tables(root: Path, notebook: str) -> list[list[dict]]:
    """Each DataFrame an executed notebook displayed, as a list of {column: cell} rows (the index column is '')."""
    cells = json.loads((root / EXECUTED / notebook).read_text())["cells"]
    tables = []
    for out in (o for c in cells if c["cell_type"] == "code" for o in c["outputs"]):
        page = "".join(out.get("data", {}).get("text/html", []))
        if "<table" in page:
            parser = _Tables()
            parser.feed(page)
            head, *body = [row for row in parser.rows if row]
            tables.append([dict(zip(head, row)) for row in body])
    return tables


def printed(root: Path, notebook: str) -> str:
    cells = json.loads((root / EXECUTED / notebook).read_text())["cells"]
    return "".join(t for c in cells if c["cell_type"] == "code" for o in c["outputs"] for t in o.get("text", []))


@functools.cache
def sources(root: Path) -> dict[str, float]:
    """Every key a text may quote, with its value."""
    values = {}
    ranks = next(t for t in displayed_tables(root, "train_model.ipynb") if t and "trainable_params" in t[0])
    for row in ranks:
        for column in ("train_seconds", "final_loss", "best_validation_loss", "trained accuracy", "held-out accuracy"):
            values[f"ranks.{row['rank']}.{column.replace(' ', '_')}"] = float(row[column])
    trained = re.search(r"(\d+) steps in ([\d.]+) s, loss ([\d.]+) -> ([\d.]+)", printed(root, "train_model.ipynb"))
    values.update({"train.steps": float(trained[1]), "train.seconds": float(trained[2])})
    values.update({"train.first_loss": float(trained[3]), "train.last_loss": float(trained[4])})
    scores = next(t for t in displayed_tables(root, "evaluate_model.ipynb") if t and "hallucination_rate" in t[0])
    for row in scores:
        for column in ("accuracy", "hallucination_rate"):
            values[f"eval.{row['model']}.{row['split']}.{column}"] = float(row[column])
    from finetune_lab.config import ALL_LINEAR, quick_config
    from finetune_lab.memory import MB, estimate, shape_of
    from finetune_lab.models import model_config

    tiny = shape_of(model_config("tinyllama-1.1b-chat"), ALL_LINEAR)
    for key, method in (("16bit_gb", "lora"), ("qlora_base_gb", "qlora")):  # the preflight's arithmetic
        cfg = quick_config(model="tinyllama-1.1b-chat", method=method)
        values[f"memory.tinyllama.{key}"] = estimate(tiny, cfg, "bfloat16", False).weights_mb * MB / 1e9
    return {**values, **results_tables(root)}


def results_tables(root: Path) -> dict[str, float]:
    """The first number of every cell of every Markdown table in bench/results/, as results.FILE.ROW.COLUMN."""
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
                for column, cell in zip(head[1:], cells[1:]):
                    number = re.match(r"-?[\d,]*\.?\d+", cell)
                    key = f"results.{path.stem}.{cells[0]}.{column}"
                    if number and key not in values:
                        values[key] = float(number[0].replace(",", ""))
    return values


def texts(root: Path) -> list[Path]:
    return sorted(p for pattern in TEXTS for p in root.glob(pattern))


def quoted(number: str, value: float) -> str:
    """`value` written as `number` is: the same decimals, thousands separators where it has them."""
    decimals = len(number.split(".")[1]) if "." in number else 0
    return f"{value:{',' if ',' in number else ''}.{decimals}f}"


def check(root: Path, write: bool = False) -> tuple[int, list[str]]:
    """How many numbers are quoted, and one line per quoted number that its source contradicts (or that names no
    source); with write, fix them."""
    values, problems, marked = sources(root), [], 0
    for path in texts(root):
        text = path.read_text()

        def compare(match: re.Match) -> str:
            number, key = match["number"], match["key"]
            line = text.count("\n", 0, match.start()) + 1
            if key not in values:
                problems.append(f"{path.relative_to(root)}:{line}: {key} is no known source (see this script's header)")
                return match[0]
            if number != quoted(number, values[key]):
                problems.append(
                    f"{path.relative_to(root)}:{line}: quotes {number} for {key}, its source says "
                    f"{quoted(number, values[key])}; fix: python scripts/check_numbers.py --write"
                )
                return match[0].replace(number, quoted(number, values[key]), 1)
            return match[0]

        new, found = MARKED.subn(compare, text)
        marked += found
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
    print(f"{marked} quoted numbers, {len(problems)} {'rewritten' if args.write else 'contradicted'} by their sources")
    return 1 if problems and not args.write else 0


if __name__ == "__main__":
    raise SystemExit(main())
