# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test

.PHONY: demo test test-min lint format bench soak sweep clean

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

# `make test-min`: funcnet at the lowest versions pyproject.toml declares (jax, jaxlib, numpy
# and every other runtime floor pinned by pip constraints, tests/floor_requirements.py), in a
# venv of its own, on a subset with a test file or more per module. The PyTorch comparisons
# are left out: torch is a test reference, not a dependency. The whole suite was run at these
# floors when they were set, and what failed there was fixed (README, "Supported versions").
VENV_MIN := .venv-min
FLOOR_TESTS ?= tests/test_checkpoint_versions.py tests/test_checkpoint.py \
	tests/test_checkpoint_sharded.py tests/nn/test_core.py tests/nn/test_conv.py \
	tests/nn/test_norm.py tests/nn/test_recurrent.py tests/nn/test_attention.py \
	tests/nn/test_remat.py tests/optim/test_optim_alias.py tests/optim/test_optim_transforms.py \
	tests/diff/test_diff_jacobian.py tests/diff/test_diff_per_example.py \
	tests/diff/test_diff_spectrum.py tests/train/test_train_fit.py \
	tests/train/test_train_resume.py tests/train/test_train_data_parallel.py \
	tests/train/test_partition.py tests/test_data.py tests/test_cli.py
$(VENV_MIN)/.installed: pyproject.toml tests/floor_requirements.py
	$(PYTHON) -m venv $(VENV_MIN)
	$(VENV_MIN)/bin/pip install --quiet --upgrade pip
	$(PYTHON) tests/floor_requirements.py constraints > $(VENV_MIN)/constraints.txt
	$(VENV_MIN)/bin/pip install --quiet -c $(VENV_MIN)/constraints.txt -e . \
		$$($(PYTHON) tests/floor_requirements.py tools)
	touch $@

test-min: $(VENV_MIN)/.installed
	$(VENV_MIN)/bin/python -m pytest $(FLOOR_TESTS)

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

# Every argument of every layer, optimizer, curvature tool and loss given bad values (tests/sweep.py);
# an error raised anywhere but in funcnet's own checks is printed and the run exits non-zero.
sweep: $(STAMP_TEST)
	$(BIN)/python tests/sweep.py

format: $(STAMP_TEST)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(VENV_MIN) .pytest_cache .ruff_cache build *.egg-info
