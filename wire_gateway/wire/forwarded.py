"""Who the client is when a load balancer stands in front: `X-Forwarded-For` from trusted proxies.

Behind HAProxy every connection comes from the balancer, so the address the gateway logs for a
refused key or a forbidden call would always be the balancer's. A balancer appends the address
it saw to `X-Forwarded-For` (HAProxy: `option forwardfor`). That header is only as true as
whoever wrote it: a client can send one of its own, so the gateway believes it only from a peer
listed in `http.trusted_proxies`, and only as far as the chain of trusted proxies reaches. It
reads the header's addresses from the right (the one the nearest proxy appended) and takes the
first that is not itself a trusted proxy; everything to the left of that was written by the
client and is ignored. With no trusted proxies configured (the default) the header is never
read. An entry that is not an address (`unknown`, junk) stops the walk: the address before it,
a trusted proxy, is reported, which says "behind that proxy" without believing the junk.

Only `X-Forwarded-For` (what HAProxy, nginx, Envoy and cloud balancers all send), not RFC 7239
`Forwarded`, whose quoting is rarely configured the same on both ends. Sans-IO; the address is
worked out only where one is reported (a refusal's log line), so a request that is served costs
nothing here. Sits beside `authority`: both read what a client claims about where it is.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["TrustedProxies", "parse_networks"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(entries: Iterable[str]) -> tuple[_Network, ...]:
    """Addresses or CIDR networks; ValueError names the entry that is neither."""
    nets = []
    for entry in entries:
        try:
            nets.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or network (10.0.0.0/8, 127.0.0.1, ::1)") from None
    return tuple(nets)


def _address(text: str) -> _Address | None:
    text = text.strip()
    if text.startswith("["):                      # [v6] or [v6]:port
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:                    # v4:port
        text = text.partition(":")[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class TrustedProxies:
    """The proxies whose `X-Forwarded-For` is believed, and the client address it gives."""

    __slots__ = ("networks",)

    def __init__(self, networks: tuple[_Network, ...] = ()) -> None:
        self.networks = networks

    def trusts(self, addr: _Address) -> bool:
        return any(addr in net for net in self.networks)

    def client(self, peer: tuple[str, int] | None, forwarded_for: list[str]) -> str:
        """The client's address as text from the connection's peer and the request's
        `X-Forwarded-For` values (every such header, in order); "-" when there is no peer."""
        if peer is None:
            return "-"
        if not self.networks:
            return peer[0]
        here = _address(peer[0])
        if here is None or not self.trusts(here):
            return peer[0]
        hops = [hop for value in forwarded_for for hop in value.split(",")]
        for hop in reversed(hops):
            addr = _address(hop)
            if addr is None:
                break
            here = addr
            if not self.trusts(addr):
                break
        return str(here)
