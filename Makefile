# The two commands at the top of the README. Both create/update .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck proto bench clean

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/signalbox up

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) lint typecheck
	$(BIN)/python -m signalbox.codegen --check
	tests/setup/prometheus.sh
	$(BIN)/python -m pytest -n auto --maxprocesses 4

proto: $(STAMP)
	$(BIN)/python -m signalbox.codegen

bench: $(STAMP)
	$(BIN)/python bench/infer_load.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
