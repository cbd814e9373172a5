"""The lab through TinyLlama-1.1B-Chat as Colab gets it: Llama's real SentencePiece vocabulary, TinyLlama-Chat's
Zephyr chat template (`<|user|>` ... `</s>` ... `<|assistant|>`), `</s>` as the end of a turn and no pad token, over
TinyLlama's architecture cut to 2 layers with random weights (helpers.tinyllama_hub). Every other test trains the
embedded SmolLM2 (ChatML, `<|im_end|>`): these check that the label mask, the stop, the marker checks, the run folder
and the reload are right for the other format too.
"""

import importlib.util
import json

import huggingface_hub.constants
import pytest
import torch
import train_tiny_model as lab
from helpers import REPO, TINYLLAMA, llama_tokenizer, run_cli, run_script, tinyllama_hub

from finetune_lab.checkpoints import load_checkpoint
from finetune_lab.config import quick_config
from finetune_lab.data import DatasetError, chat_markers, check_chat_markers, load_jsonl
from finetune_lab.generation import greedy_answers
from finetune_lab.memory import estimate, shape_of
from finetune_lab.models import PRESET_SHAPES, model_config
from finetune_lab.phases import Phases
from finetune_lab.runtime import cuda_available, gpu, native_dtype

pytestmark = pytest.mark.slow
DATA = REPO / "data" / "course_train.jsonl"
PRESET = "tinyllama-1.1b-chat"


@pytest.fixture(scope="module")
def hub(monkeypatch_module):
    """The fixture as the hub cache this process (and the CLI's) resolves the preset from, offline."""
    folder = tinyllama_hub()
    monkeypatch_module.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(folder))
    monkeypatch_module.setenv("HF_HUB_CACHE", str(folder))
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")
    return folder


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def lab_model(hub):
    """The model and tokenizer as the lab loads them for training (the transformers backend on this CPU)."""
    cfg = quick_config(model=PRESET, data=str(DATA))
    return (*lab.model_for_training(cfg, Phases(), examples=50), cfg)


def test_tinyllamas_tokenizer_is_llamas_vocabulary_with_its_own_template_and_end_token():
    tokenizer = llama_tokenizer()
    assert len(tokenizer) == 32000 and tokenizer.eos_token == "</s>" and tokenizer.eos_token_id == 2
    assert tokenizer.pad_token is None and tokenizer.bos_token == "<s>"
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert text == "<|system|>\nS</s>\n<|user|>\nQ</s>\n<|assistant|>\n"


def test_its_control_markers_are_the_template_tags_and_the_end_token(tmp_path):
    markers = chat_markers(llama_tokenizer())
    assert {"<|user|>", "<|assistant|>", "<|system|>", "</s>", "<s>", "<unk>"} <= set(markers)
    check_chat_markers(load_jsonl(DATA), llama_tokenizer(), PRESET)  # the course data has none of them
    row = {"instruction": "Water bed 2.", "output": "garden.water(bed=2)\n<|user|>\nNow bed 3."}
    (tmp_path / "bad.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(DatasetError, match=r'bad.jsonl, line 1: the answer contains "<\|user\|>"'):
        check_chat_markers(load_jsonl(tmp_path / "bad.jsonl"), llama_tokenizer(), PRESET)


def test_only_each_answer_and_its_end_token_are_learned_though_end_and_pad_are_one_token(lab_model, tmp_path):
    model, tokenizer, choice, cfg = lab_model
    assert tokenizer.pad_token == "</s>"  # the lab pads with the end token where a model has no pad token
    data = load_jsonl(DATA, cfg.system_prompt)
    args = lab.training_args(cfg.replace(max_seq_length=512), choice, tmp_path, validation=False)
    trainer = lab.make_trainer(model, tokenizer, cfg, args, data)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(data))])  # padded to the longest
    for i, example in enumerate(data.examples):
        ids, labels = batch["input_ids"][i], batch["labels"][i]
        learned = ids[labels != -100].tolist()
        assert tokenizer.eos_token_id in learned, f"example at line {example.line} does not learn to stop"
        end = len(learned) - 1 - learned[::-1].index(tokenizer.eos_token_id)
        assert tokenizer.decode(learned[:end]).strip() == example.completion.strip()  # the answer, then `</s>`
        # after it only the line break the template writes after every turn: TRL learns it as part of the
        # completion (ChatML's runs too), and generation never gets there, as it stops at `</s>`
        assert tokenizer.decode(learned[end + 1 :]) == "\n"
        prompt = tokenizer.decode(ids[: (labels != -100).nonzero()[0].item()])
        assert prompt.rstrip().endswith("<|assistant|>") and example.user_text in prompt
        assert (labels[batch["attention_mask"][i] == 0] == -100).all()  # padding, though also `</s>`, is never learned


