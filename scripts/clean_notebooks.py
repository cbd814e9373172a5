#!/usr/bin/env python
"""Apply the repository's notebook outputs policy (tests/labs/test_notebooks.py enforces it).

Policy: outputs are committed only for cells marked `# NBVAL_CHECK_OUTPUT` (deterministic output that nbval
compares in CI); every other cell is committed without outputs or execution count, so
diffs stay small and no timing, machine path or progress bar lands in git. Checked cells are numbered 1, 2, ...
(nbval needs an execution count on a cell whose output it compares).

The executed copies in labs/unsloth_finetune/executed/ are the other side: each notebook run top to bottom in full
(not quick) mode with every output kept, for reading on GitHub without running anything; a test checks that their
code cells are the sources' code cells.

Who it is for: anyone who edits a notebook. How to run, from the repository root:
    python scripts/clean_notebooks.py             # strip in place
    python scripts/clean_notebooks.py --execute   # run each notebook first (FINETUNE_LAB_QUICK=1), then strip
    python scripts/clean_notebooks.py --copies    # regenerate the executed copies (full runs, ~45 min on 2 cores)
    python scripts/clean_notebooks.py --copies solutions   # only the notebooks named (without .ipynb)
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
MARKER = "# NBVAL_CHECK_OUTPUT"


EXECUTED = "executed"


def notebooks() -> list[Path]:
    return sorted(p for p in (REPO / "labs").rglob("*.ipynb") if p.parent.name != EXECUTED)


def executed_copy(path: Path) -> Path:
    return path.parent / EXECUTED / path.name


def run(nb, path: Path, quick: bool) -> None:
    from nbclient import NotebookClient

    if quick:
        os.environ["FINETUNE_LAB_QUICK"] = "1"
    else:
        os.environ.pop("FINETUNE_LAB_QUICK", None)
    NotebookClient(
        nb, timeout=3600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()


def is_checked(cell) -> bool:
    return cell.cell_type == "code" and cell.source.lstrip().startswith(MARKER)


def clean(nb) -> None:
    checked = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata = {}
        if is_checked(cell):
            # nbval refuses a reference cell with outputs but no execution count ("unrun"): number them 1, 2, ...
            checked += 1
            cell.execution_count = checked
            for output in cell.outputs:
                if "execution_count" in output:
                    output["execution_count"] = checked
        else:
            cell.execution_count = None
            cell.outputs = []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--execute", action="store_true", help="run the notebooks (quick mode) before cleaning")
    parser.add_argument("--copies", action="store_true", help="write the executed copies (full runs) instead")
    parser.add_argument("names", nargs="*", help="only these notebooks (default: all), e.g. train_model")
    args = parser.parse_args()
    for path in notebooks():
        if args.names and path.stem not in args.names:
            continue
        nb = nbformat.read(path, as_version=4)
        if args.copies:
            start = time.perf_counter()
            run(nb, path, quick=False)
            executed_copy(path).parent.mkdir(exist_ok=True)
            nbformat.write(nb, executed_copy(path))
            print(f"executed {executed_copy(path).relative_to(REPO)} in {time.perf_counter() - start:.0f} s")
            continue
        if args.execute:
            run(nb, path, quick=True)
        clean(nb)
        nbformat.write(nb, path)
        print("cleaned", path.relative_to(REPO))


if __name__ == "__main__":
    main()
