"""Run folders: refuse to clobber, write atomically, reload anywhere.

checkpoints/<run>/          the finished run: adapter (HF PEFT format) or full model, tokenizer,
                            run_config.json, loss_history.json, loss_curve.png, samples.json, summary.json.
                            It appears only once complete (staged under a hidden name, then renamed).
checkpoints/<run>.resume/   resumable trainer checkpoints (checkpoint-N, each staged then renamed),
                            written every save_steps and on Ctrl-C; removed once the run is complete.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError

RUN_CONFIG = "run_config.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked."""


@dataclass(frozen=True)
class RunPaths:
    run: Path
    resume: Path

    @classmethod
    def of(cls, output_dir: str | Path, run_name: str) -> "RunPaths":
        root = Path(output_dir)
        return cls(run=root / run_name, resume=root / f"{run_name}.resume")

    def latest_resume_checkpoint(self) -> Path | None:
        steps = [(int(p.name.split("-")[1]), p) for p in self.resume.glob("checkpoint-*")
                 if p.name.split("-")[1].isdigit() and (p / "trainer_state.json").exists()]
        return max(steps)[1] if steps else None


def prepare_run(output_dir: str | Path, run_name: str, overwrite: bool = False, resume: bool = False) -> RunPaths:
    """Check the run folder before any heavy work; nothing is written or deleted here."""
    paths = RunPaths.of(output_dir, run_name)
    if overwrite and resume:
        raise ConfigError("choose either --overwrite (start again) or --resume (continue), not both")
    if resume:
        if paths.latest_resume_checkpoint() is None:
            raise ConfigError(f"nothing to resume: {paths.resume} holds no checkpoint. "
                              "Start the run without --resume")
        if paths.run.exists():
            raise ConfigError(f"{paths.run} is already complete; pass --overwrite to train it again")
        return paths
    if (paths.run.exists() or paths.resume.exists()) and not overwrite:
        held = paths.run if paths.run.exists() else paths.resume
        what = "a finished run" if held == paths.run else "an interrupted run (continue it with --resume)"
        raise ConfigError(f"{held} already holds {what}; pass --overwrite to replace it, "
                          "or choose another --run_name")
    return paths


def _staging(final: Path) -> Path:
    staging = final.with_name(f".{final.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def publish(staging: Path, final: Path) -> None:
    """Move a complete staging folder to `final`; an older `final` is kept until the new one is in place."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    staging.rename(final)
    if old is not None:
        shutil.rmtree(old)


def clean_stale_staging(folder: Path) -> None:
    """Remove what a killed save left behind (hidden .partial-* folders); finished runs are never touched."""
    for stale in folder.glob(".*.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)


def save_run(paths: RunPaths, model, tokenizer, run_config: dict, write_extras=None) -> Path:
    """Write the finished run atomically. write_extras(folder) adds history, plots and samples."""
    paths.run.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(paths.run.parent)
    staging = _staging(paths.run)
    model.save_pretrained(staging)
    adapter_config = staging / "adapter_config.json"
    if adapter_config.exists():
        # Resolved again by load_checkpoint: a preset name, hub id or folder, not this machine's cache path.
        values = json.loads(adapter_config.read_text())
        values["base_model_name_or_path"] = run_config["model"]
        adapter_config.write_text(json.dumps(values, indent=2))
    tokenizer.save_pretrained(staging)
    (staging / RUN_CONFIG).write_text(json.dumps(run_config, indent=2))
    if write_extras is not None:
        write_extras(staging)
    publish(staging, paths.run)
    shutil.rmtree(paths.resume, ignore_errors=True)
    return paths.run


def read_run_config(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    if not (run_dir / RUN_CONFIG).exists():
        raise CheckpointError(f"{run_dir} is not a finished run folder (no {RUN_CONFIG}); "
                              "pass a folder under checkpoints/ written by train_tiny_model.py")
    return json.loads((run_dir / RUN_CONFIG).read_text())


def load_checkpoint(run_dir: str | Path, base: str | None = None, device: str | None = None):
    """(model, tokenizer, run_config) from a run folder alone; works on CPU and GPU whatever trained it.

    base overrides the base model recorded in the run; it must have the same architecture.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .models import base_fingerprint, nf4_config, resolve_model
    from .runtime import choose_dtype, gpu
    run_dir = Path(run_dir)
    run_config = read_run_config(run_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, choose_dtype("auto", None if device == "cpu" else gpu()))
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    if not (run_dir / "adapter_config.json").exists():  # full fine-tuning saved the whole model
        model = AutoModelForCausalLM.from_pretrained(run_dir, dtype=dtype).to(device)
        return model.eval(), tokenizer, run_config
    from peft import PeftModel
    kwargs = {"dtype": dtype}
    if run_config.get("method") == "qlora" and device != "cpu":
        # The adapter learned on 4-bit NF4 base weights; reloading on the same base keeps its answers.
        kwargs.update(device_map={"": device}, quantization_config=nf4_config(dtype))
    base_model = AutoModelForCausalLM.from_pretrained(resolve_model(base or run_config["model"]), **kwargs)
    expected, found = run_config.get("base_fingerprint"), base_fingerprint(base_model)
    if expected and expected != found:
        diff = {k: (expected[k], found.get(k)) for k in expected if expected[k] != found.get(k)}
        raise CheckpointError(f"{run_dir} was trained on {run_config['model']} but the base given has another "
                              f"architecture ({', '.join(f'{k}: {a} vs {b}' for k, (a, b) in diff.items())}); "
                              f"load it with base={run_config['model']!r}")
    model = PeftModel.from_pretrained(base_model, run_dir)
    if "quantization_config" not in kwargs:
        model = model.to(device)
    return model.eval(), tokenizer, run_config


def export_merged(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Fold the adapter into the base weights and save a plain transformers model folder."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise CheckpointError(f"{out_dir} already exists; choose a new folder for the merged model")
    model, tokenizer, _ = load_checkpoint(run_dir, device="cpu")
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    staging = _staging(out_dir)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    publish(staging, out_dir)
    return out_dir
