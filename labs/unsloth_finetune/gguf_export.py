"""Take a run home: merge the adapter into the base, convert to GGUF with llama.cpp's own converter, and check that
llama.cpp answers like the PEFT checkpoint.

<run>/export/                 appears only once complete (staged under a hidden name, then renamed)
    merged/                   a plain transformers model folder: the adapter folded into the base weights
    <run>-f16.gguf, ...       one GGUF per type asked for, tokenizer, chat template and end-of-turn token inside
    Modelfile                 Ollama: `ollama create <run> -f Modelfile` in this folder
    parity.md, parity.json    llama.cpp's greedy answers to the held-out prompts vs the PEFT checkpoint's

The converter is convert_hf_to_gguf.py from the llama.cpp that llama-cpp-python vendors, taken from the PyPI source
release of the installed version (so the converter and the runtime are the same llama.cpp) and cached.
export_model.py and export_model.ipynb call these steps in the same order; what they both need lives here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from finetune_lab.checkpoints import (
    RunPaths,
    check_run_files,
    check_writable,
    clean_stale_staging,
    publish,
    read_run_config,
    run_lock,
    staged,
    staging_for,
)
from finetune_lab.embedded import pypi_file
from finetune_lab.generation import Answer
from finetune_lab.runtime import cache_dir

EXPORT = "export"
# Written by convert_hf_to_gguf.py from the merged weights (its --outtype values).
CONVERTER_TYPES = {
    "f32": "32-bit floats: the merged weights exactly, 4 bytes a weight",
    "f16": "16-bit floats: half of f32, answers as the checkpoint's",
    "bf16": "bfloat16: f16's size with f32's range, less precision",
}
# Written by llama.cpp's quantizer (what its llama-quantize tool runs) from the f16 file, as llama.cpp's README does.
QUANTIZER_TYPES = {
    "q8_0": "8-bit blocks with one scale per 32 weights: about half of f16, answers within a few tokens",
    "q6_k": "6-bit k-quant: smaller again, more answers drift",
    "q5_k_m": "5-bit k-quant mix",
    "q4_k_m": "4-bit k-quant mix, Ollama's usual pick for big models: smallest, most drift",
}
GGUF_TYPES = {**CONVERTER_TYPES, **QUANTIZER_TYPES}
LLAMA_CPP_PACKAGE = "llama-cpp-python"
# The install command a missing llama.cpp is met with (the file pins the version).
INSTALL_HINT = (
    'run `make setup`, or CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF" pip install --no-cache-dir -r '
    "requirements-export.txt (it builds llama.cpp from source: several minutes on 2 cores)"
)
# QLoRA's NormalFloat4 levels (Dettmers et al. 2023; bitsandbytes' NF4 code) and its block size.
NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip
NF4_BLOCK = 64


class ExportError(ValueError):
    """An export that cannot be done as asked; it leaves no export folder behind, and an earlier one as it was."""


@dataclass
class ExportPlan:
    run_dir: Path
    run_config: dict
    types: tuple[str, ...]
    folder: Path  # <run>/export, published at the end
    staging: Path  # where everything is written until then
    notes: list[str] = field(default_factory=list)  # what the student should know about this export

    @property
    def name(self) -> str:
        return self.run_config.get("run_name", self.run_dir.name)

    def gguf(self, outtype: str) -> Path:
        return self.staging / f"{self.name}-{outtype}.gguf"


def llama_cpp_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(LLAMA_CPP_PACKAGE)
    except PackageNotFoundError:
        raise ExportError(f"llama.cpp's Python package is not installed; {INSTALL_HINT}") from None


def plan_export(run_dir: str | Path, types=("f16", "q8_0"), overwrite: bool = False) -> ExportPlan:
    """Check everything an export needs (run folder, weights, types, llama.cpp) before any model loads."""
    run_dir = Path(run_dir)
    run_config = read_run_config(run_dir)
    unknown = [t for t in types if t not in GGUF_TYPES]
    if unknown or not types:
        raise ExportError(
            f"unknown GGUF type {', '.join(unknown) or '(none given)'}; choose from "
            + "; ".join(f"{k} ({v})" for k, v in GGUF_TYPES.items())
        )
    types = tuple(sorted(set(types), key=list(GGUF_TYPES).index))  # f16 before the types quantized from it
    check_run_files(run_dir, run_config)
    method, notes = run_config.get("method"), []
    if method == "full":
        notes.append("full fine-tuning saved the whole model: there is no adapter to merge, it is converted as it is")
    if method == "qlora":
        notes.append(
            "QLoRA run: its adapter learned on the 4-bit NF4 base, so it is merged onto that base de-quantized "
            "(every linear weight rounded to NF4 levels, one scale per 64 weights), not onto the original weights; "
            "the scales are kept in full precision (QLoRA also stores them in 8 bits)"
        )
    folder = run_dir / EXPORT
    if folder.exists() and not overwrite:
        raise ExportError(
            f"{folder} already exists; pass --overwrite (OVERWRITE = True in export_model.ipynb) to replace it (the "
            "old export is kept until the new one is complete), or move it away first"
        )
    llama_cpp_version()
    check_writable(run_dir)  # a read-only run folder stops here, before any model loads
    clean_stale_staging(run_dir)
    return ExportPlan(run_dir, run_config, types, folder, staging_for(folder), notes)


# ---------------------------------------------------------------- merging


def round_to_nf4(weight):
    """The weight as QLoRA's 4-bit base holds it: each block of 64 values scaled by its largest magnitude and
    rounded to the nearest NF4 level, then scaled back."""
    import torch

    levels = torch.tensor(NF4_LEVELS, dtype=torch.float32)
    flat = weight.detach().float().reshape(-1)
    pad = (-flat.numel()) % NF4_BLOCK
    blocks = torch.nn.functional.pad(flat, (0, pad)).reshape(-1, NF4_BLOCK)
    scale = blocks.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    nearest = torch.bucketize(blocks / scale, (levels[1:] + levels[:-1]) / 2)  # the midpoints between levels
    rounded = (levels[nearest] * scale).reshape(-1)[: flat.numel()]
    return rounded.reshape(weight.shape).to(weight.dtype)


def base_as_trained(model, method: str) -> None:
    """For a QLoRA run, round the base's linear weights to NF4 in place (lm_head excepted, as in bitsandbytes):
    the base its adapter saw."""
    if method != "qlora":
        return
    import torch

    with torch.no_grad():
        for name, module in model.named_modules():
            # the frozen base layers; LoRA's own lora_A / lora_B are nn.Linear too and stay as trained
            if type(module) is torch.nn.Linear and "lora_" not in name and "lm_head" not in name:
                module.weight.copy_(round_to_nf4(module.weight))


def merge_and_save(model, tokenizer, plan: ExportPlan):
    """Fold the adapter into the base weights (W + B @ A * alpha / r) and save a plain transformers folder."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(plan.staging / "merged")
    tokenizer.save_pretrained(plan.staging / "merged")  # the chat template and end-of-turn token go along
    as_byte_level_bpe(plan.staging / "merged" / "tokenizer.json")
    with_sentencepiece_model(plan.staging / "merged", plan.run_config["model"])
    return model


