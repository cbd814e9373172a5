#!/usr/bin/env python
"""The course run on a GPU, end to end: where the wall time goes (phase by phase) for each backend, LoRA and QLoRA,
Unsloth's compile on and off, padded and packed; and a sweep of batch x sequence sizes that shows where Unsloth's
kernels start to pay.

Who it is for: maintainers deciding the lab's default GPU path, and Module 04's "when does Unsloth accelerate?".
Needs a CUDA GPU and the GPU stack (requirements-gpu.txt); the hub is not needed. From the repository root:
    python bench/course_precision.py build DIR                    # TinyLlama-1.1B shape, random weights
    python bench/course_run.py run DIR OUT.jsonl [CASE ...] [--repeats N]   # the CLI's course run per case, each
                                                                  # in its own process, interleaved (a b b a; N=2)
    python bench/course_run.py compare DIR OLD OUT.jsonl [CASE ...] [--repeats N]   # each case with this
                                                                  # checkout's CLI and with OLD's (an earlier
                                                                  # commit's files), interleaved
    python bench/course_run.py sweep DIR OUT.jsonl                # steps at 1x128 ... 8x1024 tokens per backend
    python bench/course_run.py table OUT.jsonl [PLOT.png]         # the tables (and the sweep's plot, and where
                                                                  # Unsloth's compile repays itself); no GPU
Wall time is measured around the CLI's process (start-up and imports to exit); the phases come from the run's
summary.json (finetune_lab.phases). With random weights the model never learns to stop, so both generation
phases always run to the answers' cap (96 tokens): a real model that learned the course answers stops earlier.
Before the timed runs, `run` and `compare` compile the packages' bytecode (as pip does when it installs them) and
run the first case once as a warm-up, reported apart: the first run on a machine also compiles GPU kernels.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "labs/unsloth_finetune/train_tiny_model.py"

# case: (CLI flags, environment). "compile": Unsloth's compiler of the model code (UNSLOTH_COMPILE_DISABLE=0/1).
CASES = {
    # what the CLI does when given nothing but the model: backend auto (Unsloth where it is installed)
    "default-lora": ([], {}),
    "default-qlora": (["--method", "qlora"], {}),
    "unsloth-lora-compile": (["--backend", "unsloth"], {"UNSLOTH_COMPILE_DISABLE": "0"}),
    "unsloth-lora-nocompile": (["--backend", "unsloth"], {"UNSLOTH_COMPILE_DISABLE": "1"}),
    "transformers-lora": (["--backend", "transformers"], {}),
    "unsloth-lora-nocompile-packed": (["--backend", "unsloth", "--packing"], {"UNSLOTH_COMPILE_DISABLE": "1"}),
    "transformers-lora-packed": (["--backend", "transformers", "--packing"], {}),
    "unsloth-qlora-compile": (["--backend", "unsloth", "--method", "qlora"], {"UNSLOTH_COMPILE_DISABLE": "0"}),
    "unsloth-qlora-nocompile": (["--backend", "unsloth", "--method", "qlora"], {"UNSLOTH_COMPILE_DISABLE": "1"}),
    "transformers-qlora": (["--backend", "transformers", "--method", "qlora"], {}),
    # gradient checkpointing off: no recomputed forward pass in the backward (the course run's activations are small)
    "unsloth-lora-nocompile-nogc": (
        ["--backend", "unsloth", "--no-gradient_checkpointing"],
        {"UNSLOTH_COMPILE_DISABLE": "1"},
    ),
    "transformers-lora-nogc": (["--backend", "transformers", "--no-gradient_checkpointing"], {}),
    "transformers-lora-packed-nogc": (["--backend", "transformers", "--packing", "--no-gradient_checkpointing"], {}),
    "transformers-qlora-nogc": (["--backend", "transformers", "--method", "qlora", "--no-gradient_checkpointing"], {}),
}
SIZES = [(1, 128), (8, 128), (8, 256), (8, 512), (8, 1024)]
SWEEP_MODES = {  # bench/lora_speed.py's raw training loops, in one process per mode
    "transformers": ("hf-lora", {}),
    "unsloth-compile": ("us-lora", {"UNSLOTH_COMPILE_DISABLE": "0"}),
    "unsloth-nocompile": ("us-lora", {"UNSLOTH_COMPILE_DISABLE": "1"}),
}


def append(results: Path, row: dict) -> None:
    print(json.dumps(row), flush=True)
    with results.open("a") as f:
        f.write(json.dumps(row) + "\n")


# Packages the CLI imports, directly or through Unsloth; their folders get compiled bytecode before timing.
IMPORTED = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "unsloth", "unsloth_zoo", "matplotlib")


def compile_bytecode(results: Path) -> None:
    """pip compiles a package's bytecode when it installs it; a package folder copied or unpacked without it (and a
    machine with PYTHONDONTWRITEBYTECODE set, which keeps Python from caching it) makes every process compile
    thousands of modules again, seconds that no installed lab pays. Compiled once here, up-to-date files skipped."""
    import importlib.util

    folders = set()
    for name in IMPORTED:
        spec = importlib.util.find_spec(name)
        if spec and spec.origin:
            folders.add(str(Path(spec.origin).parents[1]))
    for folder in sorted(folders):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", folder], capture_output=True)
        seconds = round(time.perf_counter() - start, 1)
        append(results, {"kind": "setup", "compiled": folder, "rc": done.returncode, "seconds": seconds})


def run(model_dir: Path, results: Path, cases: list[str], repeats: int = 2, baseline: Path | None = None) -> None:
    """Each case `repeats` times, in order then in reverse; with `baseline` (a checkout of an earlier commit) each
    case runs with that checkout's CLI right after this one's, so both see the card in the same state. Before them,
    the packages' bytecode is compiled and the first case runs once as a warm-up (its row, marked "first run", stays
    out of the medians): the first run on a machine also compiles GPU kernels and builds caches (Triton's,
    matplotlib's fonts) that every later run reuses."""
    runs = results.parent / "runs"
    trees = {"this": REPO} | ({"baseline": baseline} if baseline else {})
    order = [(case, tree) for case in cases for tree in trees]
    compile_bytecode(results)
    schedule = [("first run", order[0])] + [
        (r, pair) for r in range(repeats) for pair in (order if r % 2 == 0 else order[::-1])
    ]
    for repeat, (case, tree) in schedule:
        flags, env = CASES[case]
        name = f"{case}-{tree}-{repeat}".replace(" ", "-")
        command = [sys.executable, str(trees[tree] / CLI.relative_to(REPO)), "--model", str(model_dir), *flags]
        command += ["--output_dir", str(runs), "--run_name", name, "--overwrite"]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=trees[tree], env={**os.environ, **env})
        wall = time.perf_counter() - start
        (results.parent / f"{name}.log").write_text(done.stdout[-20000:] + done.stderr[-20000:])
        row = {"kind": "course", "case": case, "repeat": repeat, "rc": done.returncode, "wall_s": round(wall, 1)}
        if baseline:
            row["tree"] = tree
        summary = runs / name / "summary.json"
        if done.returncode == 0 and summary.exists():
            s = json.loads(summary.read_text())
            row.update(
                {k: s[k] for k in ("backend", "method", "dtype", "steps", "train_seconds", "peak_memory_mb")},
                phases=s["phase_seconds"],
                saved_s=s["wall_seconds"],
            )
        append(results, row)


