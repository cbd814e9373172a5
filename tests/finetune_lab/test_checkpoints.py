"""finetune_lab.checkpoints: a save killed midway loses nothing, a wrong base is refused."""

import json
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from finetune_lab.checkpoints import CheckpointError, clean_stale_staging, load_checkpoint
from finetune_lab.generation import generate

pytestmark = pytest.mark.slow
PROMPTS = ["Plant tomatoes in bed 1 of `garden`.", 'Create a gardenkit garden named "Allotment" with 6 beds.']

SAVE_THEN_HANG = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from finetune_lab.checkpoints import RunPaths, load_checkpoint, writing_run
    run = Path(sys.argv[1])
    model, tokenizer, run_config = load_checkpoint(run, device="cpu")
    with writing_run(RunPaths.of(run.parent, run.name), run_config) as folder:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        print("STAGED", folder, flush=True)  # the process dies here, before publishing
        time.sleep(600)
""")


def test_a_save_killed_midway_leaves_the_previous_checkpoint_loadable(tmp_path, trained_run):
    run = tmp_path / trained_run.name
    shutil.copytree(trained_run, run)
    model, tokenizer, _ = load_checkpoint(run, device="cpu")
    before = generate(model, tokenizer, PROMPTS, max_new_tokens=32)
    proc = subprocess.Popen(
        [sys.executable, "-c", SAVE_THEN_HANG, str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("STAGED"), line
        proc.kill()  # SIGKILL: no cleanup handlers run
        proc.wait(timeout=30)
    finally:
        proc.kill()
    partial = list(tmp_path.glob(f".{run.name}.partial-*"))
    assert partial and (partial[0] / "adapter_model.safetensors").exists()
    model, tokenizer, _ = load_checkpoint(run, device="cpu")
    assert generate(model, tokenizer, PROMPTS, max_new_tokens=32) == before
    clean_stale_staging(tmp_path)  # what the next save does first
    assert not list(tmp_path.glob(".*.partial-*")) and run.exists()


def test_a_checkpoint_on_another_architecture_is_refused(tmp_path, trained_run):
    from transformers import LlamaConfig, LlamaForCausalLM

    other = tmp_path / "tiny-llama"
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=49152,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).save_pretrained(other)
    with pytest.raises(CheckpointError, match="another architecture.*hidden_size: 576 vs 64"):
        load_checkpoint(trained_run, base=str(other))


def test_not_a_run_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not a finished run folder"):
        load_checkpoint(tmp_path)


# ---------------------------------------------------------------- --overwrite replaces only the lab's own runs


def test_overwrite_refuses_a_folder_that_is_not_a_run_and_touches_nothing(tmp_path):
    from finetune_lab.checkpoints import prepare_run
    from finetune_lab.config import ConfigError

    notes = tmp_path / "mydata"
    notes.mkdir()
    (notes / "notes.txt").write_text("my notes")
    (tmp_path / "notes.txt").write_text("a file")
    with pytest.raises(
        ConfigError,
        match="mydata is a folder without run_config.json, not a finished run of this lab.*nothing was touched",
    ):
        prepare_run(tmp_path, "mydata", overwrite=True)
    with pytest.raises(ConfigError, match="notes.txt is a file, not a finished run"):
        prepare_run(tmp_path, "notes.txt", overwrite=True)
    assert (notes / "notes.txt").read_text() == "my notes" and (tmp_path / "notes.txt").read_text() == "a file"


def test_run_names_with_the_lab_suffixes_and_a_finished_run_named_like_resume_state_are_refused(tmp_path):
    from finetune_lab.checkpoints import RUN_CONFIG, prepare_run
    from finetune_lab.config import ConfigError

    with pytest.raises(ConfigError, match="ends in .resume or .lock"):
        prepare_run(tmp_path, "foo.resume")
    finished = tmp_path / "foo.resume"  # a finished run someone named foo.resume earlier
    finished.mkdir()
    (finished / RUN_CONFIG).write_text("{}")
    with pytest.raises(ConfigError, match="foo.resume is a folder without resume_config.json, not an interrupted run"):
        prepare_run(tmp_path, "foo", overwrite=True)
    assert (finished / RUN_CONFIG).exists()


def test_overwrite_replaces_only_what_the_lab_wrote_and_says_what_it_replaces(tmp_path):
    from finetune_lab.checkpoints import RUN_CONFIG, RunPaths, prepare_run, replacing_note
    from finetune_lab.config import ConfigError

    run = tmp_path / "r"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "summary.json").write_text("[]")
    (run / "adapter_model.safetensors").write_bytes(b"x" * 2_000_000)
    recorded = {"model": "smollm2-135m", "method": "lora", "files": ["adapter_model.safetensors", RUN_CONFIG]}
    (run / RUN_CONFIG).write_text(json.dumps(recorded))
    assert prepare_run(tmp_path, "r", overwrite=True).run == run
    note = replacing_note(RunPaths.of(tmp_path, "r"))
    assert note.startswith(f"--overwrite: the finished run {run} (2.0 MB, with its eval/) is replaced once this run")
    (run / "my_notes.txt").write_text("keep me")
    (run / "mydata").mkdir()
    with pytest.raises(ConfigError, match="holds files the lab did not write there: my_notes.txt, mydata. --overwrite"):
        prepare_run(tmp_path, "r", overwrite=True)
    with pytest.raises(ConfigError, match=f"output_dir {run / 'eval'} is inside the finished run {run}"):
        prepare_run(run / "eval", "other")


def test_the_advice_of_each_refusal_names_the_safe_next_step(tmp_path):
    from finetune_lab.checkpoints import RESUME_CONFIG, RUN_CONFIG, prepare_run
    from finetune_lab.config import ConfigError

    (tmp_path / "done").mkdir()
    (tmp_path / "done" / RUN_CONFIG).write_text("{}")
    with pytest.raises(
        ConfigError, match=re.escape("already holds a finished run; pass overwrite=True (--overwrite) to replace it")
    ):
        prepare_run(tmp_path, "done")
    assert prepare_run(tmp_path, "done", overwrite=True).run == tmp_path / "done"
    (tmp_path / "cut.resume" / "checkpoint-4").mkdir(parents=True)
    (tmp_path / "cut.resume" / RESUME_CONFIG).write_text("{}")
    (tmp_path / "cut.resume" / "checkpoint-4" / "trainer_state.json").write_text("{}")
    with pytest.raises(
        ConfigError,
        match=re.escape("holds an interrupted run: continue it with resume=True (--resume), or pass overwrite=True"),
    ):
        prepare_run(tmp_path, "cut")


def test_a_run_that_failed_before_its_first_checkpoint_does_not_block_its_name(tmp_path):
    from finetune_lab.checkpoints import RESUME_CONFIG, prepare_run
    from finetune_lab.config import ConfigError

    (tmp_path / "early.resume").mkdir()
    (tmp_path / "early.resume" / RESUME_CONFIG).write_text("{}")  # its settings, written before the first step
    assert prepare_run(tmp_path, "early").run == tmp_path / "early"
    with pytest.raises(ConfigError, match="nothing to resume"):
        prepare_run(tmp_path, "early", resume=True)


# ---------------------------------------------------------------- one process per run folder


def dead_pid() -> int:
    proc = subprocess.Popen(["sleep", "30"])
    proc.kill()
    proc.wait()
    return proc.pid


def test_a_lock_left_by_a_killed_process_is_taken_over_and_a_live_one_is_respected(tmp_path, capsys):
    from finetune_lab.checkpoints import RunPaths, run_lock
    from finetune_lab.config import ConfigError

    paths = RunPaths.of(tmp_path, "r")
    paths.lock.write_text(f"{dead_pid()}\n")
    with run_lock(paths):
        assert paths.lock.read_text().strip() == str(__import__("os").getpid())
    assert "removed a stale lock" in capsys.readouterr().out and not paths.lock.exists()
    alive = subprocess.Popen(["sleep", "30"])
    try:
        paths.lock.write_text(f"{alive.pid}\n")
        with pytest.raises(ConfigError, match=f"another process \\(pid {alive.pid}\\) is using this run right now"):
            with run_lock(paths):
                pass
        assert paths.lock.read_text().strip() == str(alive.pid)  # not ours: left in place
    finally:
        alive.kill()


def test_an_output_folder_that_cannot_be_created_is_reported_before_anything_runs(tmp_path):
    from finetune_lab.checkpoints import RunPaths, run_lock
    from finetune_lab.config import ConfigError

    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="cannot create the output folder .*afile/out .*--output_dir you can write"):
        with run_lock(RunPaths.of(tmp_path / "afile" / "out", "r")):
            pass


# ---------------------------------------------------------------- damaged run folders: one line, the file, the fix


def truncate(path):
    path.write_bytes(path.read_bytes()[:1000])


DAMAGE = [
    (
        "adapter deleted",
        lambda run: (run / "adapter_model.safetensors").unlink(),
        "adapter_model.safetensors is missing",
    ),
    (
        "adapter cut off",
        lambda run: truncate(run / "adapter_model.safetensors"),
        "adapter_model.safetensors is damaged (empty or cut off",
    ),
    (
        "adapter empty",
        lambda run: (run / "adapter_model.safetensors").write_bytes(b""),
        "adapter_model.safetensors is damaged",
    ),
    (
        "adapter config garbage",
        lambda run: (run / "adapter_config.json").write_text("{not json"),
        "adapter_config.json is damaged (not valid JSON",
    ),
    ("adapter config deleted", lambda run: (run / "adapter_config.json").unlink(), "adapter_config.json is missing"),
    ("run config garbage", lambda run: (run / "run_config.json").write_text("\x00\x01"), "run_config.json is damaged"),
    ("run config empty", lambda run: (run / "run_config.json").write_text("{}"), "not the settings of a run"),
    ("run config a list", lambda run: (run / "run_config.json").write_text("[1, 2]"), "not the settings of a run"),
    (
        "tokenizer deleted",
        lambda run: [(run / n).unlink() for n in ("tokenizer.json", "tokenizer_config.json")],
        "the tokenizer files of",
    ),
]


@pytest.mark.parametrize("case,damage,message", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_a_damaged_run_folder_gives_one_line_naming_the_file_and_the_fix(
    tmp_path, trained_run, capsys, case, damage, message
):
    import evaluate_model

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    damage(run)
    assert evaluate_model.main([str(run), "--limit", "1", "--no_base"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert "retrain" in err or "restore" in err


def test_a_name_in_use_gets_the_next_free_suffix(tmp_path):
    from finetune_lab.checkpoints import free_run_name

    assert free_run_name(tmp_path, "nb") == "nb"
    (tmp_path / "nb").mkdir()
    (tmp_path / "nb-2.resume").mkdir()  # an interrupted run holds its name too
    assert free_run_name(tmp_path, "nb") == "nb-3"
    (tmp_path / "ranks-r32").mkdir()  # a comparison's runs are named with suffixes
    assert free_run_name(tmp_path, "ranks", ("-r16", "-r32")) == "ranks-2"


def test_the_newest_of_a_runs_numbered_copies_is_the_latest(tmp_path):
    import os

    from finetune_lab.checkpoints import latest_run

    assert latest_run(tmp_path, "nb") == tmp_path / "nb"  # nothing yet: the name itself
    for age, name in ((30, "nb"), (10, "nb-2"), (20, "nb-10"), (0, "nb-old")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run_config.json").write_text("{}")
        os.utime(tmp_path / name / "run_config.json", (1e9 - age, 1e9 - age))
    (tmp_path / "nb-3").mkdir()  # unfinished: not a run
    assert latest_run(tmp_path, "nb") == tmp_path / "nb-2"


def test_cleaning_stale_staging_leaves_a_live_processs_folder(tmp_path):
    alive = subprocess.Popen(["sleep", "30"])
    try:
        live, dead = tmp_path / f".other.partial-{alive.pid}", tmp_path / f".mine.partial-{dead_pid()}"
        live.mkdir(), dead.mkdir()
        clean_stale_staging(tmp_path)
        assert live.exists() and not dead.exists()  # a running save of another run keeps its folder
    finally:
        alive.kill()
