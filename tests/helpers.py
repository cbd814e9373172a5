"""Helpers the tests share: the repository's paths, a JSONL writer and the CLI in its own process.

Nothing here is mocked: run_cli runs the lab's own script.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAB = REPO / "labs" / "unsloth_finetune"


def write_jsonl(path: Path, rows, raw: bool = False) -> Path:
    """rows: dicts (dumped as JSON) or, with raw=True, literal lines."""
    lines = rows if raw else [json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


CLI = [sys.executable, str(LAB / "train_tiny_model.py")]


def cli_env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def start_cli(*args: str) -> subprocess.Popen:
    """The CLI started in its own process, its output piped, for tests that act while it runs."""
    return subprocess.Popen(
        [*CLI, *args], cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def run_cli(*args: str, cwd: Path = REPO, timeout: int = 900) -> subprocess.CompletedProcess:
    """The CLI in its own process; one that runs past `timeout` comes back with exit code 124 and what it printed."""
    command = [*CLI, *args]
    try:
        return subprocess.run(command, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as late:

        def text(out):
            return out.decode(errors="replace") if isinstance(out, bytes) else out or ""

        return subprocess.CompletedProcess(command, 124, text(late.stdout), text(late.stderr))


def run_script(script: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Another script of the lab (evaluate_model.py, export_model.py) in its own process, from the repository root."""
    command = [sys.executable, str(LAB / script), *args]
    return subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=timeout)


MARKER = "# NBVAL_CHECK_OUTPUT"
TRAIN_NOTEBOOK = LAB / "train_model.ipynb"


def checked_output(path: Path, start: str) -> str:
    """The committed output of a notebook's checked cell (nbval re-runs it) whose code starts with `start`."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(f"{MARKER}\n{start}")]
    assert len(cells) == 1, f"{path.name}: one checked cell starting with {start!r}"
    return "".join(o.get("text", "") for o in cells[0].outputs)


# TinyLlama-1.1B-Chat-v1.0's chat template as its tokenizer_config.json on the hub publishes it: the Zephyr format of
# the alignment handbook, which TinyLlama-Chat was tuned with (HuggingFaceH4/zephyr-7b-beta publishes the same text).
TINYLLAMA_CHAT_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
TINYLLAMA = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
LLAMA_VOCAB = "vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf"


def llama_tokenizer_folder() -> Path:
    """Llama's 32,000-piece SentencePiece vocabulary as TinyLlama-Chat ships it (tokenizer.model, with its
    tokenizer_config.json: its chat template, `</s>` as the end token, no pad token), built from the GGUF vocabulary
    file llama.cpp keeps for its tokenizer tests (in llama-cpp-python's source release, which the export downloads
    from PyPI): its pieces, scores and types are SentencePiece's own. Read with legacy=False, transformers' current
    reading of a Llama vocabulary, which a run saved by the lab gets in any case (transformers 5 does not save the
    flag and reads a saved tokenizer that way). Built once and cached."""
    from finetune_lab.runtime import cache_dir

    folder = cache_dir() / "fixtures" / "tinyllama-chat-tokenizer"
    if (folder / "tokenizer.model").exists():
        return folder
    import tarfile
    from importlib.metadata import version

    from gguf import GGUFReader
    from sentencepiece import sentencepiece_model_pb2 as sp

    from finetune_lab.checkpoints import staged
    from finetune_lab.embedded import pypi_file

    release = f"llama_cpp_python-{version('llama-cpp-python')}"
    sdist = pypi_file(f"llama-cpp-python=={version('llama-cpp-python')}", f"{release}.tar.gz", source=True)
    with staged(folder, replace=False) as staging:
        with tarfile.open(sdist) as tar:
            (staging / "vocab.gguf").write_bytes(tar.extractfile(f"{release}/{LLAMA_VOCAB}").read())
        fields = GGUFReader(staging / "vocab.gguf").fields

        def values(key):
            return [fields[key].parts[i] for i in fields[key].data]

        model = sp.ModelProto()
        model.trainer_spec.model_type, model.trainer_spec.byte_fallback = sp.TrainerSpec.BPE, True
        model.trainer_spec.unk_id, model.trainer_spec.bos_id, model.trainer_spec.eos_id = 0, 1, 2
        model.trainer_spec.pad_id = -1
        model.normalizer_spec.name, model.normalizer_spec.add_dummy_prefix = "identity", True
        model.normalizer_spec.remove_extra_whitespaces = False
        scores, types = values("tokenizer.ggml.scores"), values("tokenizer.ggml.token_type")
        for piece, score, kind in zip(values("tokenizer.ggml.tokens"), scores, types):
            model.pieces.add(piece=bytes(piece).decode(), score=float(score[0]), type=int(kind[0]))
        (staging / "tokenizer.model").write_bytes(model.SerializeToString())
        (staging / "vocab.gguf").unlink()
        config = dict(tokenizer_class="LlamaTokenizer", bos_token="<s>", eos_token="</s>", unk_token="<unk>")
        config.update(add_bos_token=True, legacy=False, chat_template=TINYLLAMA_CHAT_TEMPLATE)
        (staging / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    return folder


def llama_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(llama_tokenizer_folder())


def tinyllama_hub(layers: int = 2) -> Path:
    """TinyLlama-1.1B-Chat as a Colab user downloads it, offline: llama_tokenizer() over TinyLlama's architecture cut
    to `layers` layers, random weights, saved as a hub snapshot of TinyLlama/TinyLlama-1.1B-Chat-v1.0 in the hub
    cache folder returned. With HF_HUB_CACHE set to it the lab's preset tinyllama-1.1b-chat resolves to it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from finetune_lab.checkpoints import staged
    from finetune_lab.models import PRESET_SHAPES
    from finetune_lab.runtime import cache_dir

    hub = cache_dir() / "fixtures" / f"hub-tinyllama-{layers}-layers"
    repo = hub / f"models--{TINYLLAMA.replace('/', '--')}"
    if not (repo / "refs" / "main").exists():
        values = {**PRESET_SHAPES["tinyllama-1.1b-chat"], "num_hidden_layers": layers}
        config = AutoConfig.for_model(values.pop("model_type"), bos_token_id=1, eos_token_id=2, **values)
        with staged(repo, replace=False) as staging:
            snapshot = staging / "snapshots" / "fixture"
            torch.manual_seed(0)
            AutoModelForCausalLM.from_config(config).save_pretrained(snapshot)
            llama_tokenizer().save_pretrained(snapshot)  # tokenizer.json and its config, as the hub has them
            shutil.copy(llama_tokenizer_folder() / "tokenizer.model", snapshot)
            (staging / "refs").mkdir()
            (staging / "refs" / "main").write_text("fixture")
    return hub
