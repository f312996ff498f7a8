# Herald. `make run` and `make test` set up everything they need on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= examples/herald.yaml
export HERALD_DATABASE_URL ?= sqlite+aiosqlite:///./herald.db

.PHONY: run test lint unit openapi clean

# The virtualenv is rebuilt when the dependency pins or the project metadata change.
$(BIN)/.installed: pyproject.toml requirements/constraints.txt
	$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required") if sys.version_info < (3, 11) else None'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e '.[dev]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/herald migrate
	$(BIN)/herald serve --config $(CONFIG) --host 127.0.0.1 --port 8000

lint: $(BIN)/.installed
	$(BIN)/ruff check app tests migrations
	$(BIN)/ruff format --check app tests migrations
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

unit: $(BIN)/.installed
	$(BIN)/pytest -q tests/unit

openapi: $(BIN)/.installed
	$(BIN)/herald openapi > openapi.yaml

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache herald.db herald.db-wal herald.db-shm
