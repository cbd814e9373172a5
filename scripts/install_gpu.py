"""Install the lab's GPU stack on top of the CUDA torch a machine already has (Colab, or your own CUDA machine).

Who it is for: Colab users (the notebooks' first cell runs it) and anyone with a CUDA GPU. How to run, from the
repository root:
    python scripts/install_gpu.py              # install
    python scripts/install_gpu.py --dry-run    # print the pip commands only
It follows Unsloth's own Colab recipe (the install cell of unslothai/notebooks): Unsloth, unsloth_zoo and their
torch-bound companions go in with --no-deps, xformers only in the build made for the running torch, then the lab's
pinned libraries with their dependencies, and last the lab's own package (finetune_lab). torch itself is never
installed or replaced. Running it again after a failure is safe: pip skips what is already there.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NO_DEPS = REPO / "requirements-gpu.txt"
WITH_DEPS = REPO / "requirements-gpu-deps.txt"
# xformers wheels are built for one torch each (Unsloth's Colab table). For a torch not listed, none is installed:
# Unsloth then uses torch's own attention, and a mismatched xformers would fail at import.
XFORMERS_FOR_TORCH = {"2.8": "0.0.32.post2", "2.9": "0.0.33.post1", "2.10": "0.0.34"}


def torch_minor(version: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", version).groups()
    return int(major), int(minor)


def torchao_for(version: str) -> str:
    # torchao >= 0.17 imports only on torch >= 2.11; 0.18 breaks peft 0.18's LoRA layers; peft wants >= 0.16.
    return "torchao==0.17.0" if torch_minor(version) >= (2, 11) else "torchao==0.16.0"


def install_commands(torch_version: str) -> list[list[str]]:
    """The `pip install` arguments, in order, for a machine whose torch is `torch_version`."""
    major, minor = torch_minor(torch_version)
    xformers = XFORMERS_FOR_TORCH.get(f"{major}.{minor}")
    no_deps = ["--no-deps", "-r", str(NO_DEPS), torchao_for(torch_version)]
    if xformers:
        no_deps.append(f"xformers=={xformers}")
    # the lab's package as a plain (not editable) install: a running notebook kernel imports it at once
    return [no_deps, ["-r", str(WITH_DEPS)], ["--no-deps", str(REPO)]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the pip commands, install nothing")
    args = parser.parse_args(argv)
    import importlib.metadata

    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        print(
            "error: torch is not installed. On a CUDA machine install the CUDA build first "
            "(https://pytorch.org/get-started/locally/); Colab has it already",
            file=sys.stderr,
        )
        return 2
    print(f"[install_gpu] keeping torch {torch_version}")
    for command in install_commands(torch_version):
        full = [sys.executable, "-m", "pip", "install", "-q", *command]
        print("[install_gpu] pip install", " ".join(command))
        if not args.dry_run:
            subprocess.run(full, check=True)
    if not args.dry_run and importlib.metadata.version("torch") != torch_version:
        print(f"error: torch changed to {importlib.metadata.version('torch')}; restart the runtime", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
