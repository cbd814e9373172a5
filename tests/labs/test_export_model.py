"""labs/unsloth_finetune/export_model.py end to end: a trained run becomes a merged model and GGUF files that
llama.cpp loads and answers with, token for token (f16) and within one prompt (q8_0); bad input is refused and
nothing half-written is left."""

import json
import os
import re
import subprocess
import sys

import pytest
from export_model import export
from gguf_export import ExportError, plan_export
from helpers import REPO, run_script, write_jsonl

from finetune_lab.embedded import HUB_ID

pytestmark = pytest.mark.slow


def parity(run):
    return json.loads((run / "export" / "parity.json").read_text())


def test_export_writes_the_merged_model_gguf_files_modelfile_and_parity_table(exported_run):
    run, stdout = exported_run
    export = run / "export"
    for name in ("merged/config.json", "merged/model.safetensors", "merged/tokenizer.json", "Modelfile", "parity.md"):
        assert (export / name).stat().st_size > 0, name
    files = {row["model"]: row for row in parity(run)["files"]}
    f16, q8 = files["f16 GGUF (llama.cpp)"], files["q8_0 GGUF (llama.cpp)"]
    assert (export / f16["file"]).exists() and (export / q8["file"]).exists()
    assert 0.45 < q8["mb"] / f16["mb"] < 0.6  # 8.5 bits a weight vs 16
    # the table and the time of each phase are printed, and the run's model card now reports the export
    assert (
        "| # | prompt |" in stdout
        and "where the time went" in stdout
        and "write q8_0" in stdout
        and "llama_model_quantize" in stdout
    )
    assert "f16 GGUF (llama.cpp)" in (run / "README.md").read_text()
    assert not list(run.glob(".export.partial-*"))


def test_llama_cpp_answers_as_the_checkpoint_f16_token_for_token_q8_0_within_one_prompt(exported_run):
    run, _ = exported_run
    report = parity(run)
    files = {row["model"]: row for row in report["files"]}
    n = report["prompts"]
    assert n == 2
    assert files["merged (transformers)"]["same"] == n
    assert files["f16 GGUF (llama.cpp)"]["same"] == n
    reference = files["checkpoint (transformers)"]["accuracy"]
    assert abs(files["q8_0 GGUF (llama.cpp)"]["accuracy"] - reference) <= 1 / n
    # real answers in the course's form, not empty strings that would match trivially
    assert all(r["answer"] and r["stopped"] for r in report["rows"] if r["model"] == "checkpoint (transformers)")
    f16_rows = [r for r in report["rows"] if r["model"] == "f16 GGUF (llama.cpp)"]
    checkpoint_rows = [r for r in report["rows"] if r["model"] == "checkpoint (transformers)"]
    # the same stops: an end-of-turn token that got lost would run every llama.cpp answer to the cap
    assert [r["stopped"] for r in f16_rows] == [r["stopped"] for r in checkpoint_rows]


def test_the_gguf_carries_the_chat_template_end_of_turn_token_and_byte_level_tokenizer(exported_run):
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    run, _ = exported_run
    tokenizer = AutoTokenizer.from_pretrained(run)
    for gguf in (run / "export").glob("*.gguf"):
        meta = Llama(model_path=str(gguf), vocab_only=True, verbose=False).metadata
        assert meta["tokenizer.chat_template"] == tokenizer.chat_template
        assert int(meta["tokenizer.ggml.eos_token_id"]) == tokenizer.convert_tokens_to_ids("<|im_end|>")
        # SmolLM2's byte-level BPE with its own pre-tokenizer, not a SentencePiece vocabulary
        assert (meta["tokenizer.ggml.model"], meta["tokenizer.ggml.pre"]) == ("gpt2", "smollm")


def test_the_modelfile_is_the_tokenizers_chat_template_with_ollamas_variables(exported_run):
    from transformers import AutoTokenizer

    run, _ = exported_run
    text = (run / "export" / "Modelfile").read_text()
    template = re.search(r'^TEMPLATE """(.*?)"""', text, re.S | re.M).group(1)
    system = re.search(r'^SYSTEM """(.*?)"""', text, re.S | re.M).group(1)
    tokenizer = AutoTokenizer.from_pretrained(run)
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Plant 3 beans in bed 1."}]
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert template.replace("{{ .System }}", system).replace("{{ .Prompt }}", messages[1]["content"]) == expected
    assert system == json.loads((run / "run_config.json").read_text())["system_prompt"]
    assert f'PARAMETER stop "{tokenizer.eos_token}"' in text
    assert (run / "export" / re.search(r"^FROM \./(\S+)", text, re.M).group(1)).exists()


