"""finetune_lab.model_card: the run folder's README.md is a real model card, from the run's own files."""

import json
import shutil

from finetune_lab.embedded import HUB_ID
from finetune_lab.model_card import hub_id, write_model_card
from finetune_lab.runtime import cache_dir


def test_presets_are_named_by_their_hub_id_and_folders_as_given():
    assert hub_id("smollm2-135m") == HUB_ID
    assert hub_id("tinyllama-1.1b-chat") == "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
    assert hub_id("my/own-model") == "my/own-model"


def test_a_trained_run_gets_a_card_with_base_data_settings_and_no_machine_path(trained_run):
    card = (trained_run / "README.md").read_text()
    assert card.startswith(f"---\nbase_model: {HUB_ID}\nlibrary_name: peft\n")
    for part in ("de-quantized", "data/course_train.jsonl", "| LoRA rank / alpha / dropout | 16 / 32 / 0.0 |"):
        assert part in card, part
    assert "| optimizer steps | 16 |" in card and "![loss curve](loss_curve.png)" in card
    assert "Intended use and limitations" in card
    assert str(cache_dir()) not in card and "[More Information Needed]" not in card


def test_the_card_reports_scores_once_evaluated_and_n_a_where_a_rate_does_not_apply(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval", "export"))
    card = write_model_card(run).read_text()
    assert "Not evaluated yet" in card and "Not exported yet" in card
    (run / "eval").mkdir()
    rows = [
        {"model": "fine-tuned", "split": "held-out", "n": 4, "family": "4 prose", "accuracy": 0.75, "abstained": 0.25}
        | {"hallucination_rate": None, "rouge_l": 0.5, "file": "data/course_heldout.jsonl"}
    ]
    (run / "eval" / "summary.json").write_text(json.dumps(rows))
    card = write_model_card(run).read_text()
    assert "| fine-tuned | held-out | 4 | 4 prose | 0.750 | 0.250 | n/a | 0.500 |" in card
    assert "From eval/summary.json (held-out: `data/course_heldout.jsonl`)." in card  # which evaluation it quotes
    assert "Not evaluated yet" not in card
