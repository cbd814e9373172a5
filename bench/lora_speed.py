#!/usr/bin/env python
"""Side-by-side LoRA/QLoRA training throughput on one CUDA GPU: this lab's training path vs raw Unsloth vs raw
transformers + PEFT, and the lab's padding-free batches vs padded ones on the real course dataset.

Who it is for: anyone checking the lab's GPU path is as fast as Unsloth itself. Needs a CUDA GPU with unsloth,
trl, peft and bitsandbytes (requirements-gpu.txt). Run everything with bench/run_gpu_bench.sh, or by hand:
    python bench/lora_speed.py make-tinyllama DIR          # TinyLlama-1.1B shape, random weights (speed does not
                                                            # depend on the weights' values)
    python bench/lora_speed.py make-smollm2 DIR LIKE       # SmolLM2-135M shape + tokenizer of folder LIKE, random
    python bench/lora_speed.py run CASE DIR >> results.jsonl   # one process per case, so patches never leak
    python bench/lora_speed.py table results.jsonl OUT.md  # ratios against the baselines
Cases on DIR (BS x SEQ random tokens, r=16 alpha=16 on all 7 projections, gradient checkpointing, fused AdamW,
median of STEPS steps after WARM warm-up steps):
    hf-lora hf-qlora          raw transformers + PEFT (+ bitsandbytes nf4), SDPA, a plain training loop
    us-lora us-qlora          raw Unsloth FastLanguageModel, a plain training loop
    lab-lora lab-qlora        the lab: train_tiny_model.py's model_for_training + its SFTTrainer, backend unsloth,
                              set up for a run on LAB_RUN_EXAMPLES examples (default 2,000: 2,000 steps over the 8
                              epochs at batch 8, long enough that the lab turns Unsloth's compile on); the timed
                              steps are its first
Cases on the course dataset (data/course_train.jsonl, batch 8, max_seq_length 256, DIR = a SmolLM2-shaped
model folder, COURSE_STEPS timed steps, default 28), the lab's trainer; these also run on a CPU (backend
transformers), e.g. on the embedded model itself:
    python bench/lora_speed.py run course-packed ~/.cache/finetune_lab/models/smollm2-135m-instruct
    course-padded      padded batches of 8 examples (the lab's default)
    course-padfree     padding-free: the same 8 examples end to end in one row, no pad tokens
    course-packed      packed: 8 rows, each filled with several whole examples up to 256 tokens (padding-free too)
    any of them + -nockpt   without gradient checkpointing
tokens/s is the median over the timed steps of (real, non-pad tokens of the step / the step's time).
BENCH_LABEL=TEXT marks a variant of a case in the table, e.g. BENCH_BACKEND=transformers BENCH_LABEL=transformers,
or UNSLOTH_SDPA_PACKED_SEGMENTS=1 BENCH_LABEL="per-example attention" (Unsloth's own packed path, which the lab
overrides for short batches). Two GPUs: bench/run_side_by_side.sh runs pairs of cases at the same time.
Data parallel (bench/run_multi_gpu.sh): lab-lora / lab-qlora under `accelerate launch --num_processes N`,
backend from BENCH_BACKEND (default unsloth); tokens/s counts every process's batch.
"""

from __future__ import annotations

import json
import os
import runpy
import statistics
import sys
import time

from finetune_lab.runtime import cuda_available

START = time.perf_counter()
BS, SEQ = int(os.environ.get("BS", 8)), int(os.environ.get("SEQ", 1024))
WARM, STEPS = int(os.environ.get("WARM", 3)), int(os.environ.get("STEPS", 20))
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def raw_model(case, model_dir):
    import torch

    four_bit = case.endswith("qlora")
    if case.startswith("us-"):
        from unsloth import FastLanguageModel

        model, _ = FastLanguageModel.from_pretrained(
            model_dir, max_seq_length=SEQ, dtype=torch.bfloat16, load_in_4bit=four_bit
        )
        return FastLanguageModel.get_peft_model(
            model,
            r=16,
            lora_alpha=16,
            lora_dropout=0,
            bias="none",
            target_modules=TARGETS,
            use_gradient_checkpointing="unsloth",
            random_state=0,
        )
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kw = dict(dtype=torch.bfloat16, attn_implementation="sdpa", device_map={"": 0})
    if four_bit:
        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kw)
    if four_bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return get_peft_model(
        model,
        LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, bias="none", target_modules=TARGETS, task_type="CAUSAL_LM"),
    )


