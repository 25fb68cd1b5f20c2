# Two commands set everything up on a fresh machine:
#   make demo   create .venv, install, run the whole chain on the embedded sample (CPU, minutes)
#   make test   create .venv if missing, install the dev extras (and Go), check the code (make lint), run the tests
#   make lint   ruff format --check and ruff check (settings in pyproject.toml); `ruff format .` fixes the format
# GPU users: install the torch build for your CUDA into .venv first (see README); it is kept.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Used only when .venv has no torch yet. On a CPU machine without a local build, use the CPU index:
#   make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0

.PHONY: install demo lint test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# llama-cpp-python (GGUF export) builds llama.cpp from source, minutes on 2 cores, once: pip keeps the wheel
# in its cache (~/.cache/pip). Its multimodal library is not needed. CUDA: LLAMA_CMAKE_ARGS="-DGGML_CUDA=on".
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install $(TORCH)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/python -m pip install -e ".[dev]"
	touch $@

# Ollama's templates are Go text/template; tests/test_export.py renders them with Go's own engine.
$(VENV)/.go: | $(BIN)/python
	command -v go >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go)
	touch $@

install: $(VENV)/.installed

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

test: install lint $(VENV)/.go
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

clean:
	rm -rf runs/demo
