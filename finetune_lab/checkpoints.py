"""Run folders: refuse to clobber, write atomically, reload anywhere.

<run>/         the finished run: adapter (PEFT format) or full model, tokenizer, run_config.json, loss_history.json,
               loss_curve.png, samples.json, summary.json; it appears only once complete (staged, then renamed).
<run>.resume/  resumable checkpoints (checkpoint-N, each staged then renamed) every save_steps and on Ctrl-C, and
               resume_config.json (the settings it trains with); removed once the run is complete.
<run>.lock     the pid of the one process training <run>, from before the model loads until the run is published.
Only folders with these marker files are ever replaced (--overwrite) or continued (--resume); anything else under
those names is refused before any model loads, and left as it is.
"""

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import psutil

from .config import ConfigError

RUN_CONFIG = "run_config.json"
RESUME_CONFIG = "resume_config.json"
RESUME_SUFFIX = ".resume"
LOCK_SUFFIX = ".lock"
FIX = "retrain the run, or restore the file from a copy"
LATER = ("eval", "export")  # written into a finished run by the lab later on: the evaluations and the export


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked."""


@dataclass(frozen=True)
class RunPaths:
    run: Path
    resume: Path

    @classmethod
    def of(cls, output_dir: str | Path, run_name: str) -> "RunPaths":
        root = Path(output_dir)
        return cls(run=root / run_name, resume=root / f"{run_name}{RESUME_SUFFIX}")

    @property
    def lock(self) -> Path:
        return self.run.with_name(self.run.name + LOCK_SUFFIX)

    def latest_resume_checkpoint(self) -> Path | None:
        steps = {p: p.name.removeprefix("checkpoint-") for p in self.resume.glob("checkpoint-*")}
        done = [p for p, step in steps.items() if step.isdigit() and (p / "trainer_state.json").exists()]
        return max(done, key=lambda p: int(steps[p]), default=None)


def is_finished_run(folder: Path) -> bool:
    return folder.is_dir() and (folder / RUN_CONFIG).is_file()


def _not_ours(path: Path, marker: str, what: str) -> ConfigError:
    kind = "a file" if not path.is_dir() else f"a folder without {marker}"
    return ConfigError(
        f"{path} is {kind}, not {what} of this lab; the lab replaces only its own runs, so nothing "
        "was touched. Choose another run_name or output_dir (--run_name, --output_dir)"
    )


def free_run_name(output_dir: str | Path, run_name: str, suffixes: tuple[str, ...] = ("",)) -> str:
    """run_name, or the first of run_name-2, -3, ... naming no run, interrupted run or lock (with each suffix): a
    notebook run again saves beside the earlier run."""

    def taken(name: str) -> bool:
        paths = [RunPaths.of(output_dir, name + suffix) for suffix in suffixes]
        return any(p.run.exists() or p.resume.exists() or p.lock.exists() for p in paths)

    name, n = run_name, 1
    while taken(name):
        n += 1
        name = f"{run_name}-{n}"
    return name


def latest_run(output_dir: str | Path, run_name: str) -> Path:
    """The newest finished run among run_name, run_name-2, ... (see free_run_name); run_name itself when none."""
    root = Path(output_dir)
    numbered = [p for p in root.glob(f"{run_name}-*") if p.name[len(run_name) + 1 :].isdigit()]
    finished = [p for p in [root / run_name, *numbered] if is_finished_run(p)]
    return max(finished, key=lambda p: (p / RUN_CONFIG).stat().st_mtime, default=root / run_name)


def prepare_run(output_dir: str | Path, run_name: str, overwrite: bool = False, resume: bool = False) -> RunPaths:
    """Check the run folder before any heavy work; nothing is written or deleted here."""
    paths = RunPaths.of(output_dir, run_name)
    if run_name.endswith((RESUME_SUFFIX, LOCK_SUFFIX)):
        raise ConfigError(
            f"run_name {run_name!r} ends in {RESUME_SUFFIX} or {LOCK_SUFFIX}, which the lab uses for "
            "an interrupted run's checkpoints and its lock; choose a name without it"
        )
    if overwrite and resume:
        raise ConfigError(
            "choose either overwrite=True to start again or resume=True to continue (--overwrite / --resume), not both"
        )
    root = Path(output_dir).resolve()
    inside = next((p for p in [root, *root.parents] if is_finished_run(p)), None)
    if inside:
        raise ConfigError(
            f"output_dir {output_dir} is inside the finished run {inside}; runs go beside each other, not into one "
            "another: choose another output_dir (--output_dir), e.g. its parent"
        )
    if paths.run.exists() and not is_finished_run(paths.run):
        raise _not_ours(paths.run, RUN_CONFIG, "a finished run")
    if paths.resume.exists() and not (paths.resume / RESUME_CONFIG).is_file():
        raise _not_ours(paths.resume, RESUME_CONFIG, "an interrupted run")
    if resume:
        if paths.latest_resume_checkpoint() is None:
            raise ConfigError(
                f"nothing to resume: {paths.resume} holds no checkpoint. Start the run without resume=True (--resume)"
            )
        if paths.run.exists():
            raise ConfigError(f"{paths.run} is already complete; pass overwrite=True (--overwrite) to train it again")
        return paths
    if paths.run.exists() and overwrite:
        _check_only_ours(paths.run)
    if paths.run.exists() and not overwrite:
        raise ConfigError(
            f"{paths.run} already holds a finished run; pass overwrite=True (--overwrite) to replace it, or choose "
            "another run_name (--run_name)"
        )
    if paths.latest_resume_checkpoint() is not None and not overwrite:  # one that failed before it: nothing to keep
        raise ConfigError(
            f"{paths.resume} holds an interrupted run: continue it with resume=True (--resume), or pass "
            "overwrite=True (--overwrite) to start again (or choose another run_name (--run_name))"
        )
    return paths


def _check_only_ours(run: Path) -> None:
    """Refuse to replace a run folder that holds anything the lab did not write there (as run_config.json lists)."""
    try:
        recorded = json.loads((run / RUN_CONFIG).read_text()).get("files")
    except (ValueError, AttributeError):  # a damaged run_config.json names no files
        recorded = None
    foreign = [p.name for p in run.iterdir() if recorded and p.name not in recorded and not p.name.startswith(LATER)]
    if foreign:
        raise ConfigError(
            f"{run} holds files the lab did not write there: {', '.join(sorted(foreign))}. --overwrite replaces the "
            "whole folder, so nothing was touched: move them out first, or choose another run_name (--run_name)"
        )


def replacing_note(paths: RunPaths) -> str | None:
    """What --overwrite is about to replace, with sizes, said before the new run trains."""
    if not paths.run.exists():
        return None
    size = sum(p.stat().st_size for p in paths.run.rglob("*") if p.is_file()) / 1e6
    later = [f"{p.name}/" for p in sorted(paths.run.iterdir()) if p.name.startswith(LATER) and p.is_dir()]
    with_later = f", with its {' and '.join(later)}" if later else ""
    return (
        f"--overwrite: the finished run {paths.run} ({size:,.1f} MB{with_later}) is replaced once this run is "
        "saved; until then it stays as it is, and a run that fails or diverges leaves it untouched"
    )


def _lock_holder(lock: Path) -> int | None:
    try:
        return int(lock.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _take_lock(lock: Path) -> bool:
    """True once taken; False where this process holds it already (an export publishing inside its own lock)."""
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        holder = _lock_holder(lock)
        if holder == os.getpid():
            return False
        if holder is not None and psutil.pid_exists(holder):
            raise ConfigError(
                f"another process (pid {holder}) is using this run right now (training, evaluating or exporting it; "
                f"{lock} is its lock); wait for it to finish or stop it, then run this command again. Nothing was "
                "touched"
            ) from None
        print(f"[finetune_lab] removed a stale lock {lock} (pid {holder} is no longer running)")
        lock.unlink(missing_ok=True)
        return _take_lock(lock)
    except OSError as err:
        fix = "choose an --output_dir you can write to"
        raise ConfigError(f"cannot write to {lock.parent} ({err.strerror}); {fix}") from None
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")
    return True


@contextlib.contextmanager
def run_lock(paths: RunPaths):
    """One process per run folder: <run>.lock holds the pid of the process that trains, evaluates or exports it; a
    lock whose process is gone is taken over with a note. Creating it also checks early that the folder is writable.
    Hand-written: filelock's FileLock leaves its file, which a contender empties, so it cannot name the holder."""
    lock, made_folder = paths.lock, not paths.lock.parent.exists()
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        fix = "choose an --output_dir you can write to"
        raise ConfigError(f"cannot create the output folder {lock.parent} ({err.strerror}); {fix}") from None
    taken = _take_lock(lock)
    try:
        yield
    finally:
        if taken and _lock_holder(lock) == os.getpid():
            lock.unlink(missing_ok=True)
            if made_folder and not any(lock.parent.iterdir()):
                lock.parent.rmdir()  # a run that stopped before writing anything leaves nothing


