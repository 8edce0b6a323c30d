# The two commands of the README: `make mnist` (set up, then train, evaluate and report the
# default MNIST model) and `make test` (set up, then run the test suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MIRROR := $(abspath ../shared/data)
export IMREC_DATA_MIRROR ?= $(if $(wildcard $(MIRROR)),$(MIRROR),)

# The tests run in two pytest-xdist workers that split the cores (tests/conftest.py): on the
# 2-core CI machine about a fifth less wall time than one process. `make test TEST_WORKERS=0`
# runs them in this process.
TEST_WORKERS ?= 2

.PHONY: setup mnist test lint bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	bash scripts/setup-venv.sh $(VENV)
	touch $@

# A new time-stamped run folder each time (runs/mnist-YYYYMMDD-HHMMSS); the bundle goes into it.
mnist: setup
	run=runs/mnist-$$(date +%Y%m%d-%H%M%S) && \
	$(VENV)/bin/imrec train mnist --out $$run && \
	$(VENV)/bin/imrec export $$run

test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=20

# Style (ruff) and architecture: import-linter checks that every import points down the
# layers declared in pyproject.toml and that classify/ and detect/ stay independent.
lint: setup
	$(VENV)/bin/ruff format --check src tests benchmarks scripts && $(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/lint-imports

bench: setup
	$(PY) benchmarks/mnist_vs_seed.py
