"""The client's address: the peer, or, when the peer is a trusted proxy, the first address
in `X-Forwarded-For` (read from the right) that is not a trusted proxy. A client that is
not behind a trusted proxy cannot choose its address by sending the header."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.requests import HTTPConnection

from app.core.headers import header

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """`TRUSTED_PROXIES` entries (addresses or CIDR blocks) as networks; ValueError if bad."""
    return tuple(ipaddress.ip_network(e.strip(), strict=False) for e in entries if e.strip())


def _trusted(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(request: HTTPConnection, trusted: tuple[Network, ...]) -> str:
    """The address the request came from, honouring `X-Forwarded-For` only from `trusted`."""
    peer = request.client.host if request.client else "unknown"
    if not trusted or not _trusted(peer, trusted):
        return peer
    forwarded = header(request, b"x-forwarded-for") or ""
    hops = [h.strip() for h in forwarded.split(",") if h.strip()]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a trusted proxy passed on garbage: the proxy is all we know
        if not _trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer
