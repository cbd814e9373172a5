"""Optional Weights & Biases logging that never blocks: off unless asked, offline without WANDB_API_KEY."""

import contextlib
import os
import sys
from pathlib import Path

from .config import TrainConfig


@contextlib.contextmanager
def wandb_run(cfg: TrainConfig, log_dir: str | Path):
    """A wandb run around training when cfg.wandb is set; TRL's WandbCallback logs each step's loss into it."""
    from .runtime import is_main_process

    if not cfg.wandb or not is_main_process():  # one run per training, not one per data-parallel process
        yield None
        return
    import wandb

    mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "finetune-lab"),
        name=cfg.run_name,
        config=cfg.to_dict(),
        dir=str(log_dir),
        mode=mode,
        reinit="finish_previous",
    )
    print(f"[finetune_lab] wandb {mode} run in {run.dir}")
    try:
        yield run
    finally:
        wandb.finish()


def log_run_files(run_dir: Path, table=None, table_name: str = "eval") -> None:
    """Add a run folder's plots and JSON files (and a table, a pandas DataFrame) to the active wandb run."""
    wandb = sys.modules.get("wandb")  # not imported: no run is active (and importing it takes seconds)
    if wandb is None or wandb.run is None:
        return
    for image in ("loss_curve.png", "scores.png"):
        if (Path(run_dir) / image).exists():
            wandb.log({image.removesuffix(".png"): wandb.Image(str(Path(run_dir) / image))})
    for name in ("loss_history.json", "run_config.json", "summary.json"):
        if (Path(run_dir) / name).exists():  # copied into the wandb run folder, readable even offline
            wandb.save(str(Path(run_dir) / name), base_path=str(run_dir), policy="now")
    if table is not None:
        wandb.log({table_name: wandb.Table(dataframe=table)})