def check_writable(folder: Path) -> None:
    """Stop before the work (generating, converting) where its results could not be saved into `folder`."""
    import tempfile

    try:
        tempfile.TemporaryDirectory(dir=folder).cleanup()
    except OSError as err:
        fix = "make it writable, or copy the run elsewhere and work on the copy"
        raise ConfigError(f"cannot write to {folder} ({err.strerror}); {fix}. Nothing was done") from None


def staging_for(final: Path) -> Path:
    """A fresh hidden folder beside `final` to write into until the work is complete (see publish)."""
    staging = final.with_name(f".{final.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def publish(staging: Path, final: Path, replace: bool = True) -> None:
    """Move a complete staging folder to `final`, keeping an older `final` until the new one is in place (or for
    good with replace=False: another process finished the same work first)."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists() and not replace:
        shutil.rmtree(staging)
        return
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged(final: Path, replace: bool = True):
    """Stage, then rename: the block writes into the yielded folder, which becomes `final` only if it completes."""
    staging = staging_for(final)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish(staging, final, replace)


def clean_stale_staging(folder: Path) -> None:
    """Remove what a killed save left behind: hidden .partial-<pid> folders whose process is gone."""
    for stale in folder.glob(".*.partial-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and psutil.pid_exists(int(pid))):
            shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def writing_run(paths: RunPaths, run_config: dict):
    """The folder to save a finished run into, published as paths.run when the block completes; then its resume goes."""
    from .model_card import CARD, hub_id, write_model_card

    paths.run.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(paths.run.parent)
    with staged(paths.run) as staging:
        yield staging
        adapter_config = staging / "adapter_config.json"
        if adapter_config.exists():
            # For stock tools (AutoPeftModelForCausalLM): the hub id, not a lab preset name or this machine's cache
            # path. The lab's own load_checkpoint resolves run_config.json's model instead, offline.
            values = json.loads(adapter_config.read_text())
            values["base_model_name_or_path"] = hub_id(run_config["model"])
            adapter_config.write_text(json.dumps(values, indent=2))
        files = sorted({p.name for p in staging.iterdir()} | {RUN_CONFIG, CARD})  # what --overwrite may replace
        (staging / RUN_CONFIG).write_text(json.dumps({**run_config, "files": files}, indent=2))
        write_model_card(staging)  # replaces PEFT's empty template
    shutil.rmtree(paths.resume, ignore_errors=True)


def read_json(path: Path, fix: str) -> dict:
    """A JSON file of a run folder, or a one-line CheckpointError naming it and how to recover."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; {fix}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is damaged (not valid JSON: {err}); {fix}") from None


