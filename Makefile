# Two entry points: `make demo` (set up + run the main workflow) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_CPU ?= torch==2.13.0

.PHONY: setup setup-test demo test bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Install a CPU build of torch first when none is present, so the plain `torch` requirement
# does not pull a multi-GB CUDA build. A torch already there (say, a CUDA build) is kept.
$(VENV)/.torch: | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH_CPU)
	touch $@

$(VENV)/.run: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.run

setup-test: $(VENV)/.test

demo: setup
	$(BIN)/sciformer run workflows/protein-masked.yaml

test: setup-test
	$(BIN)/python -m pytest

bench: setup-test
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) runs
