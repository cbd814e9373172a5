"""The package's light modules import without transformers, TRL or PEFT: a notebook's first cells and the CLI's
argument parsing stay fast, and Unsloth (which patches those three) can still be imported before them."""

import subprocess
import sys

from helpers import REPO

LIGHT = [
    "finetune_lab",
    "finetune_lab.config",
    "finetune_lab.data",
    "finetune_lab.runtime",
    "finetune_lab.models",
    "finetune_lab.checkpoints",
    "finetune_lab.training",
    "finetune_lab.memory",
    "finetune_lab.doctor",
    "finetune_lab.tracking",
    "finetune_lab.phases",
]


def test_light_modules_do_not_import_transformers_trl_or_peft():
    code = f"import sys; import {', '.join(LIGHT)}; print(sorted({{'transformers', 'trl', 'peft'}} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