def read_run_config(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    if not (run_dir / RUN_CONFIG).exists():
        raise CheckpointError(
            f"{run_dir} is not a finished run folder (no {RUN_CONFIG}); "
            "pass a folder under checkpoints/ written by train_tiny_model.py"
        )
    config = read_json(run_dir / RUN_CONFIG, FIX)
    if not isinstance(config, dict) or not {"model", "method"} <= set(config):
        raise CheckpointError(
            f"{run_dir / RUN_CONFIG} is damaged (not the settings of a run: no model or method); {FIX}"
        )
    return config


def check_weights(path: Path) -> None:
    """Open a safetensors file's header, so a missing, empty or cut-off file is named instead of failing deep."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; {FIX}")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:  # checks the header against the file's length
            f.keys()
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is damaged (empty or cut off: {err}); {FIX}") from None


def check_run_files(run_dir: Path, run_config: dict) -> None:
    """The settings and weights a finished run needs (a full model, or an adapter), each opened."""
    full = run_config.get("method") == "full"  # full fine-tuning saved the whole model
    read_json(run_dir / ("config.json" if full else "adapter_config.json"), FIX)
    check_weights(run_dir / ("model.safetensors" if full else "adapter_model.safetensors"))


def _load_tokenizer(run_dir: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(run_dir)
    except Exception as err:  # transformers raises OSError, ValueError, TypeError... for missing or broken files
        raise CheckpointError(
            f"the tokenizer files of {run_dir} (tokenizer.json, tokenizer_config.json) are missing "
            f"or damaged ({type(err).__name__}); restore them from a copy or retrain the run"
        ) from None


def load_checkpoint(run_dir: str | Path, base: str | None = None, device: str | None = None):
    """(model, tokenizer, run_config) from a run folder alone, on CPU or GPU whatever trained it. `base` overrides the
    recorded base (same architecture); a missing or damaged file raises a CheckpointError naming it and the fix."""
    import torch
    from transformers import AutoModelForCausalLM

    from .models import base_fingerprint, nf4_config, resolve_model
    from .runtime import choose_dtype, gpu

    run_dir = Path(run_dir)
    run_config = read_run_config(run_dir)
    check_run_files(run_dir, run_config)
    tokenizer = _load_tokenizer(run_dir)
    card = gpu() if device != "cpu" else None
    device = device or ("cuda" if card else "cpu")
    dtype = getattr(torch, choose_dtype("auto", card))
    if run_config.get("method") == "full":
        model = AutoModelForCausalLM.from_pretrained(run_dir, dtype=dtype).to(device)
        return model.eval(), tokenizer, run_config
    from peft import PeftModel

    kwargs = {"dtype": dtype}
    if run_config.get("method") == "qlora" and device != "cpu":
        # The adapter learned on 4-bit NF4 base weights; reloading on the same base keeps its answers.
        kwargs.update(device_map={"": device}, quantization_config=nf4_config(dtype))
    # the run folder has the tokenizer: the base needs only its weights
    base_path = resolve_model(base or run_config["model"], with_tokenizer=False)
    base_model = AutoModelForCausalLM.from_pretrained(base_path, **kwargs)
    expected, found = run_config.get("base_fingerprint"), base_fingerprint(base_model)
    if expected and expected != found:
        diff = {k: (expected[k], found.get(k)) for k in expected if expected[k] != found.get(k)}
        raise CheckpointError(
            f"{run_dir} was trained on {run_config['model']} but the base given has another "
            f"architecture ({', '.join(f'{k}: {a} vs {b}' for k, (a, b) in diff.items())}); "
            f"load it with base={run_config['model']!r}"
        )
    model = PeftModel.from_pretrained(base_model, run_dir)
    if "quantization_config" not in kwargs:
        model = model.to(device)
    return model.eval(), tokenizer, run_config
