"""Helpers the tests share: the repository's paths, a JSONL writer and the CLI in its own process.

Nothing here is mocked: run_cli runs the lab's own script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAB = REPO / "labs" / "unsloth_finetune"


def write_jsonl(path: Path, rows, raw: bool = False) -> Path:
    """rows: dicts (dumped as JSON) or, with raw=True, literal lines."""
    lines = rows if raw else [json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


CLI = [sys.executable, str(LAB / "train_tiny_model.py")]


def cli_env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def start_cli(*args: str) -> subprocess.Popen:
    """The CLI started in its own process, its output piped, for tests that act while it runs."""
    return subprocess.Popen(
        [*CLI, *args], cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def run_cli(*args: str, cwd: Path = REPO, timeout: int = 900) -> subprocess.CompletedProcess:
    """The CLI in its own process; one that runs past `timeout` comes back with exit code 124 and what it printed."""
    command = [*CLI, *args]
    try:
        return subprocess.run(command, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as late:

        def text(out):
            return out.decode(errors="replace") if isinstance(out, bytes) else out or ""

        return subprocess.CompletedProcess(command, 124, text(late.stdout), text(late.stderr))


def run_script(script: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Another script of the lab (evaluate_model.py, export_model.py) in its own process, from the repository root."""
    command = [sys.executable, str(LAB / script), *args]
    return subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=timeout)


MARKER = "# NBVAL_CHECK_OUTPUT"
TRAIN_NOTEBOOK = LAB / "train_model.ipynb"


def checked_output(path: Path, start: str) -> str:
    """The committed output of a notebook's checked cell (nbval re-runs it) whose code starts with `start`."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(f"{MARKER}\n{start}")]
    assert len(cells) == 1, f"{path.name}: one checked cell starting with {start!r}"
    return "".join(o.get("text", "") for o in cells[0].outputs)
