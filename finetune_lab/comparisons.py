"""LoRA rank 16 vs 32 (the module's bonus): same seed, data and settings, only the rank differs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .config import TrainConfig
from .evaluation import aggregate, evaluate_model, load_api, load_splits
from .plots import plot_losses
from .runtime import is_main_process
from .training import run_lab


def compare_ranks(
    cfg: TrainConfig,
    ranks=(16, 32),
    overwrite: bool = False,
    eval_data: dict[str, str] | None = None,
    eval_limit: int = 0,
) -> tuple[pd.DataFrame, object]:
    """Train one run per rank (alpha = 2 x rank, so the update scale alpha/r stays the same) and tabulate
    training time, trainable parameters, final and best validation loss and evaluation scores; overlay the
    loss curves (validation dashed).

    Writes <output_dir>/<run_name>-ranks.csv and -ranks.png and returns (table, figure).
    """
    histories, rows = {}, []
    datasets = load_splits(eval_data or {}, cfg.system_prompt, eval_limit)
    api = load_api()
    for rank in ranks:
        run_cfg = cfg.replace(rank=rank, alpha=2 * rank, run_name=f"{cfg.run_name}-r{rank}")
        # the held-out file (if any) also gives each run its validation loss curve
        lab = run_lab(run_cfg, overwrite=overwrite, heldout_path=(eval_data or {}).get("held-out"))
        histories[f"rank {rank}"] = lab.result.history
        row = {
            "rank": rank,
            "alpha": 2 * rank,
            "trainable_params": lab.result.trainable_params,
            "train_seconds": round(lab.result.seconds, 1),
            "steps": lab.result.steps,
            "final_loss": round(lab.result.losses[-1], 4),
            "best_validation_loss": lab.summary()["best_validation_loss"],
            "run": str(lab.run_dir),
        }
        if datasets:
            table = evaluate_model(lab.model, lab.tokenizer, datasets, api, cfg.max_new_tokens, label=f"r{rank}")
            for split, part in table.groupby("split", sort=False):
                for metric, value in aggregate(part).items():
                    if metric in ("accuracy", "rouge_l", "hallucination_rate"):
                        row[f"{split} {metric}"] = round(value, 3)
        rows.append(row)
    table = pd.DataFrame(rows)
    out = Path(cfg.output_dir)
    main = is_main_process()  # under accelerate every process trains; one writes the comparison
    if main:
        table.to_csv(out / f"{cfg.run_name}-ranks.csv", index=False)
    figure = plot_losses(
        histories,
        out / f"{cfg.run_name}-ranks.png" if main else None,
        title="LoRA rank " + " vs ".join(str(r) for r in ranks),
    )
    return table, figure
