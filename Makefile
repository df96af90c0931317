# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test test-pg test-pgbouncer lint format migrate bench bench-import clean bench-notify bench-promos test-faults bench-scale

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: install ## serve on HOST:PORT (embedded PostgreSQL unless DATABASE_URL is set)
	$(PY) -m app serve

migrate: install
	$(PY) -m app migrate

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy app

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: install lint ## lint, then the whole suite, then the hot-path and security tests with lean routes off
	$(PY) -m pytest
	LEAN_ROUTES=false $(PY) -m pytest -q -p no:randomly tests/core tests/books tests/promos tests/security

test-pg: install ## the suite against the server at 127.0.0.1:5432
	DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test $(PY) -m pytest

bench-notify: install ## fan out one promo to 100,000 and 1,000,000 users; writes docs/benchmarks.md
	$(PY) bench/notify.py

bench-promos: install ## GET /me/promos latency and reserve+purchase throughput; writes docs/benchmarks.md
	$(PY) bench/promos.py

bench-import: install ## stream a 1,000,000-line CSV through the API; writes docs/benchmarks.md
	$(PY) bench/import_codes.py

test-pgbouncer: install ## the suite through PgBouncer (transaction mode) to 127.0.0.1:5432
	scripts/test-pgbouncer.sh

test-faults: install ## fault injection (PostgreSQL restart, SIGKILL, timeouts, pool, SIGTERM) on a private cluster
	RUN_FAULTS=1 $(PY) -m pytest tests/faults -q -s -p no:randomly -p no:cacheprovider

bench-scale: install ## EXPLAIN (ANALYZE, BUFFERS) of every hot and listing statement at a small and a large size (2M-code book, 5M history rows...); writes docs/benchmarks.md
	$(PY) -m bench.scale

bench: install ## hot paths vs the bare reference app (needs wrk); writes docs/benchmarks.md
	$(PY) -m bench.hotpaths

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
