"""The notebooks' contract: outputs policy, Colab cells and badges, script twins, and links that resolve.

nbval itself runs the notebooks (pytest collects labs/*.ipynb with --nbval-lax, see pyproject.toml).
"""

import re

import nbformat
import pytest
import tomllib
from helpers import MARKER, REPO, TRAIN_NOTEBOOK, checked_output

NOTEBOOKS = sorted(p for p in (REPO / "labs").rglob("*.ipynb") if p.parent.name != "executed")
REPO_URL = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
SLUG = REPO_URL.removeprefix("https://github.com/")
# solutions.ipynb solves the exercises with the script twin's own run (train) and names each CLI command.
TWINS = {
    "train_model.ipynb": "train_tiny_model.py",
    "evaluate_model.ipynb": "evaluate_model.py",
    "export_model.ipynb": "export_model.py",
    "solutions.ipynb": "train_tiny_model.py",
    "exercises.ipynb": "exercise_checks.py",
}
MACHINE_NOISE = re.compile(r"/tmp/|/root/|/home/|\d+\.\d+ ?s\b|it/s")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_policy_only_checked_cells_keep_outputs(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    checked = [c for c in code if c.source.lstrip().startswith(MARKER)]
    assert checked, "each notebook checks at least one deterministic output"
    assert [c.execution_count for c in checked] == list(range(1, len(checked) + 1)), (
        "run scripts/clean_notebooks.py before committing"
    )
    for cell in code:
        if cell in checked:
            text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in cell.outputs)
            assert text.strip(), f"checked cell has no committed output:\n{cell.source[:80]}"
            assert not MACHINE_NOISE.search(text), f"machine-specific output committed:\n{text[:200]}"
        else:
            assert cell.outputs == [] and cell.execution_count is None, (
                f"unchecked cell has committed output:\n{cell.source[:80]}"
            )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_opening_cells_colab_install_then_the_preflight_and_a_script_twin(path):
    nb = nbformat.read(path, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert '"google.colab" in sys.modules' in code[0] and REPO_URL in code[0]
    assert "preflight()" in code[1] and "ci_quick()" in code[1]
    assert (path.parent / TWINS[path.name]).exists()


def badge_targets():
    pattern = re.compile(r"https://colab\.research\.google\.com/github/([^/\s)]+/[^/\s)]+)/blob/main/([^\s)\"]+)")
    for doc in [*NOTEBOOKS, REPO / "README.md", *(REPO / "modules").rglob("*.md")]:
        for slug, target in pattern.findall(doc.read_text()):
            yield doc, slug, target


def test_every_colab_badge_uses_the_repository_slug_and_points_at_a_notebook():
    found = list(badge_targets())
    assert {doc.name for doc, _, _ in found} >= {"README.md", *(p.name for p in NOTEBOOKS)}
    for doc, slug, target in found:
        assert slug == SLUG, f"{doc.name}: badge uses {slug}, pyproject.toml says {SLUG}"
        assert target.endswith(".ipynb") and (REPO / target).exists(), f"{doc.name}: {target} does not exist"


def test_relative_links_in_the_course_text_resolve():
    link = re.compile(r"\]\((?!https?://|#|mailto:)([^)\s]+)\)")
    docs = [
        REPO / "README.md",
        *(REPO / "modules").rglob("*.md"),
        *(REPO / "data").rglob("*.md"),
        REPO / "checkpoints" / "README.md",
    ]
    assert len(docs) >= 5
    for doc in docs:
        for target in link.findall(doc.read_text()):
            resolved = (doc.parent / target.split("#")[0]).resolve()
            assert resolved.exists(), f"{doc.relative_to(REPO)} links to missing {target}"


def test_the_hand_built_lora_layer_equals_peft_and_predicts_the_trainable_count():
    lora = checked_output(TRAIN_NOTEBOOK, "from peft.tuners.lora import")
    assert "B = 0: the adapted layer equals the base: True" in lora
    assert "hand-built LoRA == PEFT's LoRA layer: True" in lora
    adapters = checked_output(TRAIN_NOTEBOOK, "from peft import get_peft_model")
    assert "as counted by hand in section 4: True" in adapters


def test_the_label_view_learns_exactly_the_answer_and_its_end_of_turn_token():
    from finetune_lab.data import load_jsonl
    from finetune_lab.embedded import CHATML_END

    view = checked_output(TRAIN_NOTEBOOK, "batch = trainer.data_collator")
    first = load_jsonl(REPO / "data" / "course_train.jsonl").examples[0]
    learned = next(line for line in view.splitlines() if line.startswith("learned:"))
    assert learned == f"learned: {first.completion + CHATML_END + chr(10)!r}"
    masked = next(line for line in view.splitlines() if line.startswith("masked :"))
    assert first.user_text in masked and first.completion not in masked


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_executed_copy_for_reading_on_github_runs_the_same_code(path):
    copy = path.parent / "executed" / path.name
    assert copy.exists(), "regenerate with: python scripts/clean_notebooks.py --copies"
    source, executed = (nbformat.read(p, as_version=4) for p in (path, copy))
    code = [[c.source for c in nb.cells if c.cell_type == "code"] for nb in (source, executed)]
    assert code[0] == code[1], "the copy is stale: python scripts/clean_notebooks.py --copies"
    ran = [c for c in executed.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in ran), "every cell of the copy ran"
    assert not [o for c in ran for o in c.outputs if o.output_type == "error"]


def test_the_export_notebook_takes_the_export_scripts_steps_in_the_same_order():
    import inspect

    from export_model import export, export_steps

    steps = ["plan_export(", "load_checkpoint(", "base_as_trained(", "greedy_answers(", "merge_and_save("]
    steps += ["write_gguf(", "llama_cpp_answers(", "parity_report(", "modelfile(", "finish_export("]
    notebook = nbformat.read(REPO / "labs" / "unsloth_finetune" / "export_model.ipynb", as_version=4)
    code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
    for source in (inspect.getsource(export) + inspect.getsource(export_steps), code):
        assert sorted(steps, key=source.index) == steps
