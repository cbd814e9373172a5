#!/usr/bin/env python
"""Prove that the Colab/GPU install (python scripts/install_gpu.py) never replaces the machine's torch.

Who it is for: maintainers, after any change to requirements-gpu*.txt or the installer. Needs PyPI, no GPU.
How to run (from the repository root):
    python scripts/check_gpu_install.py                        # Colab's stack: torch 2.10.0+cu128
    python scripts/check_gpu_install.py --torch 2.9.0 --torchvision 0.24.0 --torchaudio 2.9.0
It makes a scratch virtual environment in which torch, torchvision, torchaudio and triton are "installed" at the
given versions (metadata only: pip sees them, nothing is downloaded), runs each of the installer's pip commands
there with --dry-run --report, and prints what pip would install. It exits 1 if any of those four would change.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

from install_gpu import install_commands

KEPT = ("torch", "torchvision", "torchaudio", "triton")


def fake_installed(site: Path, name: str, version: str) -> None:
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text("")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torch", default="2.10.0")
    parser.add_argument("--torchvision", default="0.25.0")
    parser.add_argument("--torchaudio", default="2.10.0")
    parser.add_argument("--triton", default="3.6.0")
    parser.add_argument("--cuda", default="cu128", help="local version label of Colab's CUDA wheels")
    args = parser.parse_args()
    versions = {
        "torch": f"{args.torch}+{args.cuda}",
        "torchvision": f"{args.torchvision}+{args.cuda}",
        "torchaudio": f"{args.torchaudio}+{args.cuda}",
        "triton": args.triton,
    }
    changed = []
    with tempfile.TemporaryDirectory() as tmp:
        env = Path(tmp) / "venv"
        venv.EnvBuilder(with_pip=True).create(env)
        python = env / "bin" / "python"
        site = Path(
            subprocess.check_output(
                [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
            ).strip()
        )
        for name, version in versions.items():
            fake_installed(site, name, version)
        print("installed (as on Colab):", ", ".join(f"{n} {v}" for n, v in versions.items()))
        for i, command in enumerate(install_commands(args.torch)):
            report = Path(tmp) / f"report-{i}.json"
            done = subprocess.run(
                [str(python), "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report), *command],
                capture_output=True,
                text=True,
            )
            shown = " ".join(c if not c.startswith("/") else Path(c).name for c in command)
            if done.returncode:
                print(f"\npip install {shown}\n  FAILED to resolve:\n{done.stderr[-2000:]}")
                return 1
            items = json.loads(report.read_text())["install"]
            names = sorted(f"{it['metadata']['name']}=={it['metadata']['version']}" for it in items)
            touched = [n for n in names if n.split("==")[0].lower() in KEPT]
            changed += touched
            print(f"\npip install {shown}\n  would install {len(names)}: {', '.join(names)}")
            verdict = "CHANGED " + ", ".join(touched) if touched else "unchanged"
            print(f"  torch, torchvision, torchaudio, triton: {verdict}")
    print(
        "\nresult:",
        "FAIL, the install would replace " + ", ".join(changed)
        if changed
        else "PASS, nothing replaces the machine's torch",
    )
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
