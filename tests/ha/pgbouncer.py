"""PgBouncer in the topology of `make test-ha`: Debian's 1.18 in transaction mode in front of
HAProxy's primary port, for the API instance that runs with `DB_PGBOUNCER=true`. Every
setting that matters on a failover is written out here, with its reason (docs/ha.md,
"PgBouncer")."""

from __future__ import annotations

from pathlib import Path

PGBOUNCER = "/usr/sbin/pgbouncer"


def config(home: Path, port: int, primary_port: int) -> str:
    """pgbouncer.ini: clients on 127.0.0.1:`port`, servers through HAProxy's
    127.0.0.1:`primary_port`, which only ever leads to the current primary."""
    return f"""[databases]
couponflash = host=127.0.0.1 port={primary_port} dbname=couponflash

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {home}/userlist.txt
; asyncpg sends these at start-up; PgBouncer would refuse a parameter it does not know.
ignore_startup_parameters = extra_float_digits,application_name
pool_mode = transaction
max_client_conn = 500
; The one API instance behind it opens at most 12 + 4 + 4 client connections: 20 servers
; serve them all without queueing, and the primary never sees more than 20 from here.
default_pool_size = 20
min_pool_size = 0
reserve_pool_size = 0

; After a failed server login (HAProxy had no primary to send the connection to, so it
; closed it), PgBouncer tries again only after this long, and meanwhile fails each new
; transaction at once when it has no server left. The default 15 s would add up to 15 s
; of outage after the new primary is up; 0.25 s adds at most a quarter of a second (a
; login attempt to HAProxy, refused at once while it has no primary, costs nothing).
server_login_retry = 0.25
; HAProxy accepts at once; a login that does not finish in 5 s is as good as failed.
server_connect_timeout = 5
; A transaction waits at most this long for a server connection, as a request waits at
; most DB_POOL_TIMEOUT_S for one of the service's own: then the client is disconnected
; (08P01, a 503 with Retry-After; nothing was sent to the server).
query_wait_timeout = 5

; Transaction mode never runs the reset query (it is for session mode): the service
; leaves no session state behind (SET LOCAL, transaction-scoped advisory locks,
; statements prepared with unique names or not at all), and a DISCARD ALL after every
; transaction would cost a round trip per request.
server_reset_query = DISCARD ALL
server_reset_query_always = 0
; A server connection idle for more than 30 s is tested with `select 1` before a client
; gets it. That catches a connection that died silently; it is not what moves PgBouncer
; to a new primary: HAProxy cuts every session to a node it marks down
; (on-marked-down shutdown-sessions), and a demoted PostgreSQL restarts, so PgBouncer
; sees its idle server connections close and drops them at once.
server_check_query = select 1
server_check_delay = 30
server_idle_timeout = 60
server_lifetime = 3600
tcp_keepalive = 1

log_connections = 0
log_disconnections = 1
log_pooler_errors = 1
"""


def userlist() -> str:
    """auth_type = trust still needs the user to be known to PgBouncer."""
    return '"postgres" ""\n'