def with_sentencepiece_model(merged: Path, base: str) -> None:
    """A SentencePiece vocabulary (Llama's, TinyLlama's) reaches llama.cpp with its scores only from tokenizer.model:
    from tokenizer.json alone its converter gives every piece the same placeholder score, and llama.cpp then splits
    words differently ("Python" as "Py", "th", "on"). transformers saves tokenizer.json only, so the base model's
    tokenizer.model goes beside it (the lab adds no tokens to a vocabulary)."""
    from finetune_lab.models import resolve_model

    base_model = Path(resolve_model(base, with_tokenizer=False)) / "tokenizer.model"
    if base_model.is_file() and not (merged / "tokenizer.model").exists():
        shutil.copy(base_model, merged)


def as_byte_level_bpe(tokenizer_json: Path) -> None:
    """transformers' GGUF reader rebuilt SmolLM2's byte-level BPE tokenizer with SentencePiece-style settings
    (byte fallback, a decoder that turns "▁" into spaces). On a byte-level vocabulary they never act, so
    transformers tokenizes and decodes as SmolLM2 does, but llama.cpp's converter reads them as a SentencePiece
    vocabulary and llama.cpp would then split text differently. Written back as the byte-level BPE it is."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    if getattr(tokenizer.model, "byte_fallback", False) and isinstance(
        tokenizer.pre_tokenizer, pre_tokenizers.ByteLevel
    ):
        tokenizer.model.byte_fallback = False
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.save(str(tokenizer_json))


# ---------------------------------------------------------------- answers, theirs and ours


def open_gguf(path: Path, n_ctx: int = 1024):
    from llama_cpp import Llama

    # verbose=False: llama.cpp otherwise prints every tensor it loads; n_threads: all cores (its default is half)
    return Llama(model_path=str(path), n_ctx=n_ctx, n_threads=os.cpu_count(), verbose=False)


def llama_cpp_answers(llm, prompts: list[list[dict]], max_new_tokens: int) -> list[Answer]:
    """Greedy answers through llama.cpp's chat API, which renders the GGUF's own chat template."""
    answers = []
    for messages in prompts:
        out = llm.create_chat_completion(messages=messages, temperature=0.0, max_tokens=max_new_tokens)
        choice = out["choices"][0]
        answers.append(
            Answer(
                choice["message"]["content"].strip(),
                out["usage"]["completion_tokens"],
                choice["finish_reason"] == "stop",
            )
        )
    return answers


def prompt_difference(llm, tokenizer, messages: list[dict]) -> str | None:
    """Where llama.cpp's prompt (the GGUF's template, rendered as its chat API does, and tokenized by its tokenizer)
    parts from the prompt the lab trained with, in words; None where the two are equal token for token."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        eos_token=llm._model.token_get_text(llm.token_eos()),
        bos_token=llm._model.token_get_text(llm.token_bos()) if llm.token_bos() != -1 else "",
    )
    rendered = formatter(messages=messages)
    if rendered.prompt != tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False):
        return "llama.cpp renders another prompt than the lab's chat template (it did not reach the GGUF)"
    theirs = list(llm.tokenize(rendered.prompt.encode(), add_bos=not rendered.added_special, special=True))
    ours = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    if theirs == ours:
        return None
    at = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), min(len(theirs), len(ours)))
    piece = llm._model.token_get_text(theirs[at]) if at < len(theirs) else "(the end)"
    lab_piece = tokenizer.convert_ids_to_tokens(ours[at]) if at < len(ours) else "(the end)"
    return (
        f"llama.cpp tokenizes the same prompt text differently from the lab's tokenizer: its token {at} is "
        f"{piece!r}, the lab's {lab_piece!r} (after {tokenizer.decode(ours[:at])[-30:]!r})"
    )