def sweep_one(mode: str, model_dir: Path, results: Path) -> None:
    """One process: the model loaded once, then a few timed steps at each size (random tokens, labels = inputs)."""
    import torch

    os.environ["SEQ"] = str(max(seq for _, seq in SIZES))  # Unsloth's max_seq_length in lora_speed.raw_model
    import lora_speed

    case, _ = SWEEP_MODES[mode]
    start = time.perf_counter()
    model = lora_speed.raw_model(case, str(model_dir))
    model.train()
    load_s = time.perf_counter() - start
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, fused=True)
    vocab = model.config.vocab_size
    for batch, seq in SIZES:
        ids = torch.randint(3, vocab, (batch, seq), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
        times = []
        for step in range(3 + 8):  # 3 warm-up steps (first-call compiles and autotuning), 8 timed
            torch.cuda.synchronize()
            t = time.perf_counter()
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            if step >= 3:
                times.append(time.perf_counter() - t)
        step_s = statistics.median(times)
        append(
            results,
            {
                "kind": "sweep",
                "mode": mode,
                "batch": batch,
                "seq": seq,
                "step_ms": round(1000 * step_s, 2),
                "tokens_per_s": round(batch * seq / step_s),
                "load_s": round(load_s, 1),
            },
        )


def sweep(model_dir: Path, results: Path) -> None:
    for mode, (_, env) in SWEEP_MODES.items():
        done = subprocess.run(
            [sys.executable, __file__, "sweep-one", mode, str(model_dir), str(results)],
            cwd=REPO,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
        )
        if done.returncode:
            append(results, {"kind": "sweep", "mode": mode, "rc": done.returncode, "error": done.stderr[-2000:]})


def label(row: dict) -> str:
    return f"{row['case']} ({row['tree']})" if "tree" in row else row["case"]


def course_table(rows: list[dict]) -> str:
    """One row per case (and checkout): medians of the wall time and of each phase. The ratio is to the same case
    with the baseline checkout in a comparison, else to transformers + PEFT with the same method."""
    first = [r for r in rows if r.get("kind") == "course" and r["repeat"] == "first run"]
    timed = [r for r in rows if r.get("kind") == "course" and r["repeat"] != "first run"]
    ok = [r for r in timed if r["rc"] == 0]
    failed = [r for r in timed if r["rc"] != 0]
    labels = list(dict.fromkeys(label(r) for r in ok))
    phases = list(dict.fromkeys(p for r in ok for p in r["phases"]))
    compared = any("tree" in r for r in ok)

    def median(name, key):
        values = [r[key] if key in r else r["phases"].get(key, 0.0) for r in ok if label(r) == name]
        return statistics.median(values)

    def saved(name):  # n/a, not 0, where no run of the case recorded it
        values = [r["saved_s"] for r in ok if label(r) == name and r.get("saved_s") is not None]
        return f"{statistics.median(values):.1f}" if values else "n/a"

    def reference(row):
        name = f"{row['case']} (baseline)" if compared else f"transformers-{row['method']}"
        return median(name, "wall_s") if name in labels else None

    against = "the baseline checkout" if compared else "transformers+PEFT"
    out = [
        f"| case | runs | wall s (each) | wall vs {against} (lower: faster) | start to saved weights s | "
        + " | ".join(phases)
        + " | steps | peak GiB |",
        "| --- | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in phases) + " | ---: | ---: |",
    ]
    for name in labels:
        mine = [r for r in ok if label(r) == name]
        base = reference(mine[0])
        ratio = f"{median(name, 'wall_s') / base:.2f}x" if base else "n/a"
        cells = " | ".join(f"{median(name, p):.1f}" for p in phases)
        out.append(
            f"| {name} | {len(mine)} | {median(name, 'wall_s'):.1f} ({' / '.join(str(r['wall_s']) for r in mine)}) | "
            f"{ratio} | {saved(name)} | {cells} | {mine[0]['steps']} | {median(name, 'peak_memory_mb') / 1024:.2f} |"
        )
    for r in failed:
        out.append(f"| {label(r)} (repeat {r['repeat']}) | failed (rc {r['rc']}) | | | |")
    for r in first:
        out.append(
            f"\nNot in the medians: the warm-up, the first run on the machine ({label(r)}: GPU kernels compiled, "
            f"caches built), took {r['wall_s']} s" + ("" if r["rc"] == 0 else f" and failed (rc {r['rc']})") + "."
        )
    return "\n".join(out)


def sweep_table(rows: list[dict], plot: Path | None) -> str:
    ok = [r for r in rows if r.get("kind") == "sweep" and "rc" not in r]
    modes = list(dict.fromkeys(r["mode"] for r in ok))
    sizes = list(dict.fromkeys((r["batch"], r["seq"]) for r in ok))
    speed = {(r["mode"], r["batch"], r["seq"]): r["tokens_per_s"] for r in ok}
    others = [m for m in modes if m != "transformers"]
    out = [
        "| batch x seq | "
        + " | ".join(f"{m} tokens/s" for m in modes)
        + " | "
        + " | ".join(f"{m} vs transformers" for m in others)
        + " |",
        "| --- | " + " | ".join("---:" for _ in modes + others) + " |",
    ]
    for b, s in sizes:
        base = speed.get(("transformers", b, s))
        ratios = [f"{speed[(m, b, s)] / base:.2f}x" if base and (m, b, s) in speed else "n/a" for m in others]
        out.append(
            f"| {b} x {s} | "
            + " | ".join(f"{speed.get((m, b, s), float('nan')):,.0f}" for m in modes)
            + " | "
            + " | ".join(ratios)
            + " |"
        )
    for r in (r for r in rows if r.get("kind") == "sweep" and "rc" in r):
        out.append(f"| {r['mode']}: failed (rc {r['rc']}) | |")
    if plot and ok:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        labels = [f"{b}x{s}" for b, s in sizes]
        for m in modes:
            ax.plot(labels, [speed.get((m, b, s), float("nan")) for b, s in sizes], marker="o", label=m)
        ax.set(xlabel="batch x sequence length (tokens per step)", ylabel="tokens / s", yscale="log")
        ax.set_title("LoRA step speed, TinyLlama-1.1B shape, one GPU")
        ax.legend()
        fig.tight_layout()
        fig.savefig(plot, dpi=120)
    return "\n".join(out)


def crossover_table(rows: list[dict]) -> str:
    """Unsloth's compile: what it costs once (the course run's time outside its training steps, compile on vs off),
    what it saves a step (the sweep's step times), and the steps it takes to repay (finetune_lab's
    models.COMPILE_MIN_STEPS comes from here)."""

    def outside_training(case):
        runs = [r for r in rows if r.get("case") == case and r.get("rc") == 0 and r["repeat"] != "first run"]
        return statistics.median(sum(s for p, s in r["phases"].items() if p != "training") for r in runs)

    cost = outside_training("unsloth-lora-compile") - outside_training("unsloth-lora-nocompile")
    sweep = [r for r in rows if r.get("kind") == "sweep" and "rc" not in r]
    step_ms = {(r["mode"], r["batch"], r["seq"]): r["step_ms"] for r in sweep}
    out = [
        f"The compile costs {cost:.1f} s once (the course run outside its training steps, compile on vs off).",
        "",
        "| batch x seq | step ms, compile off | step ms, compile on | saved a step (ms) | compile once (s) "
        "| steps to repay it |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (mode, b, s), off in step_ms.items():
        on = step_ms.get(("unsloth-compile", b, s))
        if mode == "unsloth-nocompile" and on:
            saved = off - on
            repay = f"{cost / (saved / 1000):,.0f}" if saved > 0 else "never"
            out.append(f"| {b} x {s} | {off:.1f} | {on:.1f} | {saved:.1f} | {cost:.1f} | {repay} |")
    return "\n".join(out)


if __name__ == "__main__":
    verb, *args = sys.argv[1:] or ["help"]
    repeats = 2
    if "--repeats" in args:
        at = args.index("--repeats")
        repeats = int(args.pop(at + 1))
        args.pop(at)
    if verb == "run":
        run(Path(args[0]), Path(args[1]), args[2:] or list(CASES), repeats)
    elif verb == "compare":
        cases = args[3:] or ["default-lora", "default-qlora"]
        run(Path(args[0]), Path(args[2]), cases, repeats, baseline=Path(args[1]))
    elif verb == "sweep":
        sweep(Path(args[0]), Path(args[1]))
    elif verb == "sweep-one":
        sweep_one(args[0], Path(args[1]), Path(args[2]))
    elif verb == "table":
        rows = [json.loads(line) for line in Path(args[0]).read_text().splitlines() if line.strip()]
        tables = [course_table(rows)]
        if any(r.get("kind") == "sweep" for r in rows):
            tables.append(sweep_table(rows, Path(args[1]) if len(args) > 1 else None))
        if {"unsloth-lora-compile", "unsloth-lora-nocompile"} <= {r.get("case") for r in rows}:
            tables.append(crossover_table(rows))
        print("\n\n".join(tables))
    else:
        sys.exit(__doc__)
