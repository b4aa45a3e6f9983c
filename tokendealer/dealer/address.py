"""The source address of a request: the peer's, or the client's as a trusted proxy saw it.

``X-Forwarded-For`` is set by whoever sends the request, so it is believed only
when the peer is a proxy listed in ``TOKENDEALER_TRUSTED_PROXIES``, and then
read from the right: each trusted proxy appends the address it received the
request from, so the first entry (from the right) that is not itself a trusted
proxy is the client. Anything left of it could be forged by that client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
UNKNOWN = "unknown"  # no peer address (a Unix socket, a test client)


MAX_RAW_HOP = 64  # characters of an unparsable hop kept as its bucket


def _ip(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(_without_port(text.strip()))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _without_port(hop: str) -> str:
    """``203.0.113.9:4444`` -> ``203.0.113.9``, ``[2001:db8::7]:5555`` -> ``2001:db8::7``.

    Some proxies write the client's port too (RFC 7239 §6 allows it in
    ``Forwarded``; in ``X-Forwarded-For`` it is common practice).
    """
    if hop.startswith("["):
        host, bracket, _ = hop[1:].partition("]")
        return host if bracket else hop
    host, colon, port = hop.rpartition(":")
    if colon and "." in host and ":" not in host and port.isdigit():
        return host  # IPv4 with a port; a bare IPv6 address has more than one colon
    return hop


def _trusted(address: Address, proxies: Iterable[Network]) -> bool:
    return any(address in network for network in proxies)


def source_address(
    scope: Mapping[str, Any], forwarded_for: list[str], proxies: tuple[Network, ...]
) -> str:
    """The client's address for limits and logs (RFC 7239 §5.2's node, without the port).

    ``forwarded_for`` is every ``X-Forwarded-For`` header value in order.
    """
    client = scope.get("client")
    if not proxies or not forwarded_for:  # the common case: the peer, unparsed
        host = str(client[0]) if client else UNKNOWN
        return host[7:] if host.startswith("::ffff:") and "." in host else host
    peer = _ip(str(client[0])) if client else None
    if peer is None:
        return str(client[0]) if client else UNKNOWN
    if not _trusted(peer, proxies):
        return str(peer)
    hops = [hop for value in forwarded_for for hop in value.split(",")]
    nearest = peer
    for hop in reversed(hops):
        address = _ip(hop)
        if address is None:  # garbage: its own bucket, never the proxy's (shared by everyone)
            return hop.strip()[:MAX_RAW_HOP] or UNKNOWN
        if not _trusted(address, proxies):
            return str(address)
        nearest = address
    return str(nearest)  # every hop is a trusted proxy: the farthest one is the client


def limit_key(address: str) -> str:
    """The bucket a source address is limited in: IPv6 by /64, the block one host gets."""
    if ":" not in address:
        return address
    ip = _ip(address)
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return address if ip is None else str(ip)
