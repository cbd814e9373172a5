"""Shared fixtures: the embedded model, one real CLI training run, and small JSONL writers.

Nothing here is mocked: the run is the lab's own script training SmolLM2-135M on the course data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAB = REPO / "labs" / "unsloth_finetune"
sys.path.insert(0, str(REPO))


def write_jsonl(path: Path, rows, raw: bool = False) -> Path:
    """rows: dicts (dumped as JSON) or, with raw=True, literal lines."""
    lines = rows if raw else [json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_cli(*args: str, cwd: Path = REPO, timeout: int = 900) -> subprocess.CompletedProcess:
    """The CLI in its own process; one that runs past `timeout` comes back with exit code 124 and what it printed."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(LAB / "train_tiny_model.py"), *args]
    try:
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as late:

        def text(out):
            return out.decode(errors="replace") if isinstance(out, bytes) else out or ""

        return subprocess.CompletedProcess(command, 124, text(late.stdout), text(late.stderr))


@pytest.fixture(scope="session")
def base_model_dir() -> Path:
    from finetune_lab.models import ensure_embedded_base

    return ensure_embedded_base()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, base_model_dir) -> Path:
    """The CLI's --test_mode run: 16 course examples, 16 steps, on this machine's CPU."""
    out = tmp_path_factory.mktemp("checkpoints")
    done = run_cli("--test_mode", "--output_dir", str(out), "--run_name", "e2e")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (out / "e2e" / "cli_stdout.txt").write_text(done.stdout)
    return out / "e2e"