def prompt_tokens_match(llm, tokenizer, messages: list[dict]) -> bool:
    return prompt_difference(llm, tokenizer, messages) is None


def first_difference(a: str, b: str, tokenizer) -> int | None:
    """The first token (of the tokenizer's reading of both answers) where they part, None where they are equal."""
    if a == b:
        return None
    x, y = tokenizer(a, add_special_tokens=False)["input_ids"], tokenizer(b, add_special_tokens=False)["input_ids"]
    return next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))


# ---------------------------------------------------------------- files


def converter_script() -> Path:
    """convert_hf_to_gguf.py (with its conversion/ and gguf-py/ beside it) from the PyPI source release of the
    installed llama-cpp-python, downloaded once and cached in FINETUNE_LAB_CACHE."""
    version = llama_cpp_version()
    root = cache_dir() / f"llama.cpp-converter-{version}"
    if not (root / "convert_hf_to_gguf.py").exists():
        sdist = pypi_file(f"{LLAMA_CPP_PACKAGE}=={version}", f"llama_cpp_python-{version}.tar.gz", source=True)
        prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
        wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/", "LICENSE")
        with tarfile.open(sdist) as tar, staged(root, replace=False) as staging:
            members = [m for m in tar.getmembers() if m.name.startswith(tuple(prefix + w for w in wanted))]
            for member in members:
                member.name = member.name.removeprefix(prefix)
            tar.extractall(staging, members=members, filter="data")
    return root / "convert_hf_to_gguf.py"


