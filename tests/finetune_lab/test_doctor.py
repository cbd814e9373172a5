"""finetune_lab.doctor: the preflight prints what a student needs before the first run, and the fix when the
chosen model and method will not fit."""

import subprocess
import sys

import pytest
from helpers import REPO, tinyllama_hub

from finetune_lab.config import TrainConfig
from finetune_lab.doctor import Preflight
from finetune_lab.memory import estimate, shape_of
from finetune_lab.models import BackendChoice, default_model, model_config
from finetune_lab.runtime import Gpu

T4 = Gpu("Tesla T4", (7, 5), 15360, 14900)


def test_on_this_cpu_the_report_names_versions_device_dtype_model_and_whether_it_fits(base_model_dir):
    done = subprocess.run(
        [sys.executable, "-m", "finetune_lab.doctor"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for expected in (
        "python 3.",
        "torch 2.",
        "transformers 5.17.0",
        "unsloth -",
        "device: cpu",
        "native bf16: n/a (CPU)",
        "dtype: float32",
        "free RAM:",
        "model: smollm2-135m (no CUDA GPU here",
        "method: lora r=16, batch 8 x 256 tokens",
        "estimated peak memory:",
        "4,884,480 trainable parameters",
        "fits: yes",
    ):
        assert expected in out, expected


def test_full_fine_tuning_of_tinyllama_on_a_t4_does_not_fit_and_the_fix_is_adapters():
    cfg = TrainConfig(model="tinyllama-1.1b-chat", method="full")
    shape = shape_of(model_config(cfg.model), cfg.target_modules)
    memory = estimate(shape, cfg, "float16", True)
    report = Preflight(
        cfg, BackendChoice("unsloth", "cuda:0 (Tesla T4)", "float16", "full"), T4, "given", memory, T4.free_mb
    )
    assert report.fits is False
    text = "\n".join(report.lines())
    assert "native bf16: no (fp16 only" in text and "dtype: float16" in text
    assert "fits: NO" in text and 'Fix: train adapters instead: method="lora" or "qlora"' in text
    qlora = Preflight(
        cfg.replace(method="qlora"),
        report.choice,
        T4,
        "given",
        estimate(shape, cfg.replace(method="qlora"), "float16", True),
        T4.free_mb,
    )
    assert qlora.fits is True and "fits: yes" in "\n".join(qlora.lines())


def test_the_notebooks_model_is_tinyllama_on_a_gpu_with_the_hub_and_the_embedded_one_otherwise(monkeypatch, tmp_path):
    import huggingface_hub.constants

    import finetune_lab.models as models

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # read at import: an empty cache
    assert default_model(None)[0] == "smollm2-135m"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, why = default_model(T4)
    assert model == "smollm2-135m" and why.startswith("HF_HUB_OFFLINE is set")
    monkeypatch.setattr(models, "hub_unreachable_reason", lambda: None)
    assert default_model(T4)[0] == "tinyllama-1.1b-chat"


@pytest.mark.slow
def test_offline_a_gpu_trains_tinyllama_when_the_hub_cache_already_holds_it(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tinyllama_hub()))
    model, why = default_model(T4)
    assert model == "tinyllama-1.1b-chat" and "its hub cache" in why
    assert default_model(None)[0] == "smollm2-135m"  # a CPU still gets the model it can train in minutes


def test_an_unknown_model_is_an_error_with_the_presets_not_a_report_of_n_a():
    done = subprocess.run(
        [sys.executable, "-m", "finetune_lab.doctor", "--model", "tinyllama"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 2 and "n/a" not in done.stdout
    assert done.stderr.startswith("error: unknown model preset 'tinyllama'; presets: smollm2-135m, tinyllama-1.1b-chat")
