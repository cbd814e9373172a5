#!/usr/bin/env python
"""Module 04 lab, script twin of export_model.ipynb: take your model home as a merged model and a GGUF for
llama.cpp and Ollama, and check that llama.cpp answers as your checkpoint does.

Who it is for: students who want to use their model outside the notebook, instructors, CI.
Needs llama.cpp's Python package once: pip install -r requirements-export.txt (builds llama.cpp from source,
about 10 minutes on 2 cores the first time; `make setup` does it).
How to run (from the repository root):
    python labs/unsloth_finetune/export_model.py checkpoints/smollm2-lora-r16                # f16 and q8_0
    python labs/unsloth_finetune/export_model.py checkpoints/smollm2-lora-r16 --gguf q8_0     # one type
    python labs/unsloth_finetune/export_model.py checkpoints/my-run --overwrite --limit 4      # quick, replace
It writes <run>/export/ (merged/, <run>-<type>.gguf, Modelfile, parity.md, parity.json) only once everything in
it is done, prints the parity table and rewrites the run's model card (README.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run from a checkout without installing the package

from finetune_lab.checkpoints import CheckpointError  # noqa: E402
from finetune_lab.config import ConfigError  # noqa: E402
from finetune_lab.data import DatasetError  # noqa: E402
from finetune_lab.export import GGUF_TYPES, ExportError, export_run  # noqa: E402
from finetune_lab.phases import Phases  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("run_dir", help="a finished run folder, e.g. checkpoints/smollm2-lora-r16")
    parser.add_argument(
        "--gguf",
        nargs="+",
        default=["f16", "q8_0"],
        help="GGUF types: " + "; ".join(f"{k}: {v}" for k, v in GGUF_TYPES.items()),
    )
    parser.add_argument("--heldout", default="data/course_heldout.jsonl", help="the prompts of the parity table")
    parser.add_argument("--limit", type=int, default=0, help="first N held-out prompts only (0: all)")
    parser.add_argument("--max_new_tokens", type=int, default=None, help="cap on each answer (default: the run's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export of this run")
    args = parser.parse_args(argv)
    try:
        folder = export_run(args.run_dir, args.gguf, args.heldout, args.limit, args.max_new_tokens, args.overwrite)
    except (CheckpointError, ConfigError, DatasetError, ExportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; the export folder appears only when complete, so nothing was written", file=sys.stderr)
        return 130
    print((folder / "parity.md").read_text())
    phases = Phases()
    phases.seconds = json.loads((folder / "parity.json").read_text())["phase_seconds"]
    print(f"where the time went:\n{phases.table()}\n")
    print(
        f"written: {folder} (merged/, GGUF files, Modelfile, parity.md); model card: {Path(args.run_dir) / 'README.md'}"
    )
    print(f"Ollama: cd {folder} && ollama create {Path(args.run_dir).name} -f Modelfile")
    return 0


if __name__ == "__main__":
    sys.exit(main())
