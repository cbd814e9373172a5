"""finetune_lab.evaluation on hand-made cases, then on a real trained run."""

import json
import math
import os
import shutil

import pytest
from helpers import LAB, REPO

from finetune_lab.evaluation import (
    aggregate,
    highlight_invented,
    load_api,
    mark_invented,
    rouge_l,
    same_program,
    score,
    score_answers,
    summary_table,
    token_f1,
)

API = load_api()


def test_text_metrics_on_known_cases():
    assert rouge_l("garden.water(bed=1, liters=2)", "garden.water(bed=1, liters=2)") == 1.0
    assert rouge_l("completely different words", "garden.water(bed=1)") == 0.0
    assert token_f1("a b c", "a b c") == 1.0 and token_f1("a b", "c d") == 0.0
    assert token_f1("a b c d", "a b") == pytest.approx(2 / 3)
    assert same_program("garden.plant('bean', bed=1)", 'garden.plant("bean",  bed=1)')
    assert not same_program("garden.plant('bean', bed=2)", "garden.plant('bean', bed=1)")


def test_accuracy_and_hallucination_rate_per_answer_and_in_aggregate():
    reference = "garden.water(bed=2, liters=3)"
    right = score("```python\ngarden.water(bed=2,liters=3)\n```", reference, API)
    invented = score("garden.irrigate(bed=2)", reference, API)
    wrong_but_real = score("garden.water(bed=3, liters=3)", reference, API)
    assert (right["accuracy"], right["hallucination_rate"], right["parses"]) == (1.0, 0.0, 1.0)
    assert (invented["accuracy"], invented["hallucination_rate"], invented["hallucinated"]) == (
        0.0,
        1.0,
        "Garden.irrigate",
    )
    assert (wrong_but_real["accuracy"], wrong_but_real["hallucination_rate"]) == (0.0, 0.0)
    table = score_answers(
        ["p1", "p2", "p3"],
        [reference] * 3,
        ["garden.water(bed=2, liters=3)", "garden.irrigate(bed=2)", "garden.water(bed=3, liters=3)"],
        API,
    )
    agg = aggregate(table)
    assert agg["accuracy"] == pytest.approx(1 / 3) and agg["hallucination_rate"] == pytest.approx(1 / 3)


def test_prose_references_are_scored_without_code_checks():
    row = score("Paris is the capital.", "Paris is the capital.", API)
    assert row["accuracy"] == 1.0 and row["exact_match"] == 1.0 and row["hallucinated"] == ""


