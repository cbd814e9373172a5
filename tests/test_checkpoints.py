"""finetune_lab.checkpoints: a save killed midway loses nothing, a wrong base is refused, merged export."""
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO
from finetune_lab.checkpoints import CheckpointError, clean_stale_staging, export_merged, load_checkpoint
from finetune_lab.generation import generate

pytestmark = pytest.mark.slow
PROMPTS = ["Plant tomatoes in bed 1 of `garden`.", "Create a gardenkit garden named \"Allotment\" with 6 beds."]

SAVE_THEN_HANG = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from finetune_lab.checkpoints import RunPaths, load_checkpoint, save_run
    run = Path(sys.argv[1])
    model, tokenizer, run_config = load_checkpoint(run, device="cpu")
    def hang(folder):  # the adapter and tokenizer are written by now; the process dies before publishing
        print("STAGED", folder, flush=True)
        time.sleep(600)
    save_run(RunPaths.of(run.parent, run.name), model, tokenizer, run_config, hang)
""")


def test_a_save_killed_midway_leaves_the_previous_checkpoint_loadable(tmp_path, trained_run):
    run = tmp_path / trained_run.name
    shutil.copytree(trained_run, run)
    model, tokenizer, _ = load_checkpoint(run, device="cpu")
    before = generate(model, tokenizer, PROMPTS, max_new_tokens=32)
    proc = subprocess.Popen([sys.executable, "-c", SAVE_THEN_HANG, str(run), str(REPO)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("STAGED"), line
        proc.kill()                                    # SIGKILL: no cleanup handlers run
        proc.wait(timeout=30)
    finally:
        proc.kill()
    partial = list(tmp_path.glob(f".{run.name}.partial-*"))
    assert partial and (partial[0] / "adapter_model.safetensors").exists()
    model, tokenizer, _ = load_checkpoint(run, device="cpu")
    assert generate(model, tokenizer, PROMPTS, max_new_tokens=32) == before
    clean_stale_staging(tmp_path)                      # what the next save does first
    assert not list(tmp_path.glob(".*.partial-*")) and run.exists()


def test_a_checkpoint_on_another_architecture_is_refused(tmp_path, trained_run):
    from transformers import LlamaConfig, LlamaForCausalLM
    other = tmp_path / "tiny-llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(other)
    with pytest.raises(CheckpointError, match="another architecture.*hidden_size: 576 vs 64"):
        load_checkpoint(trained_run, base=str(other))


def test_not_a_run_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not a finished run folder"):
        load_checkpoint(tmp_path)


def test_merged_export_answers_like_the_adapter(tmp_path, trained_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model, tokenizer, _ = load_checkpoint(trained_run, device="cpu")
    expected = generate(model, tokenizer, PROMPTS, max_new_tokens=32)
    merged_dir = export_merged(trained_run, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert generate(merged, AutoTokenizer.from_pretrained(merged_dir), PROMPTS, max_new_tokens=32) == expected
    with pytest.raises(CheckpointError, match="already exists"):
        export_merged(trained_run, merged_dir)
