"""The run folder's README.md: a model card for stock tools (the hub, PEFT) and people, (re)written when the run is
saved, evaluated or exported from its own files, so it never states what was not measured."""

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

    return HUB_ID if model == EMBEDDED else PRESETS.get(model, model)


def _read(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _rate(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


def model_card(run_dir: Path) -> str:
    cfg = _read(run_dir / "run_config.json") or {}
    base, adapter = hub_id(cfg.get("model", "?")), cfg.get("method") in ("lora", "qlora")
    name = cfg.get("run_name", run_dir.name)  # run_dir may still be the hidden staging folder
    evaluation = _read(run_dir / "eval" / "summary.json")
    scored = dict.fromkeys(f"{row['split']}: `{row['file']}`" for row in evaluation or [] if row.get("file"))
    data = ModelCardData(
        base_model=base,
        library_name="peft" if adapter else "transformers",
        pipeline_tag="text-generation",
        tags=(["lora"] if adapter else []) + ["sft", "course-artifact"],
    )
    card = ModelCard.from_template(
        data,
        template_path=str(TEMPLATE),
        base=base,
        name=name,
        cfg=cfg,
        choice=cfg.get("backend_choice", {}),
        adapter=adapter,
        embedded=cfg.get("model") == EMBEDDED,
        wheel=EMBEDDED_WHEEL,
        gguf=EMBEDDED_GGUF,
        folder=f"{cfg.get('output_dir', 'checkpoints')}/{name}",
        summary=_read(run_dir / "summary.json") or {},
        evaluation=evaluation,
        scored=f" ({'; '.join(scored)})" if scored else "",
        rate=_rate,
        parity=_read(run_dir / "export" / "parity.json"),
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
