"""labs/unsloth_finetune end to end: the CLI trains the embedded model on the course data and it learns."""

import json
import re
import shutil

import pytest
from helpers import REPO, TRAIN_NOTEBOOK, checked_output, run_cli, start_cli, write_jsonl

from finetune_lab.checkpoints import load_checkpoint
from finetune_lab.data import load_jsonl
from finetune_lab.evaluation import same_program
from finetune_lab.generation import generate

pytestmark = pytest.mark.slow


def test_the_run_folder_holds_everything_the_lab_promises(trained_run):
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "run_config.json",
        "loss_history.json",
        "loss_curve.png",
        "samples.json",
        "summary.json",
    ):
        assert (trained_run / name).stat().st_size > 0, name
    assert not trained_run.with_name(trained_run.name + ".resume").exists()
    recorded = json.loads((trained_run / "run_config.json").read_text())  # what evaluation scores by default
    assert (recorded["data"], recorded["heldout"]) == ("data/course_train.jsonl", "data/course_heldout.jsonl")
    assert recorded["data_sha256"] == load_jsonl(REPO / "data" / "course_train.jsonl").sha256
    assert {"adapter_model.safetensors", "README.md", "run_config.json"} <= set(recorded["files"])  # --overwrite's
    stdout = (trained_run / "cli_stdout.txt").read_text()
    assert "backend=transformers device=cpu dtype=float32 method=lora" in stdout
    for line in ("=== Lab summary ===", "train_seconds:", "steps: 16", "[before]", "[after]", "loss_curve:"):
        assert line in stdout


def test_the_model_learned_the_course_data(trained_run):
    losses = [h["loss"] for h in json.loads((trained_run / "loss_history.json").read_text()) if "loss" in h]
    assert len(losses) == 16 and losses[-1] < 0.35 * losses[0]
    samples = json.loads((trained_run / "samples.json").read_text())
    trained = samples[:3]  # the first three are training prompts
    assert sum(bool(same_program(s["after"], s["reference"])) for s in trained) >= 2
    assert not any(same_program(s["before"], s["reference"]) for s in trained)


def test_the_held_out_loss_is_measured_after_every_epoch(trained_run):
    history = json.loads((trained_run / "loss_history.json").read_text())
    validation = [h for h in history if "validation_loss" in h]
    # 16 examples, 4 per step: an epoch every 4 steps, each followed by the held-out loss
    assert [h["step"] for h in validation] == [4, 8, 12, 16]
    assert validation[-1]["validation_loss"] < validation[0]["validation_loss"]
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["best_validation_loss"] == round(min(h["validation_loss"] for h in validation), 4)
    assert "best_validation_loss:" in (trained_run / "cli_stdout.txt").read_text()


def test_the_notebook_trains_exactly_as_the_script_twin(trained_run):
    """train_model.ipynb makes the library calls in its cells, the CLI through the package: in quick mode the
    notebook's checked loss cell (nbval runs it again) shows this run's first losses."""
    losses = [h["loss"] for h in json.loads((trained_run / "loss_history.json").read_text()) if "loss" in h]
    committed = checked_output(TRAIN_NOTEBOOK, "# The first losses")
    assert committed.strip() == str([round(loss, 2) for loss in losses[:6]])


def test_reloading_the_run_folder_alone_gives_token_identical_answers(trained_run):
    samples = json.loads((trained_run / "samples.json").read_text())
    model, tokenizer, run_config = load_checkpoint(trained_run, device="cpu")
    assert run_config["model"] == "smollm2-135m"
    answers = generate(model, tokenizer, [s["messages"] for s in samples], max_new_tokens=run_config["max_new_tokens"])
    assert answers == [s["after"] for s in samples]


