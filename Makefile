# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test

.PHONY: demo test lint format bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(STAMP_TEST): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@ $(STAMP_RUN)

demo: $(STAMP_RUN)
	$(BIN)/funcnet train --dataset digits --out runs/demo --overwrite

bench: $(STAMP_RUN)
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/funcnet bench

lint: $(STAMP_TEST)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

# A thousand generated architectures, each checked end to end (tests/soak.py); any failure
# is printed with its architecture and the command that rebuilds it alone, and the run exits
# non-zero. SOAK_COUNT=50 for a short run. XLA's compilation dominates the time on tiny
# shapes; its cheaper passes halve it.
SOAK_COUNT ?= 1000
SOAK_SEED ?= 0
SOAK_START ?= 0
SOAK_XLA_FLAGS ?= --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true
soak: $(STAMP_TEST)
	XLA_FLAGS="$(SOAK_XLA_FLAGS)" $(BIN)/python tests/soak.py --count $(SOAK_COUNT) --seed $(SOAK_SEED) --start $(SOAK_START)

format: $(STAMP_TEST)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
