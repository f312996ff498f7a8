# Herald. `make run` and `make test` set up everything they need on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONSTRAINTS := -c requirements/constraints.txt
# uv (from PyPI, pinned like every package) installs the dependencies: it fetches and unpacks in
# parallel, several times faster than pip on a fresh clone. pip stays in the venv (tests/ops build
# a wheel with it). Bytecode is written on first import (see PYTEST), not for every package.
INSTALL = $(BIN)/uv pip install --quiet --python $(BIN)/python $(CONSTRAINTS)

.PHONY: run test lint unit openapi clean

# Two stamps in one virtualenv: $(RUNTIME) has what serving needs (`make run`), $(DEV) adds the
# dev extras on top (tests, linters, matplotlib…). Each is redone when the dependency pins or the
# project metadata change; going back and forth between `make run` and `make test` installs
# nothing again.
RUNTIME := $(BIN)/.installed-runtime
DEV := $(BIN)/.installed-dev

$(RUNTIME): pyproject.toml requirements/constraints.txt
	$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required") if sys.version_info < (3, 11) else None'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(CONSTRAINTS) --upgrade pip uv
	$(INSTALL) -e .
	touch $@

$(DEV): $(RUNTIME)
	$(INSTALL) -e '.[dev]'
	touch $@

# Herald's settings come from the environment when set there (`HERALD_PORT=9000 make run`):
# `herald serve` reads HERALD_HOST and HERALD_PORT itself (default 127.0.0.1:8000).
run: export HERALD_CONFIG ?= examples/herald.yaml
run: export HERALD_DATABASE_URL ?= sqlite+aiosqlite:///./herald.db
run: $(RUNTIME)
	$(BIN)/herald migrate
	$(BIN)/herald serve

lint: $(DEV)
	$(BIN)/ruff check app tests migrations
	$(BIN)/ruff format --check app tests migrations
	$(BIN)/mypy

# With PYTHONDONTWRITEBYTECODE set (as on the CI machines) each test process and each `herald`
# the tests start compiles app/ and tests/ again: let them write __pycache__ (git ignores it).
PYTEST := env -u PYTHONDONTWRITEBYTECODE $(BIN)/pytest
# Test processes: twice the 2 cores of the machines this runs on. The long tests (chaos,
# Prometheus, processes, backoffs) mostly wait, each holding a process for seconds while the
# others keep both cores busy with the short ones; a fifth process only adds contention.
# tests/conftest.py orders the run and hands it out (long tests first, one at a time).
# PYTEST_WORKERS=0: one process, no xdist.
PYTEST_WORKERS ?= 4

test: lint
	$(PYTEST) -q -n $(PYTEST_WORKERS) --durations=15

unit: $(DEV)
	$(PYTEST) -q tests/unit

# The full chaos suite (tests/chaos: needs the PostgreSQL server binaries; a few minutes), and the
# fleet-wide rate limit at the size issue 18 asks for (4 workers, 10/s, 500: ~50 s). make test
# runs its short version.
.PHONY: chaos
chaos: $(DEV)
	$(PYTEST) -s -q --chaos-full -m chaos_full tests/chaos tests/integration/test_fleet_limits.py

openapi: $(RUNTIME)
	$(BIN)/herald openapi > openapi.yaml

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache herald.db herald.db-wal herald.db-shm

# --- ops tests (tests/ops): tools from outside the venv ---------------------------------------
# The TypeScript client check needs its npm packages, pinned by package-lock.json. Prometheus
# and Alertmanager (tests/integration/test_alertmanager_real.py) come from Debian (.ci/run
# installs prometheus and prometheus-alertmanager), and so does Chromium, which the console's
# browser tests (tests/console/test_browser.py) drive headless with Playwright; a local run
# without them or without npm skips those tests with a message (under CI=true they fail
# instead). The ingest tests need
# Redis on 127.0.0.1:6379 (HERALD_TEST_REDIS_URL), as they need PostgreSQL.
TS_CLIENT := tests/ops/ts-client

.PHONY: ops ops-deps clean-ops

$(TS_CLIENT)/node_modules/.package-lock.json: $(TS_CLIENT)/package-lock.json $(TS_CLIENT)/package.json
	@if command -v npm >/dev/null 2>&1; then \
		cd $(TS_CLIENT) && npm ci --no-audit --no-fund --loglevel=error; \
	else \
		echo "npm not found: tests/ops/test_clients.py will skip the TypeScript client"; \
	fi

ops-deps: $(TS_CLIENT)/node_modules/.package-lock.json

test: ops-deps

ops: $(DEV) ops-deps
	$(PYTEST) -q tests/ops

clean: clean-ops

clean-ops:
	rm -rf $(TS_CLIENT)/node_modules $(TS_CLIENT)/generated $(TS_CLIENT)/dist

# --- performance (bench/): Herald against minimal baselines and peers, about 10 minutes --------
# Needs PostgreSQL at BENCH_PG_DSN (default postgresql://postgres@127.0.0.1:5432/postgres; it
# creates and drops its own database) and wrk (apt-get install -y wrk; without it a Python load
# generator stands in). Writes bench/results/latest.json and latest.md.
# Profiles: make bench BENCH_ARGS=--profile (needs py-spy; bench/results/profiles/).
# The peers scenario needs Celery, arq and procrastinate (the bench extra) and Redis on
# 127.0.0.1:6379 (BENCH_REDIS_URL; the peers use database 13, BENCH_PEERS_REDIS_DB).
BENCH_DEPS := $(BIN)/.installed-bench

$(BENCH_DEPS): $(DEV)
	$(INSTALL) -e '.[dev,bench]'
	touch $@

.PHONY: bench
bench: $(BENCH_DEPS)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# docs/console/*.png: the console's pages, taken by its browser tests (Playwright driving
# Debian's Chromium: apt-get install chromium).
.PHONY: console-screenshots
console-screenshots: $(DEV)
	HERALD_CONSOLE_SCREENSHOTS=docs/console $(BIN)/pytest -q tests/console/test_browser.py

# docs/dashboard.png: the Grafana dashboard's panels drawn from a real run's Prometheus data
# (a webhook sink, herald serve and Debian's prometheus on loopback, ~3 minutes of traffic).
.PHONY: dashboard-png
dashboard-png: $(DEV)
	$(BIN)/python deploy/render_dashboard.py --demo --out docs/dashboard.png
