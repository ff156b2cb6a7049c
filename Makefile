# `make run`: set up .venv, train the embedded default (S5 on digits), then run the compression study
#             on that run (accuracy vs pruning ratio of LAST, AIRE and the baselines; automatic ratio
#             under a 1-point validation budget; compacted checkpoint) into <run>/sweep/.
# `make test`: set up .venv, lint, and run the test suite.
# `make mutate`: mutation testing of ssmlit/pruning/ and ssmlit/models/ with mutmut (slow; not part of
#             `make test` or CI). MUTATE='ssmlit.pruning.*' re-runs the mutants whose names match;
#             JOBS is the number of parallel workers. Then `make mutate-report` (README "Testing").
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned so pip takes the CPU wheel where one is provided locally; on a GPU machine
# PyPI serves the CUDA build of the same version.
TORCH ?= torch==2.13.0

.PHONY: setup run test lint bench mutate mutate-report

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH) -e '.[test]'
	touch $@

# The run directory is fixed here (Hydra's own layout) so that the sweep knows which run to study.
RUN_DIR := outputs/$(shell date +%Y-%m-%d/%H-%M-%S)

run: setup
	$(PY) train.py hydra.run.dir=$(RUN_DIR)
	$(PY) -m ssmlit.sweep ckpt=$(RUN_DIR) select.budget=1.0

lint: setup
	$(PY) -m ruff check ssmlit train.py tests benchmarks

test: lint
	$(PY) -m pytest -q -n 2 --durations=15

bench: setup
	$(PY) benchmarks/layer_speed.py --quick
	$(PY) benchmarks/prune_speed.py --quick
	$(PY) benchmarks/train_speed.py --quick

# Without MUTATE, mutants that already have a result in mutants/ keep it and only the rest run; one
# thread per worker because the workers are forked from a process that has already imported torch.
MUTATE ?=
JOBS ?= 2
$(VENV)/.mutate: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test,mutate]'
	touch $@

mutate: $(VENV)/.mutate
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(VENV)/bin/mutmut run --max-children $(JOBS) $(foreach m,$(MUTATE),'$(m)') > mutants.log 2>&1 \
		|| (tail -c 3000 mutants.log; exit 1)
	$(PY) tests/mutation_report.py

mutate-report: $(VENV)/.mutate
	$(PY) tests/mutation_report.py
