"""scripts/check_numbers.py: every number the course text marks as measured equals its source, and a number or a
quoted block of output changed by hand in the text is caught, with the file, the line and the fix."""

import re
import shutil
import subprocess
import sys

from helpers import REPO

CHECK = [sys.executable, str(REPO / "scripts" / "check_numbers.py")]


def test_every_marked_number_in_the_course_text_matches_its_source():
    done = subprocess.run(CHECK, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert " 0 contradicted" in done.stdout and int(done.stdout.split()[0]) >= 100


def copy_of_the_texts(tmp_path):
    for part in ("README.md", "modules", "labs/unsloth_finetune", "bench/results"):
        copy = shutil.copytree if (REPO / part).is_dir() else shutil.copy
        (tmp_path / part).parent.mkdir(parents=True, exist_ok=True)
        copy(REPO / part, tmp_path / part)


def test_a_number_changed_by_hand_in_module_04_fails_and_write_restores_it(tmp_path):
    copy_of_the_texts(tmp_path)
    module = tmp_path / "modules" / "04_Fine_Tuning_LLMs" / "README.md"
    original = module.read_text()
    quoted = re.search(r"([\d.]+)<!-- n:ranks.16.train_seconds -->", original)
    changed = f"{float(quoted[1]) + 20:.1f}"  # a training time typed in by hand
    module.write_text(original[: quoted.start(1)] + changed + original[quoted.end(1) :])
    line = original[: quoted.start()].count("\n") + 1
    done = subprocess.run([*CHECK, "--root", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 1
    assert (
        f"modules/04_Fine_Tuning_LLMs/README.md:{line}: quotes {changed} for ranks.16.train_seconds, its source says "
        f"{quoted[1]}; fix: python scripts/check_numbers.py --write" in done.stderr
    )
    subprocess.run([*CHECK, "--root", str(tmp_path), "--write"], cwd=REPO, check=True, capture_output=True)
    assert module.read_text() == original


def test_the_readmes_make_lab_output_changed_by_hand_fails_and_write_restores_it(tmp_path):
    copy_of_the_texts(tmp_path)
    readme = tmp_path / "README.md"
    original = readme.read_text()
    quoted = re.search(r"(?m)^ +train_seconds: ([\d.]+)$", original)  # inside the quoted block of make lab's output
    readme.write_text(original[: quoted.start(1)] + "99.9" + original[quoted.end(1) :])
    block_line = original[: original.index("<!-- excerpt: ")].count("\n") + 1
    done = subprocess.run([*CHECK, "--root", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 1
    assert f"README.md:{block_line}: differs from bench/results/" in done.stderr
    subprocess.run([*CHECK, "--root", str(tmp_path), "--write"], cwd=REPO, check=True, capture_output=True)
    assert readme.read_text() == original