def converter_command(merged: Path, out_file: Path, outtype: str) -> list[str]:
    return [sys.executable, str(converter_script()), str(merged), "--outtype", outtype, "--outfile", str(out_file)]


def convert_to_gguf(merged: Path, out_file: Path, outtype: str) -> str:
    """Run llama.cpp's converter on a merged model folder and return its command line; its own error, shortened, if
    it fails."""
    command = converter_command(merged, out_file, outtype)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode or not out_file.exists():
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
        raise ExportError(f"llama.cpp's converter failed on {merged} ({outtype}):\n{tail}")
    return " ".join(command)


def quantize_gguf(f16_file: Path, out_file: Path, outtype: str) -> str:
    """llama.cpp's quantizer (llama_model_quantize, as its llama-quantize tool) from an f16 GGUF; the call, to show."""
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{outtype.upper()}")
    params.nthread = os.cpu_count()
    with suppress_stdout_stderr(disable=False):  # it reports every tensor it writes
        failed = llama_cpp.llama_model_quantize(str(f16_file).encode(), str(out_file).encode(), params)
    if failed or not out_file.exists():
        raise ExportError(f"llama.cpp's quantizer could not write {outtype} from {f16_file} (code {failed})")
    return f"llama_cpp.llama_model_quantize({f16_file.name}, {out_file.name}, {outtype})"


def write_gguf(plan: ExportPlan, outtype: str) -> list[str]:
    """Write the GGUF of one type into the staging folder; the command lines that did it, to show."""
    merged = plan.staging / "merged"
    if outtype in CONVERTER_TYPES:
        return [convert_to_gguf(merged, plan.gguf(outtype), outtype)]
    f16, steps = plan.gguf("f16"), []
    if not f16.exists():  # made for the quantizer, removed unless f16 was asked for too
        steps.append(convert_to_gguf(merged, f16, "f16"))
    steps.append(quantize_gguf(f16, plan.gguf(outtype), outtype))
    if "f16" not in plan.types:
        f16.unlink()
    return steps


