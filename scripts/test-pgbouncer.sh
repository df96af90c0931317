#!/usr/bin/env bash
# The whole test suite through PgBouncer in transaction mode (Debian's `pgbouncer`), against
# the PostgreSQL server at PGHOST:PGPORT (default 127.0.0.1:5432, trust auth). LISTEN (the
# notification worker and the SSE stream) goes straight to the server: DATABASE_DIRECT_URL.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v pgbouncer >/dev/null || { echo "pgbouncer is needed: apt-get install -y pgbouncer" >&2; exit 2; }
host=${PGHOST:-127.0.0.1}
port=${PGPORT:-5432}
bouncer_port=${PGBOUNCER_PORT:-6439}
dir=$(mktemp -d /tmp/cf-pgbouncer-XXXXXX)
cat > "$dir/pgbouncer.ini" <<INI
[databases]
* = host=$host port=$port
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bouncer_port
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = transaction
max_client_conn = 2000
default_pool_size = 40
ignore_startup_parameters = extra_float_digits,application_name
pidfile = $dir/pgbouncer.pid
logfile = $dir/pgbouncer.log
INI
echo '"postgres" ""' > "$dir/userlist.txt"
run_as=()
if [ "$(id -u)" -eq 0 ]; then chown -R postgres "$dir"; run_as=(su postgres -s /bin/sh -c); fi
if [ ${#run_as[@]} -gt 0 ]; then "${run_as[@]}" "pgbouncer -d $dir/pgbouncer.ini"; else pgbouncer -d "$dir/pgbouncer.ini"; fi
trap 'kill "$(cat "$dir/pgbouncer.pid")" 2>/dev/null || true; rm -rf "$dir"' EXIT
sleep 1
DATABASE_URL="postgresql://postgres@127.0.0.1:$bouncer_port/postgres" \
DATABASE_DIRECT_URL="postgresql://postgres@$host:$port/postgres" \
DB_PGBOUNCER=true \
  .venv/bin/python -m pytest "$@"
