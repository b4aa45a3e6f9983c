# make run   -- serve the dealer on http://127.0.0.1:5000 (creates .venv, keys and database)
# make test  -- ruff, the import rules (lint-imports) and the whole test suite (creates .venv)
# make bench -- the benchmark of issue 8 (benchmarks/README.md); bench-smoke: its short check
# make lock  -- regenerate requirements.lock (every runtime dependency pinned, with hashes)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALL := $(BIN)/pip install --quiet --disable-pip-version-check
# The lock file of the runtime dependencies, and the tool (pinned too) that writes it:
# one universal resolution (markers for each Python and platform) with every file's hash.
LOCK := requirements.lock
UV_VERSION := 0.13.9
LOCK_COMMAND := uv pip compile pyproject.toml --universal --python-version 3.11 \
	--generate-hashes --quiet -o $(LOCK)

.PHONY: run test lint format clean bench bench-smoke bench-scaleout bench-keypoll bench-auth bench-revocation lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The Dockerfile installs with these same two commands: the locked dependencies, then the
# project alone.
$(VENV)/.installed: pyproject.toml $(LOCK) $(shell find tokendealer -name '*.py') | $(BIN)/python
	$(BIN)/pip install --no-cache-dir --require-hashes -r $(LOCK)
	$(BIN)/pip install --no-cache-dir --no-deps .
	touch $@

# After changing the dependencies in pyproject.toml (or to take newer releases): commit the
# new requirements.lock with the change.
lock: | $(BIN)/python
	$(INSTALL) uv==$(UV_VERSION)
	$(BIN)/$(LOCK_COMMAND)

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(INSTALL) -e ".[test]"
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/tokendealer serve

test: $(VENV)/.installed-test
	$(BIN)/ruff check tokendealer tests examples benchmarks
	$(BIN)/lint-imports --no-cache
	$(MAKE) --no-print-directory bench-smoke
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check tokendealer tests examples benchmarks
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff format --check tokendealer tests examples benchmarks

format: $(VENV)/.installed-test
	$(BIN)/ruff format tokendealer tests examples benchmarks
	$(BIN)/ruff check --fix tokendealer tests examples benchmarks

# The benchmark (benchmarks/README.md). wrk is installed when apt-get can (root); without it
# the bundled loader is used, never a failure. BENCH_ARGS: extra options of benchmarks/run.py.
bench: $(VENV)/.installed-test
	@command -v wrk >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 \
	  && { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null 2>&1 \
	    || { apt-get update -qq >/dev/null 2>&1 \
	      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null 2>&1; }; }; } \
	  || echo "bench: wrk could not be installed; using the bundled loader" >&2
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

# Tokens/s of the RS256 dealer with 1 and with 2 workers, unpinned (issue 8 item 4).
bench-scaleout: $(VENV)/.installed-test
	$(BIN)/python -m benchmarks.scaleout $(BENCH_ARGS)

# Token rate by client authentication: secret vs private_key_jwt (jtis in SQLite or Redis).
bench-auth: $(VENV)/.installed-test
	$(BIN)/python -m benchmarks.client_auth $(BENCH_ARGS)

# Seconds from a revocation (revoke, disable, delete) to a service's first 401 (issue 18).
bench-revocation: $(VENV)/.installed-test
	$(BIN)/python -m benchmarks.revocation_reach $(BENCH_ARGS)

# The database key store's polling (needs PostgreSQL: TOKENDEALER_TEST_DATABASE_URL).
bench-keypoll: $(VENV)/.installed-test
	$(BIN)/python -m benchmarks.key_polling $(BENCH_ARGS)

# The same benchmark with tiny durations (< 2 min, part of make test): fails when a target
# errors, answers anything but 2xx, or a token does not verify; timings never fail it.
bench-smoke: $(VENV)/.installed-test
	$(BIN)/python -m benchmarks.run --smoke $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