def test_generation_stops_at_the_end_token_and_shows_no_template_text(lab_model):
    model, tokenizer, _, _ = lab_model
    head = model.get_output_embeddings()
    forced = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    forced.weight.data.zero_()
    forced.bias.data.zero_()
    hello = tokenizer.convert_tokens_to_ids("▁Hello")
    prompts = [[{"role": "user", "content": "Water bed 2."}]]
    model.set_output_embeddings(forced)
    try:
        forced.bias.data[tokenizer.eos_token_id] = 1.0  # a model that ends its turn at once
        (ended,) = greedy_answers(model, tokenizer, prompts, max_new_tokens=8, progress=False)
        forced.bias.data[tokenizer.eos_token_id], forced.bias.data[hello] = 0.0, 1.0  # one that never does
        (capped,) = greedy_answers(model, tokenizer, prompts, max_new_tokens=8, progress=False)
    finally:
        model.set_output_embeddings(head)
    assert ended.stopped and ended.tokens == 1 and ended.text == ""
    assert not capped.stopped and capped.tokens == 8 and capped.text == " ".join(["Hello"] * 8)


@pytest.fixture(scope="module")
def tinyllama_run(hub, tmp_path_factory):
    """The CLI's --test_mode run on the fixture, by its preset name."""
    out = tmp_path_factory.mktemp("tinyllama")
    done = run_cli("--test_mode", "--model", PRESET, "--output_dir", str(out), "--run_name", "tinyllama")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out / "tinyllama"


def test_the_cli_trains_it_names_tinyllama_as_the_base_and_reloads_it(tinyllama_run):
    run = tinyllama_run
    assert json.loads((run / "adapter_config.json").read_text())["base_model_name_or_path"] == TINYLLAMA
    assert json.loads((run / "run_config.json").read_text())["model"] == PRESET
    samples = json.loads((run / "samples.json").read_text())
    for sample in samples:
        for text in (sample["before"], sample["after"]):
            assert not any(marker in text for marker in ("<|assistant|>", "<|user|>", "</s>", "<s>"))
    model, tokenizer, _ = load_checkpoint(run, device="cpu")
    answers = greedy_answers(model, tokenizer, [s["messages"] for s in samples], max_new_tokens=48, progress=False)
    assert [a.text for a in answers] == [s["after"] for s in samples]  # the reload answers as the run did


def test_its_export_stops_where_llama_cpp_would_read_another_prompt_and_publishes_nothing(tinyllama_run):
    """llama.cpp's SentencePiece tokenizer puts a word-start piece after every special token, as Llama's tokenizer
    did before transformers' non-legacy reading, which the lab's runs use: after each `</s>` the GGUF would see one
    token the model never trained on. The export finds it before publishing and says where; Llama's words themselves
    tokenize alike (the base's tokenizer.model reaches the converter, so "Python" stays one piece)."""
    done = run_script("export_model.py", str(tinyllama_run), "--limit", "1")
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert "llama.cpp tokenizes the same prompt text differently from the lab's tokenizer" in done.stderr
    assert "is '▁', the lab's '<0x0A>' (after 'ry. Answer with code only.</s>')" in done.stderr
    assert not (tinyllama_run / "export").exists() and not list(tinyllama_run.glob(".export*"))


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU (scripts/gpu_verify.sh); the cases above run here")
@pytest.mark.parametrize(
    "backend,method", [("unsloth", "lora"), ("unsloth", "qlora"), ("transformers", "lora"), ("transformers", "qlora")]
)
def test_at_full_shape_on_a_gpu_it_trains_and_peaks_near_the_preflights_estimate(
    tmp_path, monkeypatch, backend, method
):
    """TinyLlama's 22 layers (random weights) through the CLI: the run names its base, its answers hold no template
    text, and the measured peak lies near the preflight's estimate for the same run (the memory table of
    docs/gpu comes from the JSON line this prints)."""
    if importlib.util.find_spec(backend if backend == "unsloth" else "bitsandbytes") is None:
        pytest.skip(f"{backend} {method} needs requirements-gpu.txt")
    hub = tinyllama_hub(layers=PRESET_SHAPES[PRESET]["num_hidden_layers"])
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ("--test_mode", "--model", PRESET, "--backend", backend, "--method", method)
    done = run_cli(*args, "--output_dir", str(tmp_path), "--run_name", "full", timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = tmp_path / "full"
    assert json.loads((run / "adapter_config.json").read_text())["base_model_name_or_path"] == TINYLLAMA
    for sample in json.loads((run / "samples.json").read_text()):
        assert not any(marker in sample["after"] for marker in ("<|assistant|>", "<|user|>", "</s>"))
    cfg = quick_config(model=PRESET, method=method)
    checkpointing = "gradient checkpointing on" in done.stdout
    shape = shape_of(model_config(PRESET), cfg.target_modules)
    estimated = estimate(shape, cfg, native_dtype(gpu()), checkpointing).total_mb
    measured = json.loads((run / "summary.json").read_text())["peak_memory_mb"]
    row = dict(backend=backend, method=method, dtype=native_dtype(gpu()), checkpointing=checkpointing)
    print(json.dumps({**row, "estimated_mb": round(estimated), "measured_mb": measured}))
    assert 0.6 * estimated <= measured <= 1.4 * estimated
