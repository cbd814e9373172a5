"""Shared fixtures: the embedded model and one real CLI training run (helpers.py has the plain helpers).

Nothing here is mocked: the run is the lab's own script training SmolLM2-135M on the course data.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_cli


@pytest.fixture(scope="session")
def base_model_dir() -> Path:
    from finetune_lab.embedded import ensure_embedded_base

    return ensure_embedded_base()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, base_model_dir) -> Path:
    """The CLI's --test_mode run: 16 course examples, 16 steps, on this machine's CPU."""
    out = tmp_path_factory.mktemp("checkpoints")
    done = run_cli("--test_mode", "--output_dir", str(out), "--run_name", "e2e")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (out / "e2e" / "cli_stdout.txt").write_text(done.stdout)
    return out / "e2e"


@pytest.fixture(scope="session")
def exported_run(tmp_path_factory, trained_run) -> tuple[Path, str]:
    """A copy of the trained run, exported by the lab's export script (f16 and q8_0, 2 held-out prompts); and the
    script's output."""
    import shutil

    from helpers import run_script

    run = tmp_path_factory.mktemp("export") / trained_run.name
    shutil.copytree(trained_run, run)
    done = run_script("export_model.py", str(run), "--limit", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return run, done.stdout


RUN_ALL_TWICE = "train_model.ipynb"


def pytest_collection_modifyitems(config, items):
    """nbval runs train_model.ipynb before evaluate_model.ipynb and export_model.ipynb, in a student's order: they
    then score and export the run the training notebook saved instead of training one of their own. Other tests
    keep their order.

    Where extended cases run (`make test-extended`, or no -m at all), train_model.ipynb runs twice in the same
    kernel, as a student's second "Run All": every cell again, checked outputs compared again, with the first run's
    variables, run folders and patched libraries still there. The default run (`-m 'not extended'`) runs it once."""
    notebooks = {"train_model.ipynb": 1, "evaluate_model.ipynb": 2, "export_model.ipynb": 3, "solutions.ipynb": 4}
    items.sort(key=lambda item: notebooks.get(item.path.name, 0))
    first_run = [item for item in items if item.path.name == RUN_ALL_TWICE]
    if not first_run or "not extended" in config.getoption("markexpr", ""):
        return
    again = [
        type(cell).from_parent(
            cell.parent,
            name=f"{cell.name} (Run All again)",
            cell_num=cell.cell_num,
            cell=cell.cell,
            options=cell.options,
        )
        for cell in first_run
    ]
    for item in first_run + again:  # the second pass needs the first in its kernel
        item.add_marker(pytest.mark.extended)
    at = items.index(first_run[-1]) + 1
    items[at:at] = again
