"""Client addresses and per-key CIDR allowlists.

The client address is the socket peer. Only when the peer is one of ``trusted_proxies`` is
``X-Forwarded-For`` read, from the right, skipping trusted hops: the first untrusted address is the client.
Every entry is parsed strictly (a bare IPv4 or IPv6 address, nothing else); a malformed entry makes the
address unknown, which fails every allowlist rather than letting a guess through. IPv4-mapped IPv6
addresses (``::ffff:192.0.2.1``) are treated as the IPv4 address they carry.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from functools import lru_cache

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# Memoised: the socket peer is parsed on every gated request and ipaddress's parser costs ~8 us; the answer is
# immutable and depends on the text alone. Bounded, so a flood of distinct X-Forwarded-For entries cannot grow it.
@lru_cache(maxsize=4096)
def parse_address(text: str) -> IPAddress | None:
    """A strict parse of one address; None for anything else (ports, brackets, zone ids, garbage)."""
    text = text.strip()
    if not text or len(text) > 45 or "%" in text:
        return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


@lru_cache(maxsize=4096)
def address_text(addr: IPAddress) -> str:
    """``str(addr)``, memoised: ipaddress formats an address in Python (~3 us), and logs need it per request."""
    return str(addr)


def parse_network(text: str) -> IPNetwork:
    """An allowlist entry: a network in CIDR form or a single address. Raises ValueError naming the entry."""
    raw = text.strip()
    try:
        net = ipaddress.ip_network(raw, strict=False)
    except ValueError:
        raise ValueError(f"not an IP address or CIDR network: {raw!r}") from None
    if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped is not None and net.prefixlen >= 96:
        # ::ffff:10.0.0.0/104 is 10.0.0.0/8 in IPv6 clothes: match it against IPv4 clients.
        v4 = net.network_address.ipv4_mapped
        return ipaddress.IPv4Network(f"{v4}/{net.prefixlen - 96}", strict=False)
    return net


def parse_networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(parse_network(e) for e in entries)


def in_networks(addr: IPAddress | None, networks: Sequence[IPNetwork]) -> bool:
    if addr is None:
        return False
    for net in networks:
        if net.version == addr.version and addr in net:
            return True
    return False


class ClientResolver:
    """Resolves the client address of a request; built once from ``trusted_proxies``."""

    __slots__ = ("_trusted",)

    def __init__(self, trusted_proxies: Iterable[str]) -> None:
        self._trusted = parse_networks(trusted_proxies)

    @property
    def enabled(self) -> bool:
        return bool(self._trusted)

    def is_trusted(self, addr: IPAddress | None) -> bool:
        return bool(self._trusted) and in_networks(addr, self._trusted)

    def resolve(self, peer: str | None, forwarded_for: Sequence[bytes]) -> IPAddress | None:
        """``peer`` is the socket peer host; ``forwarded_for`` the raw X-Forwarded-For header values in order."""
        addr = parse_address(peer) if peer else None
        if not forwarded_for or not self.is_trusted(addr):
            return addr
        try:
            entries = b",".join(forwarded_for).decode("ascii").split(",")
        except UnicodeDecodeError:
            return None
        for entry in reversed(entries):
            hop = parse_address(entry)
            if hop is None:
                return None
            if not self.is_trusted(hop):
                return hop
            addr = hop
        # Every hop is a trusted proxy: the leftmost one is the best we know.
        return addr
