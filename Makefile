# Developer entry points. `make demo` and `make test` are the README's two commands; CI runs
# `make test` and `make docs`.
#
#   make venv        create .venv (or reuse it) and install the package + dev tools into it
#   make demo        the end-to-end demo: `scoresde demo` (train on digits, sample, bits/dim,
#                    rate-distortion; writes runs/demo-<timestamp>/report.md)
#   make test        default test suite (excludes @pytest.mark.slow), 2 xdist workers
#   make test-slow   only the slow convergence / statistical sweeps
#   make lint        ruff check + ruff format --check + mypy
#   make format      ruff format + ruff check --fix (rewrites files)
#   make docs        build the documentation site into site/ (mkdocs build --strict; installs
#                    the docs extra into the venv first)
#
# Variables (environment or command line):
#   VENV=.venv              virtual environment directory (.ci/run uses a fresh .ci-venv)
#   PYTHON=python3          interpreter used to create the venv (>= 3.10)
#   CONSTRAINTS=constraints.txt   pip constraints (pins torch to the CPU build); set it empty,
#                           `make test CONSTRAINTS=`, to keep a CUDA torch you installed yourself
#   WORKERS=2               pytest-xdist workers
#   PYTEST_ARGS=            extra pytest arguments, e.g. PYTEST_ARGS="-k vpsde -x"
#   DEMO_ARGS=              extra `scoresde demo` arguments, e.g. DEMO_ARGS="--moons --minutes 1"

SHELL := /bin/bash
.DEFAULT_GOAL := test

VENV ?= .venv
PYTHON ?= python3
CONSTRAINTS ?= constraints.txt
WORKERS ?= 2
PYTEST_ARGS ?=
DEMO_ARGS ?=

BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs
PIP_INSTALL := $(PY) -m pip install $(if $(strip $(CONSTRAINTS)),-c $(CONSTRAINTS))
CONSTRAINTS_DEP := $(if $(strip $(CONSTRAINTS)),$(CONSTRAINTS))

.PHONY: venv demo test test-slow lint format docs clean help

help:
	@awk '/^#/ { sub(/^# ?/, ""); print; next } { exit }' $(firstword $(MAKEFILE_LIST))

venv: $(STAMP)

# Create the venv only when it does not exist; an existing one is reused as is.
$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the package metadata or the constraints change (or the venv is new).
$(STAMP): pyproject.toml $(CONSTRAINTS_DEP) | $(PY)
	$(PIP_INSTALL) -e ".[dev]"
	@touch $@

demo: venv
	$(BIN)/scoresde demo $(DEMO_ARGS)

test: venv
	$(PY) -m pytest -n $(WORKERS) $(PYTEST_ARGS)

test-slow: venv
	$(PY) -m pytest -n $(WORKERS) -m slow $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check scoresde solvers tests examples
	$(BIN)/ruff format --check scoresde solvers tests examples
	$(BIN)/mypy

format: venv
	$(BIN)/ruff format scoresde solvers tests examples
	$(BIN)/ruff check --fix scoresde solvers tests examples

$(DOCS_STAMP): pyproject.toml $(CONSTRAINTS_DEP) $(STAMP)
	$(PIP_INSTALL) -e ".[dev,docs]"
	@touch $@

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf build dist site *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