def test_stock_peft_loads_the_run_folder_by_the_hub_id_it_records(exported_run, base_model_dir, tmp_path):
    """AutoPeftModelForCausalLM, offline, against a hub cache that holds the embedded model under its hub id:
    what a student's machine with the real download would have."""
    run, _ = exported_run
    assert json.loads((run / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_ID
    snapshot = tmp_path / "hub" / f"models--{HUB_ID.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for item in base_model_dir.iterdir():
        (snapshot / item.name).symlink_to(item)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    code = f"""
import torch
from peft import AutoPeftModelForCausalLM
from finetune_lab.checkpoints import load_checkpoint
stock = AutoPeftModelForCausalLM.from_pretrained({str(run)!r})
lab, tokenizer, _ = load_checkpoint({str(run)!r}, device="cpu")
ids = tokenizer("garden.plant(", return_tensors="pt")["input_ids"]
with torch.no_grad():
    print("max difference", (stock(ids).logits - lab(ids).logits).abs().max().item())
"""
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split("max difference")[1]) < 1e-4


def test_a_second_export_is_refused_and_the_first_is_kept(exported_run):
    run, _ = exported_run
    before = (run / "export" / "parity.json").stat().st_mtime_ns
    done = run_script("export_model.py", str(run), "--gguf", "q8_0")
    assert done.returncode == 2
    assert f"{run / 'export'} already exists; pass --overwrite" in done.stderr
    assert (run / "export" / "parity.json").stat().st_mtime_ns == before


def test_an_export_that_fails_midway_leaves_the_earlier_export_and_nothing_half_written(exported_run, tmp_path):
    run, _ = exported_run
    before = (run / "export" / "parity.json").read_text()
    bad = write_jsonl(tmp_path / "heldout.jsonl", ['{"instruction": "Water bed 1."}'], raw=True)
    with pytest.raises(Exception, match=r"heldout\.jsonl, line 1"):
        export(run, ("f16",), heldout=bad, overwrite=True)
    assert (run / "export" / "parity.json").read_text() == before
    assert not list(run.glob(".export.*"))


def test_bad_input_is_refused_before_anything_loads(trained_run, tmp_path):
    from finetune_lab.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match="not a finished run folder"):
        plan_export(tmp_path)
    with pytest.raises(ExportError, match=r"unknown GGUF type q3_k_s; choose from f32 .*q8_0 .*q4_k_m"):
        plan_export(trained_run, ("q3_k_s",))
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("run_config.json", "adapter_config.json"):
        (broken / name).write_bytes((trained_run / name).read_bytes())
    with pytest.raises(CheckpointError, match=r"adapter_model\.safetensors is missing; retrain the run"):
        plan_export(broken)
    assert sorted(p.name for p in broken.iterdir()) == ["adapter_config.json", "run_config.json"]  # nothing added


@pytest.mark.parametrize("script", ["export_model.py", "evaluate_model.py"])
def test_help_says_whole_sentences_and_negative_counts_are_refused(script, trained_run):
    import export_model

    helped = run_script(script, "--help", timeout=120)
    assert helped.returncode == 0
    if script == "export_model.py":  # its description is the docstring's first paragraph, not its first line
        assert export_model.__doc__.split("\n\n")[0].split()[-1] in helped.stdout.split("\n\n")[1]
    for flag, value, message in (
        ("--limit", "-49", "must be 0 or more"),
        ("--max_new_tokens", "-1", "must be 1 or more"),
    ):
        done = run_script(script, str(trained_run), flag, value, timeout=120)
        assert done.returncode == 2 and f"argument {flag}: {message}, got {value}" in done.stderr


def test_an_export_of_a_run_in_use_is_refused_before_any_model_loads(trained_run, tmp_path):
    import shutil

    from finetune_lab.config import ConfigError

    run = tmp_path / trained_run.name
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("export"))
    alive = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / f"{run.name}.lock").write_text(f"{alive.pid}\n")  # the run being retrained or exported elsewhere
        with pytest.raises(ConfigError, match=f"another process \\(pid {alive.pid}\\) is using this run right now"):
            export(run, ["f16"], "data/course_heldout.jsonl", limit=1)
    finally:
        alive.kill()
    assert not (run / "export").exists() and not list(run.glob(".export.partial-*"))
