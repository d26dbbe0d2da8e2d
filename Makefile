# One-command set-up: every target creates .venv and installs the project into it when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-fast lint typecheck format demo gpu-check clean
PY_SOURCES := src tests benchmarks datasets ToE

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python tests/run_timm_model_tests.py --fetch
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check $(PY_SOURCES)
	$(BIN)/python tests/check_types.py

# mypy on src/toe against tests/mypy_baseline.txt: fails on a new error, or asks to shrink the baseline
typecheck: $(STAMP)
	$(BIN)/python tests/check_types.py

format: $(STAMP)
	$(BIN)/ruff format $(PY_SOURCES)
	$(BIN)/ruff check --fix .

# one pytest worker per core (pytest-xdist): the tests spend much of their time starting processes
test: lint
	$(BIN)/python -m pytest -q -n auto
	$(BIN)/python tests/run_timm_model_tests.py

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n auto -m "not slow"

gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py --out output/gpu_check

demo: $(STAMP)
	PYTHON=$(abspath $(BIN)/python) ToE/deit/run/demo.sh

clean:
	rm -rf $(VENV) output data/demo .pytest_cache .ruff_cache .cache