def modelfile(tokenizer, gguf_name: str, system_prompt: str | None) -> str:
    """An Ollama Modelfile whose TEMPLATE is the tokenizer's chat template for one system and one user turn
    (rendered with stand-ins, then the stand-ins swapped for Ollama's variables), stopping at end-of-turn."""
    system, user = "\x00SYSTEM\x00", "\x00PROMPT\x00"
    rendered = tokenizer.apply_chat_template(
        [{"role": "system", "content": system}, {"role": "user", "content": user}],
        add_generation_prompt=True,
        tokenize=False,
    )
    template = rendered.replace(system, "{{ .System }}").replace(user, "{{ .Prompt }}")
    lines = [
        "# Ollama: `ollama create <name> -f Modelfile` in this folder, then `ollama run <name>`.",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{template}"""',
    ]
    if system_prompt:
        lines.append(f'SYSTEM """{system_prompt}"""')
    lines += [
        f'PARAMETER stop "{tokenizer.eos_token}"',
        "# greedy, as the lab and its parity table answer",
        "PARAMETER temperature 0",
    ]
    return "\n".join(lines) + "\n"


def size_mb(path: Path) -> float:
    files = path.rglob("*") if path.is_dir() else [path]
    return sum(p.stat().st_size for p in files if p.is_file()) / 1e6


REFERENCE = "checkpoint (transformers)"
MERGED = "merged (transformers)"


def gguf_label(outtype: str) -> str:
    return f"{outtype} GGUF (llama.cpp)"


def parity_report(plan: ExportPlan, prompts, references, answers: dict[str, list[Answer]], tokenizer) -> dict:
    """Per prompt and per model: the answer, whether it equals the checkpoint's, where it parts from it, whether
    it stopped at end-of-turn, and its accuracy (modules/05's scoring); per file its size and totals."""
    from finetune_lab.evaluation import DEFAULT_API, load_api, score

    api = load_api(DEFAULT_API)
    files = {REFERENCE: None, MERGED: plan.staging / "merged", **{gguf_label(t): plan.gguf(t) for t in plan.types}}
    rows, totals = [], []
    for label, found in answers.items():
        correct = same = 0
        for i, answer in enumerate(found):
            accuracy = score(answer.text, references[i], api, prompts[i][-1]["content"])["accuracy"]
            parted = first_difference(answers[REFERENCE][i].text, answer.text, tokenizer)
            rows.append(
                {
                    "prompt": i + 1,
                    "model": label,
                    "answer": answer.text,
                    "tokens": answer.tokens,
                    "stopped": answer.stopped,
                    "same_as_checkpoint": parted is None,
                    "first_difference_token": parted,
                    "accuracy": accuracy,
                }
            )
            correct, same = correct + accuracy, same + (parted is None)
        path = files.get(label)
        totals.append(
            {
                "model": label,
                "file": str(path.relative_to(plan.staging)) if path else "(the run folder)",
                "mb": round(size_mb(path), 1) if path else None,
                "same": same,
                "prompts": len(found),
                "accuracy": correct / len(found),
            }
        )
    return {"prompts": len(prompts), "files": totals, "rows": rows, "notes": plan.notes}


def parity_markdown(report: dict, prompts) -> str:
    labels = list(dict.fromkeys(r["model"] for r in report["rows"]))
    lines = [
        "| # | prompt | " + " | ".join(labels) + " |",
        "| ---: | --- |" + " --- |" * len(labels),
    ]
    by = {(r["prompt"], r["model"]): r for r in report["rows"]}
    for i, messages in enumerate(prompts, start=1):
        cells = []
        for label in labels:
            r = by[(i, label)]
            mark = "correct" if r["accuracy"] else "wrong"
            stop = "stopped" if r["stopped"] else "cut at the cap"
            if label == REFERENCE:
                cells.append(f"{r['tokens']} tokens, {stop}, {mark}")
            elif r["same_as_checkpoint"]:
                cells.append(f"same, {mark}")
            else:
                cells.append(f"differs from token {r['first_difference_token']}, {stop}, {mark}")
        prompt = messages[-1]["content"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {i} | {prompt[:60]} | " + " | ".join(cells) + " |")
    totals = ["| | **same as the checkpoint / correct** |"]
    for label in labels:
        rows = [r for r in report["rows"] if r["model"] == label]
        same = sum(r["same_as_checkpoint"] for r in rows)
        totals.append(f" {same}/{len(rows)} / {sum(r['accuracy'] for r in rows):.0f} |")
    lines.append("".join(totals))
    differing = [r for r in report["rows"] if not r["same_as_checkpoint"]]
    if differing:
        lines += ["", "Answers that differ from the checkpoint's:", ""]
        for r in differing:
            peft = by[(r["prompt"], REFERENCE)]["answer"]
            lines += [
                f"- prompt {r['prompt']}, {r['model']}:",
                f"  - checkpoint: `{peft!r}`",
                f"  - this: `{r['answer']!r}`",
            ]
    notes = "".join(f"\n- {note}" for note in report["notes"])
    return "\n".join(lines) + ("\n\nNotes:" + notes if notes else "") + "\n"


def finish_export(plan: ExportPlan, report: dict, prompts, modelfile_text: str) -> Path:
    """Write the parity table and Modelfile, publish the export folder, rewrite the run's model card."""
    from finetune_lab.model_card import write_model_card

    (plan.staging / "parity.json").write_text(json.dumps(report, indent=1))
    (plan.staging / "parity.md").write_text(parity_markdown(report, prompts))
    (plan.staging / "Modelfile").write_text(modelfile_text)
    with run_lock(RunPaths.of(plan.run_dir.parent, plan.run_dir.name)):  # the export script holds it throughout
        publish(plan.staging, plan.folder)
        write_model_card(plan.run_dir)
    return plan.folder


def abandon(plan: ExportPlan) -> None:
    """An export that stopped half-way leaves nothing: its staging folder goes, an older export stays."""
    shutil.rmtree(plan.staging, ignore_errors=True)
