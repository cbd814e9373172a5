#!/usr/bin/env python
"""Module 04 lab, script twin of export_model.ipynb: take your model home as a merged model and a GGUF for
llama.cpp and Ollama, and check that llama.cpp answers as your checkpoint does.

Who it is for: students who want to use their model outside the notebook, instructors, CI.
Needs llama.cpp's Python package once: pip install -r requirements-export.txt (builds llama.cpp from source,
several minutes on 2 cores the first time; `make setup` does it).
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

from gguf_export import (
    GGUF_TYPES,
    MERGED,
    REFERENCE,
    ExportError,
    abandon,
    base_as_trained,
    finish_export,
    gguf_label,
    llama_cpp_answers,
    merge_and_save,
    modelfile,
    open_gguf,
    parity_report,
    plan_export,
    prompt_difference,
    write_gguf,
)

from finetune_lab.checkpoints import CheckpointError, RunPaths, load_checkpoint, run_lock
from finetune_lab.config import ConfigError, TrainConfig, at_least
from finetune_lab.data import DatasetError, load_jsonl
from finetune_lab.generation import greedy_answers
from finetune_lab.phases import Phases


def export(run_dir, types, heldout: str, limit: int = 0, max_new_tokens: int | None = None, overwrite=False) -> Path:
    """The whole export under the run's lock (no training or other export replaces the run meanwhile); on any
    failure nothing is left half-written."""
    run_dir = Path(run_dir)
    with run_lock(RunPaths.of(run_dir.parent, run_dir.name)):
        plan = plan_export(run_dir, types, overwrite)  # everything checked before a model loads
        try:
            return export_steps(plan, heldout, limit, max_new_tokens)
        except BaseException:
            abandon(plan)
            raise


def export_steps(plan, heldout: str, limit: int, max_new_tokens: int | None) -> Path:
    """The export's steps, in the notebook's order."""
    cfg, phases = plan.run_config, Phases()
    max_new_tokens = max_new_tokens or cfg.get("max_new_tokens", TrainConfig.max_new_tokens)
    examples = load_jsonl(heldout, cfg.get("system_prompt")).examples[: limit or None]
    prompts, references = [e.prompt for e in examples], [e.completion for e in examples]
    print(f"loading {plan.run_dir} and answering {len(prompts)} held-out prompts (greedy, {max_new_tokens} tokens)")
    with phases("load the checkpoint"):
        model, tokenizer, _ = load_checkpoint(plan.run_dir, device="cpu")
        base_as_trained(model, cfg.get("method"))  # QLoRA only: the base rounded to NF4, as the adapter saw it
    with phases("answer: checkpoint"):
        answers = {REFERENCE: greedy_answers(model, tokenizer, prompts, max_new_tokens, batch_size=1)}
    print("merging the adapter into the base weights")
    with phases("merge and save"):
        merged = merge_and_save(model, tokenizer, plan)
    with phases("answer: merged"):
        answers[MERGED] = greedy_answers(merged, tokenizer, prompts, max_new_tokens, batch_size=1)
    del model, merged
    for outtype in plan.types:
        with phases(f"write {outtype}"):
            for step in write_gguf(plan, outtype):
                print(f"  {step}")
        with phases(f"answer: {outtype} (llama.cpp)"):
            llm = open_gguf(plan.gguf(outtype))
            difference = prompt_difference(llm, tokenizer, prompts[0])
            if difference:
                raise ExportError(f"{plan.gguf(outtype).name}: {difference}")
            answers[gguf_label(outtype)] = llama_cpp_answers(llm, prompts, max_new_tokens)
            llm.close()
    report = {**parity_report(plan, prompts, references, answers, tokenizer), "phase_seconds": phases.rounded()}
    ollama = modelfile(tokenizer, plan.gguf(plan.types[-1]).name, cfg.get("system_prompt"))
    return finish_export(plan, report, prompts, ollama)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("run_dir", help="a finished run folder, e.g. checkpoints/smollm2-lora-r16")
    parser.add_argument(
        "--gguf",
        nargs="+",
        default=["f16", "q8_0"],
        help="GGUF types: " + "; ".join(f"{k}: {v}" for k, v in GGUF_TYPES.items()),
    )
    parser.add_argument("--heldout", default="data/course_heldout.jsonl", help="the prompts of the parity table")
    parser.add_argument("--limit", type=at_least(0), default=0, help="first N held-out prompts only (0: all)")
    parser.add_argument(
        "--max_new_tokens", type=at_least(1), default=None, help="cap on each answer (default: the run's)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export of this run")
    args = parser.parse_args(argv)
    try:
        folder = export(args.run_dir, args.gguf, args.heldout, args.limit, args.max_new_tokens, args.overwrite)
    except (CheckpointError, ConfigError, DatasetError, ExportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. the disk filled up while a GGUF was written
        print(f"error: the export could not be written ({err}); an earlier export is unchanged", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; the export folder appears only when complete, so nothing was written", file=sys.stderr)
        return 130
    print((folder / "parity.md").read_text())
    phases = Phases(json.loads((folder / "parity.json").read_text())["phase_seconds"])
    print(f"where the time went:\n{phases.table()}\n")
    print(
        f"written: {folder} (merged/, GGUF files, Modelfile, parity.md); model card: {Path(args.run_dir) / 'README.md'}"
    )
    print(f"Ollama: cd {folder} && ollama create {Path(args.run_dir).name} -f Modelfile")
    return 0


if __name__ == "__main__":
    sys.exit(main())