def run_raw(case, model_dir):
    import torch

    t0 = time.perf_counter()
    model = raw_model(case, model_dir)
    model.train()
    load_s = time.perf_counter() - t0
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, fused=True)
    g = torch.Generator(device="cuda").manual_seed(0)
    batches = [torch.randint(3, 32000, (BS, SEQ), device="cuda", generator=g) for _ in range(4)]
    torch.cuda.reset_peak_memory_stats()
    times, first_step_at = [], None
    for step in range(WARM + STEPS):
        ids = batches[step % len(batches)]
        torch.cuda.synchronize()
        s = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        first_step_at = first_step_at or time.perf_counter()
        if step >= WARM:
            times.append(time.perf_counter() - s)
    return dict(
        load_s=load_s,
        step_times=times,
        tokens=[BS * SEQ] * len(times),
        first_step_at=first_step_at,
        trainable=sum(p.numel() for p in params),
    )


def _sync():
    """Wait for the GPU's queued work, so a step's time is its real time (a CPU runs synchronously)."""
    import torch

    if cuda_available():
        torch.cuda.synchronize()


def lab_backend() -> str:
    """The backend of the lab's cases: BENCH_BACKEND, else Unsloth on a GPU and transformers on a CPU."""
    return os.environ.get("BENCH_BACKEND", "unsloth" if cuda_available() else "transformers")


class StepClock:
    """Times each optimizer step and counts the real (non-pad) tokens of each batch."""

    def __init__(self):
        from transformers import TrainerCallback

        clock = self
        self.times, self.tokens, self.first_step_at, self._start = [], [], None, None

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                import torch

                if cuda_available():
                    torch.cuda.reset_peak_memory_stats()

            def on_step_begin(self, args, state, control, **kwargs):
                _sync()
                clock._start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                _sync()
                clock.first_step_at = clock.first_step_at or time.perf_counter()
                clock.times.append(time.perf_counter() - clock._start)

        self.callback = Callback()

    def wrap(self, collator):
        def counted(features):
            batch = collator(features)
            mask = batch.get("attention_mask")
            self.tokens.append(int(mask.sum()) if mask is not None else int(batch["input_ids"].numel()))
            return batch

        return counted


def run_lab(case, model_dir):
    from finetune_lab.config import TrainConfig
    from finetune_lab.data import load_jsonl
    from finetune_lab.phases import Phases

    lab = runpy.run_path(os.path.join(REPO, "labs/unsloth_finetune/train_tiny_model.py"))  # the lab's own steps

    course = case.startswith("course-")
    batching = case.split("-")[1] if course else "padded"
    method = "qlora" if case.endswith("qlora") else "lora"
    backend = lab_backend()
    cfg = TrainConfig(
        model=model_dir,
        method=method,
        backend=backend,
        rank=16,
        alpha=16 if not course else 32,
        max_seq_length=256 if course else SEQ,
        learning_rate=2e-4,
        batch_size=8 if course else BS,
        padding_free=batching == "padfree",
        packing=batching == "packed",
        gradient_checkpointing=not case.endswith("-nockpt"),
        output_dir="/tmp/bench-out",
        run_name=case,
    )
    course_data = load_jsonl(os.path.join(REPO, "data", "course_train.jsonl"), cfg.system_prompt)
    # The run the lab plans for (it decides Unsloth's compile from the run's length): the course data's own for the
    # course cases, else a long run of LAB_RUN_EXAMPLES examples, as a student's thousands of examples make.
    examples = len(course_data) if course else int(os.environ.get("LAB_RUN_EXAMPLES", 2000))
    t0 = time.perf_counter()
    model, tokenizer, choice = lab["model_for_training"](cfg, Phases(), examples)
    load_s = time.perf_counter() - t0
    if course:
        dataset = course_data
        steps = WARM + int(os.environ.get("COURSE_STEPS", 28))
    else:
        import torch
        from datasets import Dataset as HFDataset

        g = torch.Generator().manual_seed(0)
        dataset = HFDataset.from_list(
            [{"input_ids": torch.randint(3, 32000, (SEQ,), generator=g).tolist()} for _ in range(BS * 4)]
        )
        steps = WARM + STEPS
    clock = StepClock()
    sft = lab["training_args"](
        cfg, choice, "/tmp/bench-out/" + case, False, max_steps=steps, save_strategy="no", disable_tqdm=True
    )
    trainer = lab["make_trainer"](model, tokenizer, cfg, sft, dataset)
    trainer.add_callback(clock.callback)
    trainer.data_collator = clock.wrap(trainer.data_collator)
    trainer.train()
    world = int(os.environ.get("WORLD_SIZE", "1"))  # data parallel: every process trains a batch like this one
    return dict(
        load_s=load_s,
        step_times=clock.times[WARM:],
        tokens=[t * world for t in clock.tokens[WARM : len(clock.times)]],
        first_step_at=clock.first_step_at,
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
    )


