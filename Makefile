# The two commands at the top of the README. Both create/update .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NATIVE := $(VENV)/.native
# The modules compiled with mypyc (pyproject.toml, [tool.signalbox] compiled).
COMPILED := $(shell $(PY) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["tool"]["signalbox"]["compiled"])')
# The modules written in Cython (pyproject.toml, [tool.signalbox] cython).
CYTHON := $(shell $(PY) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["tool"]["signalbox"]["cython"])')

# One test worker more than there are cores (at most 5): a third of a worker's time is
# spent waiting for the processes it starts (PostgreSQL, nodes), and the spare worker
# fills it. On 2 cores: 13 min 19 s with 3 workers against 15 min 33 s with 2.
TEST_WORKERS ?= $(shell n=$$(nproc); [ $$n -gt 4 ] && n=4; echo $$((n + 1)))

.PHONY: run test test-setup lint typecheck proto bench native clean

# The editable install itself is pure Python; $(NATIVE) then compiles in place, again
# whenever a compiled module changes (a stale extension would shadow the edited source).
$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip 'setuptools>=77'
	SIGNALBOX_COMPILE=0 $(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# build_ext relinks only what changed in the generated C; a source touched but unchanged
# leaves the shared library older than it, so mark the library as checked against them.
$(NATIVE): $(STAMP) $(COMPILED) $(CYTHON)
	$(BIN)/python setup.py --quiet build_ext --inplace
	touch dataplane/_native__mypyc.*.so $(patsubst %.pyx,%.*.so,$(CYTHON)) $(NATIVE)

native: $(NATIVE)

run: $(NATIVE)
	$(BIN)/signalbox up

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# The compile, the checks and the suite's own setup side by side: each keeps about one
# core busy for 10-40 s, one after another they took ~80 s of a CI run.
test: $(STAMP)
	$(MAKE) --no-print-directory --jobs=4 --output-sync=target $(NATIVE) lint typecheck test-setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --durations=15

# Bytecode for the project's own modules, made once: the suite starts ~800 Python
# processes (nodes, control planes, CLI commands), and where PYTHONDONTWRITEBYTECODE is set
# (as on this project's CI machines) each would otherwise compile every module it imports
# from source, ~0.4-0.5 s of CPU per node or control-plane start.
test-setup: $(STAMP)
	$(BIN)/python -m signalbox.codegen --check
	tests/setup/prometheus.sh
	$(BIN)/python -m compileall -q -j0 signalbox dataplane controlplane tests

proto: $(STAMP)
	$(BIN)/python -m signalbox.codegen

bench: $(NATIVE)
	$(BIN)/python bench/infer_load.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build
	find dataplane controlplane -name '*.so' -delete
