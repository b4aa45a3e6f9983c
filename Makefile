# make run   -- serve the dealer on http://127.0.0.1:5000 (creates .venv, keys and database)
# make test  -- the whole test suite (creates .venv with the test extras)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALL := $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: run test lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The Dockerfile installs with this same command.
$(VENV)/.installed: pyproject.toml $(shell find tokendealer -name '*.py') | $(BIN)/python
	$(BIN)/pip install --no-cache-dir .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(INSTALL) -e ".[test]"
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/tokendealer serve

test: $(VENV)/.installed-test
	$(BIN)/ruff check tokendealer tests
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check tokendealer tests
	$(BIN)/ruff format --check tokendealer tests

format: $(VENV)/.installed-test
	$(BIN)/ruff format tokendealer tests
	$(BIN)/ruff check --fix tokendealer tests

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
