# One-command set-up: every target creates .venv and installs the project into it when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python tests/run_timm_model_tests.py --fetch
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q
	$(BIN)/python tests/run_timm_model_tests.py

gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py --out output/gpu_check

demo: $(STAMP)
	PYTHON=$(abspath $(BIN)/python) ToE/deit/run/demo.sh

clean:
	rm -rf $(VENV) output data/demo .pytest_cache .ruff_cache .cache