def test_a_bad_dataset_stops_the_cli_before_any_model_loads_and_writes_nothing(tmp_path):
    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        ['{"instruction": "Water bed 2", "output": "garden.water(2, 3)"}', '{"instruction": "cut off'],
        raw=True,
    )
    done = run_cli("--data", str(bad), "--output_dir", str(tmp_path / "out"), timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {bad}, line 2: the line is not valid JSON")
    assert "backend=" not in done.stdout and not (tmp_path / "out").exists()


def test_a_finished_run_is_not_overwritten_by_surprise(trained_run):
    before = (trained_run / "adapter_model.safetensors").read_bytes()
    done = run_cli(
        "--test_mode", "--output_dir", str(trained_run.parent), "--run_name", trained_run.name, cwd=REPO, timeout=120
    )
    assert done.returncode == 2 and "already holds a finished run; pass overwrite=True (--overwrite)" in done.stderr
    assert (trained_run / "adapter_model.safetensors").read_bytes() == before


def test_a_diverging_run_stops_unsaved_and_the_run_it_would_replace_is_kept(trained_run, tmp_path):
    run = tmp_path / trained_run.name
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("cli_stdout.txt"))  # the fixture's, not the lab's
    before = (run / "adapter_model.safetensors").read_bytes()
    args = [
        "--test_mode",
        "--overwrite",
        "--learning_rate",
        "1e4",
        "--output_dir",
        str(tmp_path),
        "--run_name",
        run.name,
    ]
    done = run_cli(*args, timeout=300)
    error = re.search(r"error: the training loss went from .*", done.stderr)  # the progress bar shares its line
    assert done.returncode == 2 and error, done.stderr[-2000:]
    assert "Lower the learning rate (--learning_rate, now 10000)" in error.group(0)
    assert (run / "adapter_model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [run.name]  # no .resume, staging or lock left


def test_a_full_disk_at_the_first_checkpoint_is_one_line_and_blocks_nothing(tmp_path):
    import resource
    import signal
    import subprocess

    from helpers import CLI, cli_env

    def disk_of_two_megabytes():  # files past 2 MB fail to write (EFBIG), as on a full disk; the adapter is ~20 MB
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))

    args = [*CLI, "--test_mode", "--output_dir", str(tmp_path), "--run_name", "full"]
    done = subprocess.run(
        args, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600, preexec_fn=disk_of_two_megabytes
    )
    error = re.search(r"error: the run could not be written .*", done.stderr)
    assert done.returncode == 1 and error and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "nothing of it was published" in error.group(0)
    left = sorted(p.name for p in tmp_path.rglob("*") if "partial" in p.name or p.name.startswith("checkpoint-"))
    assert left == [] and not (tmp_path / "full").exists()  # no half-written checkpoint or run
    assert run_cli("--test_mode", "--output_dir", str(tmp_path), "--run_name", "full").returncode == 0  # not blocked


def test_keep_best_without_held_out_data_is_refused_before_any_model_loads(tmp_path):
    done = run_cli("--keep_best", "--heldout", "", "--output_dir", str(tmp_path / "out"), timeout=120)
    assert done.returncode == 2 and "keep_best and early_stopping_patience need held-out data" in done.stderr
    assert "backend=" not in done.stdout and not (tmp_path / "out").exists()


