# Two commands on a fresh clone: `make demo` (the main job) and `make test` (lint + tests).
# Each creates or updates the virtual environment itself.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow test-gpu check-wheel lint format bench clean install-gpu

# torch first, pinned: the CPU wheel of this release is what these machines carry; an unpinned torch
# would pull a multi-GB CUDA build. On a GPU machine: `make install-gpu` adds CUDA faiss.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/wsisum-pipeline experiment=demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest

# the long tests (100k-patch slides, Optuna, DDP evaluation, TransMIL at 100k): CI runs them after `test`
test-slow: $(STAMP)
	$(BIN)/pytest -m slow

# wsisum as users install it: the wheel (built from the sdist, configs inside) in a fresh venv, its apps and
# the README's API example run from outside the clone (scripts/check_wheel.sh; CI runs it after test-slow)
check-wheel: $(STAMP)
	VENV=$(VENV) PYTHON=$(PYTHON) scripts/check_wheel.sh

# the CUDA checks (tests/gpu, marked gpu: skipped without CUDA) and their table of figures; on a GPU
# machine after `make install-gpu`. `scripts/check_gpu.py --out FILE` runs the same and writes the table.
test-gpu: $(STAMP)
	$(BIN)/pytest -m gpu

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python scripts/bench_io.py

# faiss-gpu and faiss-cpu install the same `faiss` module: swap one for the other.
install-gpu: $(STAMP)
	$(BIN)/pip uninstall --yes faiss-cpu
	$(BIN)/pip install --quiet ".[gpu]"

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
