"""The replication relay of `make test-ha`: a TCP relay in front of each PostgreSQL node, on
the address Patroni advertises for it (`postgresql.connect_address`), so every replication
connection (and every clone and `pg_rewind`) reaches its primary through here. It can hold
back one standby's traffic by a fixed delay, each way, which is what netem would do on that
standby's link; this box's kernel has no `sch_netem`, and on one loopback every node's
outgoing connections share the source address 127.0.0.1, so a packet filter could not tell
the standbys apart anyway. A connection belongs to the standby named by the
`application_name` of its startup packet (Patroni sets it to the member's name).

Run as `python -m tests.ha.relay --control PORT LISTEN:TARGET ...`; one-line commands on the
control port: `delay NAME MS SECONDS` (answers `ok N`, N the open connections of NAME; the
delay lapses by itself after SECONDS), `clear` (every delay off), `stats` (JSON)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

_APP_NAME = re.compile(rb"application_name\x00([^\x00]{1,64})\x00")
SNIFF_BYTES = 4096  # the startup packet comes first (after an SSL or GSS request, if any)
CHUNK = 65536


@dataclass
class Delays:
    """Delay in seconds by application_name, each with the monotonic time it lapses at."""

    active: dict[str, tuple[float, float]] = field(default_factory=dict)
    open: Counter[str] = field(default_factory=Counter)
    held: Counter[str] = field(default_factory=Counter)  # chunks delayed, by name

    def of(self, name: str | None) -> float:
        if name is None or name not in self.active:
            return 0.0
        seconds, until = self.active[name]
        if time.monotonic() >= until:
            del self.active[name]
            return 0.0
        self.held[name] += 1
        return seconds


@dataclass
class Link:
    """One relayed connection: its name once sniffed, and whether it is closing."""

    name: str | None = None
    sniffed: bytes = b""
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def sniff(self, data: bytes, delays: Delays) -> None:
        if self.name is not None or len(self.sniffed) >= SNIFF_BYTES:
            return
        self.sniffed += data[:SNIFF_BYTES]
        found = _APP_NAME.search(self.sniffed)
        if found:
            self.name = found.group(1).decode(errors="replace")
            delays.open[self.name] += 1


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    link: Link,
    delays: Delays,
    upstream: bool,
) -> None:
    """Copy one direction, each chunk sent when its delay (read when it arrived) is up, in
    order; at end of stream, what is queued is delivered, then the link closes."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read() -> None:
        try:
            while data := await reader.read(CHUNK):
                if upstream:
                    link.sniff(data, delays)
                queue.put_nowait((time.monotonic() + delays.of(link.name), data))
        except OSError:
            pass
        queue.put_nowait((0.0, b""))

    reading = asyncio.create_task(read())
    try:
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        reading.cancel()
        link.done.set()


async def _relay(
    client_r: asyncio.StreamReader,
    client_w: asyncio.StreamWriter,
    target: tuple[str, int],
    delays: Delays,
) -> None:
    try:
        server_r, server_w = await asyncio.open_connection(*target)
    except OSError:
        client_w.close()
        return
    link = Link()  # both event loops set TCP_NODELAY on their sockets: no batching added
    pumps = [
        asyncio.create_task(_pump(client_r, server_w, link, delays, upstream=True)),
        asyncio.create_task(_pump(server_r, client_w, link, delays, upstream=False)),
    ]
    await link.done.wait()  # either side ended: the other goes with it, as a socket would
    for pump in pumps:
        pump.cancel()
    await asyncio.gather(*pumps, return_exceptions=True)
    for w in (client_w, server_w):
        w.close()
    if link.name is not None:
        delays.open[link.name] -= 1


async def _control(r: asyncio.StreamReader, w: asyncio.StreamWriter, delays: Delays) -> None:
    with contextlib.suppress(OSError, ValueError):
        words = (await r.readline()).decode().split()
        if words[:1] == ["delay"] and len(words) == 4:
            name, ms, seconds = words[1], float(words[2]), float(words[3])
            delays.active[name] = (ms / 1000, time.monotonic() + seconds)
            answer = f"ok {delays.open[name]}"
        elif words == ["clear"]:
            delays.active.clear()
            answer = "ok"
        elif words == ["stats"]:
            answer = json.dumps({"open": delays.open, "held": delays.held})
        else:
            answer = "error: delay NAME MS SECONDS | clear | stats"
        w.write(answer.encode() + b"\n")
        await w.drain()
    w.close()


async def serve(control: int, routes: list[tuple[int, tuple[str, int]]]) -> None:
    delays = Delays()
    servers = [
        await asyncio.start_server(
            lambda r, w, t=target: _relay(r, w, t, delays), "127.0.0.1", port
        )
        for port, target in routes
    ]
    servers.append(
        await asyncio.start_server(lambda r, w: _control(r, w, delays), "127.0.0.1", control)
    )
    await asyncio.gather(*(s.serve_forever() for s in servers))


def command(port: int, line: str, timeout: float = 2.0) -> str:
    """Send one control command to the relay listening on `port`; its answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(line.encode() + b"\n")
        return sock.makefile().readline().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--control", type=int, required=True)
    parser.add_argument("routes", nargs="+", help="LISTEN_PORT:TARGET_PORT on 127.0.0.1")
    args = parser.parse_args()
    routes = [
        (int(listen), ("127.0.0.1", int(target)))
        for listen, target in (r.split(":") for r in args.routes)
    ]
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.control, routes))
    else:
        uvloop.run(serve(args.control, routes))


if __name__ == "__main__":
    main()