def versions() -> str:
    import importlib.metadata as md

    names = ("torch", "transformers", "trl", "peft", "unsloth", "bitsandbytes")
    installed = {dist.metadata["Name"].lower() for dist in md.distributions()}
    return ", ".join(f"{name} {md.version(name)}" for name in names if name in installed)


def run(case, model_dir):
    import torch

    from finetune_lab.training import peak_memory_mb

    out = (run_lab if case.startswith(("lab-", "course-")) else run_raw)(case, model_dir)
    times = sorted(out["step_times"])
    rates = sorted(tokens / seconds for tokens, seconds in zip(out["tokens"], out["step_times"]))
    row = dict(
        case=case,
        steps=len(times),
        load_s=round(out["load_s"], 1),
        start_to_first_step_s=round(out["first_step_at"] - START, 1),
        step_s_median=round(times[len(times) // 2], 4),
        tokens_per_s=round(rates[len(rates) // 2]),
        peak_gib=round(peak_memory_mb() / 1024, 2),
        trainable=out["trainable"],
        gpu=torch.cuda.get_device_name()
        if cuda_available()
        else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)",
        versions=versions(),
    )
    if case.startswith("course-"):
        row["nonpad_tokens_per_step"] = round(sum(out["tokens"]) / len(out["tokens"]))
        if lab_backend() == "unsloth" and case.split("-")[1] in ("packed", "padfree"):
            # read after training: the lab itself may have chosen it (finetune_lab.models.use_dense_packed_mask)
            from finetune_lab.models import torch_varlen_has_gqa

            row["packed_attention"] = (
                "one dense block mask"
                if os.environ.get("UNSLOTH_SDPA_PACKED_SEGMENTS") == "0"
                else "varlen kernel"
                if torch_varlen_has_gqa()
                else "per example"
            )
    if os.environ.get("BENCH_LABEL"):  # a variant of a case, e.g. run under another backend or Unsloth setting
        row["label"] = os.environ["BENCH_LABEL"]
    row.update(
        processes=int(os.environ.get("WORLD_SIZE", "1")),
        backend=lab_backend() if case.startswith(("lab-", "course-")) else case.split("-")[0],
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(row), flush=True)


def result_rows(results_path):
    """The benchmark's rows in a results file, skipping failure markers and the trainer's own log lines (Python
    dicts such as {'loss': ...}, not JSON)."""
    rows = (json.loads(line) for line in open(results_path) if line.startswith('{"'))
    return [row for row in rows if "case" in row]


def load_runs(results_path):
    """Result rows by name (the case, plus its BENCH_LABEL in brackets), one row per name: a case that ran several
    times (bench/run_side_by_side.sh) gets the median of its runs' tokens/s and peak memory, with their range."""
    runs = {}
    for row in result_rows(results_path):
        runs.setdefault(row["case"] + (f" ({row['label']})" if row.get("label") else ""), []).append(row)
    rows = {}
    for name, same in runs.items():
        row = dict(
            same[0],
            runs=len(same),
            tokens_range=(min(r["tokens_per_s"] for r in same), max(r["tokens_per_s"] for r in same)),
        )
        row["tokens_per_s"] = round(statistics.median(r["tokens_per_s"] for r in same))
        row["peak_gib"] = round(statistics.median(r["peak_gib"] for r in same), 2)
        rows[name] = row
    return rows


def _rate(row) -> str:
    low, high = row["tokens_range"]
    return f"{row['tokens_per_s']:,}" + (f" ({row['runs']} runs, {low:,}-{high:,})" if row["runs"] > 1 else "")


def table(results_path, out_path):
    rows = load_runs(results_path)
    first = next(iter(rows.values())) if rows else {}
    versions = first.get("versions", "versions: see the run's log")
    lines = [
        f"# LoRA / QLoRA training throughput on {first.get('gpu', '?')}",
        "",
        f"{versions}. One process per case run; tokens/s is the median over the timed steps (after {WARM} "
        "warm-up steps) of the step's real tokens / the step's time (of several runs: the median run, "
        "with the range).",
    ]
    synthetic = [c for c in ("hf-lora", "us-lora", "lab-lora", "hf-qlora", "us-qlora", "lab-qlora") if c in rows]
    if synthetic:
        lines += [
            "",
            f"TinyLlama-1.1B shape (random weights), batch {BS} x {SEQ} tokens, r=16 on all 7 projections, "
            f"gradient checkpointing, fused AdamW, {STEPS} timed steps.",
            "",
            "| case | tokens/s | peak GiB | start to 1st step (s) | vs raw Unsloth tokens/s | vs raw Unsloth memory "
            "| vs transformers+PEFT tokens/s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]

    def ratio(a, b, key):
        return f"{a[key] / b[key]:.2f}x" if a and b else "-"

    for case in synthetic:
        r, kind = rows[case], case.split("-")[1]
        us, hf = rows.get(f"us-{kind}"), rows.get(f"hf-{kind}")
        lines.append(
            f"| {case} | {_rate(r)} | {r['peak_gib']} | {r['start_to_first_step_s']} "
            f"| {ratio(r, us, 'tokens_per_s')} | {ratio(r, us, 'peak_gib')} | {ratio(r, hf, 'tokens_per_s')} |"
        )
    course = sorted(
        (name for name in rows if name.startswith("course-")), key=lambda name: (name != "course-padded", name)
    )
    if "course-padded" in course:
        base = rows["course-padded"]
        lines += [
            "",
            f"Course dataset (50 short examples, SmolLM2-135M, batch 8, max_seq_length 256, the lab's trainer, "
            f"backend {base['backend']} unless the label says otherwise, {base['steps']} timed steps; "
            "-nockpt: gradient checkpointing off):",
            "",
            "| case | effective (non-pad) tokens/s | real tokens per step | step s (median) | peak GiB "
            "| start to 1st step (s) | vs padded default |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {c} | {_rate(rows[c])} | {rows[c]['nonpad_tokens_per_step']} "
            f"| {rows[c]['step_s_median']} | {rows[c]['peak_gib']} | {rows[c]['start_to_first_step_s']} "
            f"| {rows[c]['tokens_per_s'] / base['tokens_per_s']:.2f}x |"
            for c in course
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    if out_path:
        with open(out_path, "w") as fh:
            fh.write(text)


def scaling(results_path, out_path):
    """Tokens/s of the same per-GPU workload on 1 and N GPUs (data parallel), with the speed-up."""
    rows = result_rows(results_path)
    lines = [
        f"# Data-parallel scaling on {rows[0]['gpu'] if rows else '?'} (accelerate launch, DDP)",
        "",
        f"TinyLlama-1.1B shape (random weights), {BS} x {SEQ} tokens per GPU per step, r=16 on all 7 "
        f"projections, gradient checkpointing; median step time of {STEPS} steps after {WARM} warm-up steps. "
        f"{rows[0].get('versions', '') if rows else ''}",
        "",
        "| case | backend | GPUs | tokens/s (all GPUs) | peak GiB per GPU | speed-up vs 1 GPU |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    single = {(r["case"], r["backend"]): r["tokens_per_s"] for r in rows if r["processes"] == 1}
    for r in rows:
        one = single.get((r["case"], r["backend"]))
        speedup = f"{r['tokens_per_s'] / one:.2f}x" if one else "-"
        lines.append(
            f"| {r['case']} | {r['backend']} | {r['processes']} | {r['tokens_per_s']:,} | {r['peak_gib']} | {speedup} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if out_path:
        with open(out_path, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "make-tinyllama":
        from shapes import build_preset_shape

        build_preset_shape("tinyllama-1.1b-chat", sys.argv[2])
    elif command == "make-smollm2":
        from shapes import build_like

        build_like(sys.argv[3], sys.argv[2])
    elif command == "run":
        run(sys.argv[2], sys.argv[3])
    elif command == "scaling":
        scaling(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
    elif command == "table":
        table(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
    else:
        sys.exit(__doc__)
