#!/usr/bin/env python
"""The laptop-CPU numbers that README.md and Module 04 quote: the default run as `make lab` trains it, then
evaluate_model.py and export_model.py on that run, each in its own process, timed from start to exit, with its peak
RSS.

Who it is for: maintainers refreshing the course text's CPU numbers (scripts/check_numbers.py reads the table this
writes). Needs `make setup` (llama.cpp for the export) and the embedded model; no GPU, no hub. From the repository
root, about 10 minutes on 2 cores:
    python bench/cpu_lab.py run OUT.jsonl          # trains checkpoints/<--run_name, default bench-cpu-lab>
    python bench/cpu_lab.py table OUT.jsonl > bench/results/cpu-lab-DATE.md
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAB = Path("labs/unsloth_finetune")


def steps(run: str) -> dict[str, tuple[str, list[str]]]:
    """What `make lab` and the README's next commands run, with nothing but the run's name added."""
    return {
        "make-lab": ("train + before/after answers", [str(LAB / "train_tiny_model.py"), "--run_name", run]),
        "evaluate": ("evaluate_model.py on that run", [str(LAB / "evaluate_model.py"), f"checkpoints/{run}"]),
        "export": (
            "export_model.py on that run: merged, f16, q8_0, q4_k_m",
            [str(LAB / "export_model.py"), f"checkpoints/{run}", "--gguf", "f16", "q8_0", "q4_k_m"],
        ),
    }


def timed(argv: list[str]) -> dict:
    """Run one step in its own process; wait4 gives that process's own peak RSS (getrusage would give all children's
    maximum)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"{' '.join(argv)} failed:\n{out[-3000:]}")
    return {"wall_s": round(time.perf_counter() - start, 1), "peak_rss_gb": usage.ru_maxrss / 1e6, "stdout": out}


def run(results: Path, run_name: str) -> None:
    """The three steps in order; the lab itself refuses a run folder that already exists."""
    machine = f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}"
    for step, (what, argv) in steps(run_name).items():
        row = {"step": step, "what": what, "argv": argv, **timed(argv), "machine": machine}
        print(f"{step}: {row['wall_s']} s, {row['peak_rss_gb']:.1f} GB peak RSS", flush=True)
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
    folder = REPO / "checkpoints" / run_name
    summary = json.loads((folder / "summary.json").read_text())
    parity = json.loads((folder / "export" / "parity.json").read_text())
    adapter_mb = round((folder / "adapter_model.safetensors").stat().st_size / 1e6, 1)
    with results.open("a") as f:
        f.write(json.dumps({"summary": summary, "parity": parity, "adapter_mb": adapter_mb}) + "\n")


def table(results: Path) -> str:
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    timings, (run,) = [r for r in rows if "step" in r], [r for r in rows if "summary" in r]
    lab_out = timings[0]["stdout"]
    summary_block = lab_out[lab_out.index("=== Lab summary ===") : lab_out.index("--- test prompt 2")].rstrip()
    lines = [
        "# The lab on a laptop CPU: `make lab`, then evaluate and export that run",
        "",
        f"{timings[0]['machine']}, the embedded SmolLM2-135M in fp32, the default run (LoRA r=16, 50 examples, 8",
        "epochs of batch 8). Each step in its own process; wall time from start to exit, peak RSS of that process.",
        f"`python bench/cpu_lab.py run {results}`; this page: `python bench/cpu_lab.py table {results}`.",
        "This machine's speed varies from day to day with the same losses, so compare runs made together.",
        "",
        "| step | what it runs | wall s | peak RSS GB |",
        "| --- | --- | ---: | ---: |",
        *(f"| {t['step']} | {t['what']} | {t['wall_s']:.1f} | {t['peak_rss_gb']:.1f} |" for t in timings),
    ]
    s = run["summary"]
    lines += [
        "",
        "| the run | value |",
        "| --- | ---: |",
        *(f"| {k} | {s[k]} |" for k in ("steps", "train_seconds", "first_loss", "last_loss", "peak_memory_mb")),
        f"| adapter_MB | {run['adapter_mb']} |",
        "",
        f"The export's parity table: greedy answers to the {run['parity']['prompts']} held-out prompts.",
        "",
        "| model | answered by | MB | same as the checkpoint | correct |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for f in run["parity"]["files"]:
        name, by = f["model"].split(" ", 1)  # "q8_0 GGUF (llama.cpp)": the row's key is "q8_0"
        mb, correct = f["mb"] if f["mb"] is not None else "n/a", round(f["accuracy"] * f["prompts"])
        lines.append(f"| {name} | {by} | {mb} | {f['same']} | {correct} |")
    printed = "What `make lab` printed, from its summary to the first test prompt:"
    return "\n".join([*lines, "", printed, "", "````text", summary_block, "````"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["run", "table"])
    parser.add_argument("results", type=Path)
    parser.add_argument("--run_name", default="bench-cpu-lab")
    args = parser.parse_args()
    if args.what == "run":
        run(args.results, args.run_name)
    else:
        print(table(args.results))


if __name__ == "__main__":
    main()