@pytest.mark.slow
def test_evaluate_cli_writes_tables_and_plot_and_the_fine_tuned_model_beats_the_base(trained_run):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    done = subprocess.run(
        [
            sys.executable,
            str(LAB / "evaluate_model.py"),
            str(trained_run),
            "--limit",
            "4",
            "--data",
            f"trained={REPO / 'data' / 'course_train.jsonl'}",
            "--wandb",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    eval_dir = trained_run / "eval-limit4"  # a quick look: beside eval/, which the model card quotes
    assert f"written: {eval_dir}/per_example.csv" in done.stdout
    summary = {row["model"]: row for row in json.loads((eval_dir / "summary.json").read_text())}
    assert summary["fine-tuned"]["accuracy"] >= 0.5 > summary["base"]["accuracy"]
    assert summary["fine-tuned"]["hallucination_rate"] <= summary["base"]["hallucination_rate"]
    assert (eval_dir / "scores.png").stat().st_size > 0 and (eval_dir / "per_example.csv").exists()
    assert "fine-tuned" in done.stdout and "accuracy" in done.stdout
    wandb_runs = list((trained_run.parent / "wandb").glob("offline-run-*"))  # --wandb: offline, no login
    assert len(wandb_runs) == 1
    assert json.loads((wandb_runs[0] / "files" / "summary.json").read_text()) == list(summary.values())
    assert next(wandb_runs[0].glob("run-*.wandb")).read_bytes().count(b"eval_summary") >= 1


# ---------------------------------------------------------------- prose answers and which family applies


@pytest.mark.parametrize(
    "reference,family",
    [
        ("It is 42.", "prose"),  # parses (a comparison) but is prose
        ("The garden has 3 beds.", "prose"),
        ("garden.water(bed=2, liters=3)", "code"),
        ("import gardenkit", "code"),
        ("x = 1", "code"),
        ("```bash\npip install gardenkit\n```", "code"),  # a fenced block is code whatever its language
    ],
)
def test_which_references_are_code(reference, family):
    assert score("anything", reference, API)["family"] == family


PORT_PROMPT = "Which port does the gardenkit server listen on?"
PORT_REFERENCE = "The server listens on port 5000."


@pytest.mark.parametrize(
    "answer,correct,abstained,invented",
    [
        ("It runs on port 8080.", 0.0, 0.0, "8080"),  # an invented port
        ("The gardenkit server uses port 5000.", 1.0, 0.0, ""),  # a paraphrase with the right number
        ("I don't know which port it uses.", 0.0, 1.0, ""),  # abstains: not wrong, not invented
        ("Port 5000, set in `server.toml`.", 0.0, 0.0, "server.toml"),  # right number, invented file
    ],
)
def test_prose_hallucinations_are_specifics_found_in_neither_reference_nor_prompt(answer, correct, abstained, invented):
    row = score(answer, PORT_REFERENCE, API, PORT_PROMPT)
    assert row["family"] == "prose" and math.isnan(row["parses"])
    assert (row["accuracy"], row["abstained"], row["hallucinated"]) == (correct, abstained, invented)
    assert row["hallucination_rate"] == float(bool(invented))


@pytest.mark.parametrize(
    "answer,correct",
    [
        ("The capital of France is Paris.", 1.0),  # the short reference, said in a sentence
        ("Paris", 1.0),
        ("The capital of France is Lyon.", 0.0),  # and Lyon is invented
        ("It is a city.", 0.0),
    ],
)
def test_a_short_reference_without_specifics_must_appear_in_the_answer(answer, correct):
    row = score(answer, "Paris.", API, "What is the capital of France?")
    assert row["family"] == "prose" and row["accuracy"] == correct


def test_a_rate_that_applies_to_no_answer_is_nan_and_prints_n_a():
    # code that does not use the course library: no API to check it against
    table = score_answers(["Add one."], ["y = x + 1"], ["y = x + 2"], API, split="held-out")
    table.insert(0, "model", "base")
    summary = summary_table(table)
    assert math.isnan(summary.loc[0, "hallucination_rate"]) and summary.loc[0, "family"] == "1 code"
    assert "n/a" in summary.to_string(na_rep="n/a")


@pytest.mark.slow
def test_evaluate_cli_on_a_students_prose_file_splits_off_a_held_out_part(tmp_path, trained_run):
    import subprocess
    import sys

    rows = [
        {"instruction": f"How many beds does garden {i} have?", "output": f"Garden {i} has {i + 2} beds."}
        for i in range(10)
    ]
    prose = tmp_path / "my_module03.jsonl"
    prose.write_text("\n".join(json.dumps(r) for r in rows))
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    done = subprocess.run(
        [
            sys.executable,
            str(LAB / "evaluate_model.py"),
            str(run),
            "--train",
            str(prose),
            "--no_base",
            "--max_new_tokens",
            "24",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "20% of" in done.stdout and "split off" in done.stdout
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert [r["split"] for r in summary] == ["trained", "held-out (20% of my_module03.jsonl, split off)"]
    assert [r["n"] for r in summary] == [8, 2] and {r["family"] for r in summary} == {"8 prose", "2 prose"}
    assert all(r["parses"] is None for r in summary)  # n/a for prose: no code to parse
    assert f"From eval/summary.json (trained: `{prose}`" in (run / "README.md").read_text()  # the card quotes it


def test_invented_spans_are_highlighted_for_the_notebook():
    table = score_answers(
        ["Which port?", "Water bed 2."],
        [PORT_REFERENCE, "garden.water(bed=2, liters=3)"],
        ["It runs on port 8080.", "garden.irrigate(bed=2)"],
        API,
    )
    html = highlight_invented(table)
    assert "It runs on port <mark>8080</mark>." in html and "garden.<mark>irrigate</mark>(bed=2)" in html
    assert "NaN" not in html and html.count("<td><pre") == 2  # the two answers that invented something, whole
    assert "<td>" not in highlight_invented(table[table["hallucinated"] == ""])  # nothing invented: no rows at all
    assert (
        mark_invented("x < 8080", "8080")
        == "<pre style='white-space: pre-wrap; text-align: left'>x &lt; <mark>8080</mark></pre>"
    )


def test_every_schema_is_evaluated_with_its_own_turns(tmp_path):
    from finetune_lab.evaluation import load_splits

    files = {
        "alpaca": {"system": "Answer in one sentence.", "instruction": "Which port?", "output": "Port 5000."},
        "chat": {
            "messages": [
                {"role": "user", "content": "Make a garden."},
                {"role": "assistant", "content": "g = gardenkit.Garden('A')"},
                {"role": "user", "content": "Which port?"},
                {"role": "assistant", "content": "Port 5000."},
            ]
        },
        "prompt_completion": {"prompt": "Which port?", "completion": "Port 5000."},
    }
    for name, row in files.items():
        (tmp_path / f"{name}.jsonl").write_text(json.dumps(row) + "\n")
    splits = load_splits({n: str(tmp_path / f"{n}.jsonl") for n in files}, system_prompt="Default system.")
    prompts = {n: ds.examples[0].prompt for n, ds in splits.items()}
    assert prompts["alpaca"][0] == {"role": "system", "content": "Answer in one sentence."}  # the row's own
    assert [t["role"] for t in prompts["chat"]] == ["system", "user", "assistant", "user"]  # every turn
    assert prompts["prompt_completion"] == [
        {"role": "system", "content": "Default system."},
        {"role": "user", "content": "Which port?"},
    ]
    assert all(ds.examples[0].completion == "Port 5000." for ds in splits.values())


def test_a_run_is_scored_on_its_own_files_which_are_checked_first(tmp_path, capsys):
    from finetune_lab.data import DatasetError, load_jsonl
    from finetune_lab.evaluation import COURSE_HELDOUT, run_data

    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"instruction": "Water bed 2.", "output": "garden.water(bed=2)"}\n')
    recorded = {"data": str(mine), "heldout": None, "data_sha256": load_jsonl(mine).sha256}
    assert run_data(recorded) == (str(mine), None) and capsys.readouterr().out == ""
    mine.write_text('{"instruction": "Water bed 3.", "output": "garden.water(bed=3)"}\n')
    assert run_data(recorded) == (str(mine), None)
    assert f"note: {mine} has changed since the run trained with it" in capsys.readouterr().out
    assert run_data({"data": "data/course_train.jsonl"})[1] == COURSE_HELDOUT  # runs that did not record it
    mine.unlink()
    with pytest.raises(DatasetError, match="the run trained with this file, which is no longer there. Fix: pass the"):
        run_data(recorded)


def test_an_evaluation_replaces_the_last_only_once_complete_and_under_the_runs_lock(tmp_path, monkeypatch):
    import subprocess

    import finetune_lab.plots
    from finetune_lab.config import ConfigError
    from finetune_lab.evaluation import save_evaluation

    run = tmp_path / "run"
    run.mkdir()
    (run / "run_config.json").write_text(json.dumps({"model": "smollm2-135m", "method": "lora"}))
    table = score_answers(["Water bed 2."], ["garden.water(bed=2)"], ["garden.water(bed=2)"], API, "held-out")
    table.insert(0, "model", "fine-tuned")
    save_evaluation(run, table)
    first = (run / "eval" / "summary.json").read_text()
    assert "| fine-tuned | held-out | 1 |" in (run / "README.md").read_text()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(finetune_lab.plots, "plot_scores", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_evaluation(run, table.assign(accuracy=0.0))
    assert (run / "eval" / "summary.json").read_text() == first  # the earlier evaluation, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and not list(run.glob(".eval.partial-*"))
    alive = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "run.lock").write_text(f"{alive.pid}\n")  # a training of this run, say
        with pytest.raises(ConfigError, match=f"another process \\(pid {alive.pid}\\) is using this run right now"):
            save_evaluation(run, table)
    finally:
        alive.kill()


def test_a_run_folder_that_cannot_be_written_is_named_before_any_work(tmp_path):
    from finetune_lab.checkpoints import check_writable
    from finetune_lab.config import ConfigError

    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="cannot write to .*afile/run .*Nothing was done"):
        check_writable(tmp_path / "afile" / "run")
    check_writable(tmp_path)
