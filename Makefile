# `make run`: set up .venv and train the embedded default (S5 on digits).
# `make test`: set up .venv, lint, and run the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned so pip takes the CPU wheel where one is provided locally; on a GPU machine
# PyPI serves the CUDA build of the same version.
TORCH ?= torch==2.13.0

.PHONY: setup run test lint bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH) -e '.[test]'
	touch $@

run: setup
	$(PY) train.py

lint: setup
	$(PY) -m ruff check ssmlit train.py tests benchmarks

test: lint
	$(PY) -m pytest -q -n 2 --durations=15

bench: setup
	$(PY) benchmarks/layer_speed.py --quick
