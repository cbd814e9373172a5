"""Bad configuration: each a one-line error before any heavy work (no model load, no folder written)."""

import re

import pytest
from helpers import REPO, run_cli

from finetune_lab.checkpoints import prepare_run
from finetune_lab.config import ConfigError, TrainConfig
from finetune_lab.models import choose_backend, resolve_model
from finetune_lab.runtime import cuda_available


@pytest.mark.parametrize(
    "field,value",
    [
        ("rank", 0),
        ("alpha", -1),
        ("epochs", 0),
        ("batch_size", 0),
        ("learning_rate", 0.0),
        ("max_seq_length", 0),
        ("dropout", 1.0),
    ],
)
def test_non_positive_settings_are_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value})


def test_unknown_method_backend_and_bad_run_name():
    with pytest.raises(ConfigError, match="lora, qlora, full"):
        TrainConfig(method="dora")
    with pytest.raises(ConfigError, match="auto, unsloth, transformers"):
        TrainConfig(backend="jax")
    with pytest.raises(ConfigError, match="plain folder name"):
        TrainConfig(run_name="../escape")


def test_unknown_preset_and_missing_local_folder(tmp_path):
    with pytest.raises(ConfigError, match="unknown model preset 'llama-9000'.*smollm2-135m"):
        resolve_model("llama-9000")
    with pytest.raises(ConfigError, match="does not exist or has no config.json"):
        resolve_model(str(tmp_path / "no-such-model"))


def test_hub_preset_without_network_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="TinyLlama/TinyLlama-1.1B-Chat-v1.0.*download it on a connected machine"):
        resolve_model("tinyllama-1.1b-chat")


@pytest.mark.skipif(cuda_available(), reason="this machine has a GPU: QLoRA is allowed here")
def test_qlora_on_cpu_stops_at_once_with_a_clear_message():
    with pytest.raises(ConfigError, match="QLoRA needs a CUDA GPU.*--method lora"):
        choose_backend(TrainConfig(method="qlora"))
    with pytest.raises(ConfigError, match="unsloth backend needs a CUDA GPU"):
        choose_backend(TrainConfig(backend="unsloth"))


def test_existing_run_folder_is_refused_unless_overwrite_or_resume(tmp_path):
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "run_config.json").write_text("{}")
    with pytest.raises(ConfigError, match=re.escape("already holds a finished run; pass overwrite=True (--overwrite)")):
        prepare_run(tmp_path, "r1")
    assert prepare_run(tmp_path, "r1", overwrite=True).run == tmp_path / "r1"
    (tmp_path / "r2.resume" / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "r2.resume" / "resume_config.json").write_text("{}")
    (tmp_path / "r2.resume" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    with pytest.raises(ConfigError, match=re.escape("interrupted run: continue it with resume=True (--resume)")):
        prepare_run(tmp_path, "r2")
    with pytest.raises(ConfigError, match="nothing to resume"):
        prepare_run(tmp_path, "r3", resume=True)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--rank", "0"], "error: rank must be greater than 0"),
        (["--model", "no-such-preset"], "error: unknown model preset"),
        (["--data", "data/missing.jsonl"], "error: data/missing.jsonl: the file does not exist"),
        (["--method", "qlora"], "error: QLoRA needs a CUDA GPU"),
        (["--max_new_tokens", "-1"], "error: max_new_tokens must be greater than 0, got -1"),
        (["--seed", "-1"], "error: seed must be 0 or more, got -1"),
        (["--limit_examples", "-1"], "error: limit_examples must be 0 or more, got -1"),  # it trained on 49 of 50
        (["--run_name", "r" * 300], "error: run_name is 300 bytes long"),
    ],
)
def test_cli_prints_one_line_errors_and_writes_nothing(tmp_path, args, message):
    if "qlora" in args and cuda_available():
        pytest.skip("this machine has a GPU: QLoRA is allowed here")
    done = run_cli(*args, "--output_dir", str(tmp_path / "out"), cwd=REPO, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().startswith(message) and len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_a_home_folder_in_a_path_is_the_home_folder_as_in_a_shell():
    from pathlib import Path

    cfg = TrainConfig(output_dir="~/runs", data="~/mine.jsonl")
    assert cfg.output_dir == str(Path.home() / "runs") and cfg.data == str(Path.home() / "mine.jsonl")


@pytest.mark.parametrize("lacks", ["model_type", "weights", "tokenizer"])
def test_a_model_folder_that_would_fail_deep_in_loading_is_named_with_what_it_lacks(tmp_path, base_model_dir, lacks):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(base_model_dir, folder)
    if lacks == "model_type":
        (folder / "config.json").write_text("{}")
    else:
        for item in folder.glob("*.safetensors" if lacks == "weights" else "tokenizer*"):
            item.unlink()
    done = run_cli("--model", str(folder), "--output_dir", str(tmp_path / "out"), cwd=REPO, timeout=300)
    assert done.returncode == 2 and done.stderr.startswith(f"error: model folder {folder} has no ")
    assert {"model_type": '"model_type"', "weights": "weights", "tokenizer": "tokenizer files"}[lacks] in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()
