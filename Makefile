# Plain entry points. `make test` and `make demo` work on a fresh machine with Python >= 3.10.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel; override for a GPU machine, e.g. TORCH_SPEC="torch==2.13.0 --index-url ...".
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup test demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

# torch first, so the package's `torch>=...` requirement is already satisfied by the CPU wheel.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install $(TORCH_SPEC)
	$(BIN)/python -m pip install -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

# SC-SDPO on the embedded default (tiny pretrained Qwen3 + arithmetic), CPU, ~10 minutes.
demo: setup
	$(BIN)/lit-scsdpo fit --config configs/tiny/scsdpo.yaml

clean:
	rm -rf $(VENV) lightning_logs .pytest_cache
