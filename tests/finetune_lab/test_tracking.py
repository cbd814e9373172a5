"""finetune_lab.tracking: optional wandb logging that never waits for a login."""

import json
import time

import pytest
import train_tiny_model as lab
from helpers import REPO

from finetune_lab.config import quick_config

pytestmark = pytest.mark.slow


@pytest.mark.extended
def test_wandb_logs_offline_without_an_api_key(tmp_path, monkeypatch, base_model_dir):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = quick_config(
        data=str(REPO / "data" / "course_train.jsonl"),
        output_dir=str(tmp_path),
        run_name="wb",
        limit_examples=8,
        max_steps=4,
        max_new_tokens=8,
        wandb=True,
    )
    run = lab.train(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list(tmp_path.rglob("*"))[:20]
    files = runs[0] / "files"
    assert json.loads((files / "loss_history.json").read_text()) == run.result.history
    assert json.loads((files / "run_config.json").read_text())["rank"] == cfg.rank
    assert list((files / "media" / "images").glob("loss_curve_*.png"))
    # Every step's loss went into the run's event log (what `wandb sync` uploads later). wandb-core's writer may
    # finish that file just after wandb.finish() returns (seen on a loaded 2-core machine): give it a moment.
    log, deadline = next(runs[0].glob("run-*.wandb")), time.monotonic() + 30
    while log.read_bytes().count(b"train/loss") < 4 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert log.read_bytes().count(b"train/loss") >= 4
