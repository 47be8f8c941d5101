# Two entry points: `make demo` (set up + run the main workflow) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_CPU ?= torch==2.13.0

.PHONY: setup demo test bench clean

$(BIN)/sciformer: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# Install a CPU build of torch first when none is present, so the plain `torch`
	# requirement does not pull a multi-GB CUDA build. A newer torch already there is kept.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH_CPU)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(BIN)/sciformer

demo: setup
	$(BIN)/sciformer run workflows/protein-masked.yaml

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) runs