@pytest.mark.extended
def test_two_data_parallel_processes_write_one_run_and_one_summary(tmp_path):
    """torchrun/accelerate on a CPU (gloo) runs the same DDP code path as several GPUs."""
    import os
    import subprocess
    import sys

    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    done = subprocess.run(
        [
            torchrun,
            "--nproc_per_node",
            "2",
            str(REPO / "labs/unsloth_finetune/train_tiny_model.py"),
            "--test_mode",
            "--max_steps",
            "2",
            "--max_new_tokens",
            "8",
            "--heldout",
            "",
            "--output_dir",
            str(tmp_path),
            "--run_name",
            "ddp",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "process 0 of 2" in out and "process 1 of 2" in out
    assert "effective batch size 8 examples = 4 per device x 1 accumulation x 2 process(es)" in out
    assert out.count("=== Lab summary ===") == 1 and "effective_batch_size: 8" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]
    history = [h for h in json.loads((tmp_path / "ddp" / "loss_history.json").read_text()) if "loss" in h]
    assert [h["step"] for h in history] == [1, 2]
    # 16 examples, 4 per process, 2 processes: each step covers 8 examples, so an epoch takes 2 steps.
    assert [h["epoch"] for h in history] == [0.5, 1.0]


# ---------------------------------------------------------------- nothing a student made is lost


@pytest.mark.extended
def test_two_runs_of_the_same_name_at_once_the_second_is_refused_and_the_first_finishes(tmp_path):
    import time

    first = start_cli(
        "--test_mode", "--max_steps", "4", "--max_new_tokens", "8", "--output_dir", str(tmp_path), "--run_name", "same"
    )
    try:
        lock = tmp_path / "same.lock"
        for _ in range(600):
            if lock.exists():
                break
            time.sleep(0.1)
        second = run_cli("--test_mode", "--output_dir", str(tmp_path), "--run_name", "same", "--overwrite", timeout=120)
        assert second.returncode == 2
        assert f"another process (pid {first.pid}) is using this run right now" in second.stderr
        assert "backend=" not in second.stdout
        out, err = first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 0, err[-2000:]
    assert json.loads((tmp_path / "same" / "summary.json").read_text())["steps"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same"]  # no lock, no .resume left


@pytest.mark.extended
def test_ctrl_c_before_training_exits_cleanly_and_says_nothing_was_kept(tmp_path):
    import signal

    proc = start_cli("--test_mode", "--output_dir", str(tmp_path / "out"), "--run_name", "c")
    try:
        for line in proc.stdout:
            if line.startswith("[finetune_lab] backend="):  # the model is loading now
                proc.send_signal(signal.SIGINT)
                break
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err
    assert "interrupted before any checkpoint was saved; nothing of this run was kept" in err
    assert not (tmp_path / "out").exists()


def test_overwrite_on_a_folder_that_is_not_a_run_stops_before_any_model_loads(tmp_path):
    (tmp_path / "mydata").mkdir()
    (tmp_path / "mydata" / "train.jsonl").write_text("{}\n")
    done = run_cli("--output_dir", str(tmp_path), "--run_name", "mydata", "--overwrite", timeout=120)
    assert done.returncode == 2 and "not a finished run of this lab" in done.stderr and "backend=" not in done.stdout
    assert (tmp_path / "mydata" / "train.jsonl").read_text() == "{}\n"


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--target_modules", "q_proj", "qkv_proj"],
            "error: target_modules qkv_proj: smollm2-135m has no linear layer of that name; its linear layers are "
            "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj",
        ),
        (
            ["--data", "MARKED"],
            'line 2: the answer contains "<|im_end|>", which smollm2-135m reads as a control marker',
        ),
    ],
)
def test_wrong_target_modules_and_chat_markers_in_the_data_stop_before_training(tmp_path, args, message):
    marked = write_jsonl(
        tmp_path / "marked.jsonl",
        [
            {"instruction": "Water bed 2.", "output": "garden.water(bed=2, liters=3)"},
            {"instruction": "Water bed 3.", "output": "garden.water(bed=3, liters=3)<|im_end|>"},
        ],
    )
    args = [str(marked) if a == "MARKED" else a for a in args]
    done = run_cli("--test_mode", *args, "--output_dir", str(tmp_path / "out"), timeout=300)
    last = done.stderr.strip().splitlines()[-1]  # after the model's loading bar, one line says it all
    assert done.returncode == 2 and last.startswith("error: ") and message in last
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["--epochs", "1.5"], dict(epochs=1.5)),  # a float flag takes a fraction
        (
            ["--test_mode", "--max_seq_length", "256", "--batch_size", "8"],  # flags beside --test_mode win,
            dict(max_seq_length=256, batch_size=8, max_steps=16),
        ),  # even when equal to the defaults
        (["--test_mode"], dict(max_seq_length=128, batch_size=4, max_steps=16)),
        (
            ["--target_modules", "q_proj", "v_proj", "--no-wandb"],
            dict(target_modules=("q_proj", "v_proj"), wandb=False),
        ),
    ],
)
def test_cli_flags_come_from_the_config_with_their_types(argv, expected):
    import train_tiny_model

    from finetune_lab.config import config_from_args

    args = train_tiny_model.build_parser().parse_args(argv)
    cfg = config_from_args(args, quick=args.test_mode)
    assert {k: getattr(cfg, k) for k in expected} == expected


def test_every_setting_reaches_both_the_notebook_and_the_script():
    """Twins, not two kitchens: every TrainConfig field is read by train_model.ipynb's cells and by the script
    (directly, through a package function both call, or, in the notebook, as the variable it also passes to the
    loader), so no setting can be ignored by one of them (as grad_accum once was by the notebook)."""
    import ast
    import dataclasses
    import inspect
    import textwrap

    import nbformat
    import train_tiny_model

    from finetune_lab import models, tracking, training
    from finetune_lab.config import TrainConfig

    def reads(tree, name):
        attributes = (n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name))
        return {n.attr for n in attributes if n.value.id == name}

    both_call = [
        models.choose_backend,
        models.import_backend,
        models.gradient_checkpointing_choice,
        training.sft_plumbing,
        tracking.wandb_run,
    ]
    notebook = "\n".join(c.source for c in nbformat.read(TRAIN_NOTEBOOK, as_version=4).cells if c.cell_type == "code")
    script = inspect.getsource(train_tiny_model)
    for function in both_call:
        assert f"{function.__name__}(" in notebook and f"{function.__name__}(" in script, function.__name__
    shared = set().union(*(reads(ast.parse(inspect.getsource(f)), "cfg") for f in both_call))
    properties = [TrainConfig.restores_best.fget, TrainConfig.truncates_long_examples.fget]
    shared |= set().union(*(reads(ast.parse(textwrap.dedent(inspect.getsource(p))), "self") for p in properties))
    tree = ast.parse(notebook)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    passed_on = {a.id for c in calls if getattr(c.func, "id", "") != "TrainConfig" for a in c.args if hasattr(a, "id")}
    as_loaded = {
        kw.arg
        for c in calls
        if getattr(c.func, "id", "") == "TrainConfig"
        for kw in c.keywords
        if getattr(kw.value, "id", None) in passed_on
    }
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert not fields - reads(tree, "config") - shared - as_loaded, "settings the notebook ignores"
    assert not fields - reads(ast.parse(script), "cfg") - shared, "settings the script ignores"
