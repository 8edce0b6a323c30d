# The two commands of the README: `make mnist` (set up, then train, evaluate and report the
# default MNIST model) and `make test` (set up, then run the test suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MIRROR := $(abspath ../shared/data)
export IMREC_DATA_MIRROR ?= $(if $(wildcard $(MIRROR)),$(MIRROR),)

.PHONY: setup mnist test lint bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	bash scripts/setup-venv.sh $(VENV)
	touch $@

mnist: setup
	$(VENV)/bin/imrec train mnist

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff format --check src tests benchmarks && $(VENV)/bin/ruff check src tests benchmarks

bench: setup
	$(PY) benchmarks/mnist_vs_seed.py
