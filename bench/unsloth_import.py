#!/usr/bin/env python
"""Where Unsloth's import time goes: each import timed in a fresh process (two rounds, interleaved), then one
profiled import of Unsloth, its slowest calls by cumulative time.

Who it is for: maintainers weighing Unsloth's start-up against its faster steps (Module 04, "When does Unsloth
accelerate?"). Needs a CUDA GPU and the GPU stack; the hub is not needed. From the repository root:
    python bench/unsloth_import.py > bench/results/unsloth-import-GPU-DATE.txt
Unsloth runs with UNSLOTH_COMPILE_DISABLE=1, as on the course run. UNSLOTH_ALLOW_CPU=1 is Unsloth's switch for
CPU-only CI, which also skips its rewriting of TRL's trainers: timed only to measure that rewriting, never used.
"""

import os
import subprocess
import sys

CASES = {
    "transformers, TRL and PEFT": ("import torch, transformers, trl, peft", {}),
    "Unsloth (it imports those too)": ("import unsloth", {}),
    "Unsloth without rewriting TRL's trainers": ("import unsloth", {"UNSLOTH_ALLOW_CPU": "1"}),
}
PROFILE = """import cProfile, pstats
profile = cProfile.Profile()
profile.runctx("import unsloth", {}, {})
pstats.Stats(profile).sort_stats("cumulative").print_stats(30)"""


def python(code: str, extra: dict) -> str:
    env = {**os.environ, "UNSLOTH_COMPILE_DISABLE": "1", **extra}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def main() -> None:
    timer = "import time; t = time.perf_counter(); {}; print(round(time.perf_counter() - t, 2))"
    print("| import, each in a fresh process | round 1 s | round 2 s |\n| --- | ---: | ---: |")
    seconds = {name: [] for name in CASES}
    for _ in range(2):
        for name, (code, extra) in CASES.items():
            seconds[name].append(python(timer.format(code), extra).split()[-1])
    for name, times in seconds.items():
        print(f"| {name} | {' | '.join(times)} |")
    print("\nOne profiled `import unsloth` (profiling slows it), slowest calls by cumulative time:\n")
    print(python(PROFILE, {}))


if __name__ == "__main__":
    main()
