"""gateway/network.py: strict address parsing, CIDR allowlists (IPv4-mapped IPv6 included) and the client
address behind trusted proxies, which must never be one a client can choose by sending X-Forwarded-For."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.network import ClientResolver, in_networks, parse_address, parse_network, parse_networks

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address


# --- parse_address ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1", V4("192.0.2.1")),
        (" 192.0.2.1 ", V4("192.0.2.1")),  # X-Forwarded-For lists put spaces after commas
        ("\t192.0.2.1", V4("192.0.2.1")),
        ("0.0.0.0", V4("0.0.0.0")),
        ("255.255.255.255", V4("255.255.255.255")),
        ("2001:db8::1", V6("2001:db8::1")),
        ("2001:DB8::1", V6("2001:db8::1")),
        ("::1", V6("::1")),
        ("::", V6("::")),
        # IPv4-mapped IPv6 is the IPv4 address it carries, in both spellings.
        ("::ffff:192.0.2.1", V4("192.0.2.1")),
        ("::FFFF:192.0.2.1", V4("192.0.2.1")),
        ("::ffff:c000:201", V4("192.0.2.1")),
        ("0:0:0:0:0:ffff:192.0.2.1", V4("192.0.2.1")),
        ("0000:0000:0000:0000:0000:ffff:255.255.255.255", V4("255.255.255.255")),  # 45 characters
        # Not mapped: these stay IPv6 (they do not mean the IPv4 address to a dual-stack socket).
        ("64:ff9b::192.0.2.1", V6("64:ff9b::c000:201")),
        ("::192.0.2.1", V6("::c000:201")),
    ],
)
def test_parse_address_accepts_bare_addresses(text: str, expected: object) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "unknown",  # what nginx writes when it has no address
        "_hidden",  # RFC 7239 obfuscated identifier
        "192.0.2.1:443",  # ports
        "192.0.2.1:",
        "[2001:db8::1]",  # brackets
        "[2001:db8::1]:443",
        "[::ffff:192.0.2.1]",
        "2001:db8::1:443:",
        "fe80::1%eth0",  # zone id
        "fe80::1%25eth0",
        "192.0.2.1/32",  # networks are not addresses
        "2001:db8::/32",
        "192.0.2",
        "192.0.2.1.5",
        "256.0.0.1",
        "192.0.2.01",  # leading zeros: octal to some parsers
        "0300.0000.0002.0001",
        "0xc0.0.2.1",
        "3221225985",  # an integer
        "192.0.2.1 10.0.0.1",
        "192.0.2.1,10.0.0.1",
        "192.0.2.1;10.0.0.1",
        "for=192.0.2.1",  # Forwarded syntax
        "\"192.0.2.1\"",
        "192.0.2.1\x00",
        "\u0661\u0669\u0662.0.2.1",  # Arabic-Indic digits
        "\uff11\uff19\uff12.0.2.1",  # full-width digits
        "1" * 46,
        "::ffff:" + "1" * 60,
        "localhost",
        "example.com",
    ],
)
def test_parse_address_refuses_everything_else(text: str) -> None:
    assert parse_address(text) is None


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_property_parse_address_never_raises(text: str) -> None:
    addr = parse_address(text)
    # Whatever it accepts is a real address, written back the same way the stdlib would.
    assert addr is None or ipaddress.ip_address(str(addr)) == addr


# --- networks and allowlists -----------------------------------------------------------------------------------


def test_parse_network_forms() -> None:
    assert parse_network("10.0.0.0/8") == ipaddress.IPv4Network("10.0.0.0/8")
    assert parse_network(" 192.0.2.7 ") == ipaddress.IPv4Network("192.0.2.7/32")
    assert parse_network("2001:db8::/32") == ipaddress.IPv6Network("2001:db8::/32")
    assert parse_network("2001:db8::1") == ipaddress.IPv6Network("2001:db8::1/128")
    # Host bits are tolerated the way uvicorn and most proxies tolerate them.
    assert parse_network("10.1.2.3/8") == ipaddress.IPv4Network("10.0.0.0/8")
    # IPv4-mapped networks are their IPv4 network, so they match IPv4 clients.
    assert parse_network("::ffff:10.0.0.0/104") == ipaddress.IPv4Network("10.0.0.0/8")
    assert parse_network("::ffff:192.0.2.1") == ipaddress.IPv4Network("192.0.2.1/32")
    assert parse_network("::ffff:192.0.2.0/120") == ipaddress.IPv4Network("192.0.2.0/24")
    assert parse_network("::ffff:0.0.0.0/96") == ipaddress.IPv4Network("0.0.0.0/0")


@pytest.mark.parametrize("text", ["", "10.0.0.0/33", "10.0.0.0/8/8", "10.0.0", "2001:db8::/129", "any", "*",
                                  "10.0.0.0-10.0.0.9", "10.0.0.0/-1", "[::1]/128", "192.0.2.1:80"])
def test_parse_network_refuses_with_a_message_naming_the_entry(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_network(text)
    assert repr(text.strip()) in str(info.value)


def test_allowlists_match_ipv4_ipv6_and_mapped_clients() -> None:
    nets = parse_networks(["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"])
    assert in_networks(parse_address("10.20.30.40"), nets)
    assert in_networks(parse_address("::ffff:10.20.30.40"), nets)  # a dual-stack socket's view of 10.20.30.40
    assert in_networks(parse_address("::ffff:a14:1e28"), nets)
    assert in_networks(parse_address("2001:db8:1::5"), nets)
    assert in_networks(parse_address("192.0.2.7"), nets)
    assert not in_networks(parse_address("192.0.2.8"), nets)
    assert not in_networks(parse_address("11.0.0.1"), nets)
    assert not in_networks(parse_address("2001:db9::1"), nets)
    assert not in_networks(parse_address("::10.20.30.40"), nets)  # IPv4-compatible is not IPv4-mapped
    assert not in_networks(None, nets)  # an unknown address fails every allowlist
    assert not in_networks(parse_address("10.0.0.1"), ())


def test_ipv6_networks_do_not_cover_ipv4_clients() -> None:
    # IPv4 clients (and IPv4-mapped ones) need an IPv4 entry or a ::ffff: one of /96 or longer; a wide IPv6
    # network never lets them in by accident.
    nets = parse_networks(["::/0"])
    assert in_networks(parse_address("2001:db8::1"), nets)
    assert not in_networks(parse_address("192.0.2.1"), nets)
    assert not in_networks(parse_address("::ffff:192.0.2.1"), nets)
    assert not in_networks(parse_address("2001:db8::1"), parse_networks(["0.0.0.0/0"]))


def test_mapped_allowlist_entries_match_ipv4_and_mapped_clients() -> None:
    nets = parse_networks(["::ffff:10.0.0.0/104"])
    assert in_networks(parse_address("10.9.8.7"), nets)
    assert in_networks(parse_address("::ffff:10.9.8.7"), nets)
    assert not in_networks(parse_address("11.9.8.7"), nets)
    assert not in_networks(parse_address("::ffff:11.9.8.7"), nets)


# --- ClientResolver --------------------------------------------------------------------------------------------

CLIENT = V4("203.0.113.9")
ATTACKER_CHOICE = "198.51.100.66"


def test_without_trusted_proxies_the_socket_peer_is_always_the_client() -> None:
    r = ClientResolver([])
    assert not r.enabled
    assert r.resolve("203.0.113.9", []) == CLIENT
    assert r.resolve("203.0.113.9", [ATTACKER_CHOICE.encode()]) == CLIENT
    assert r.resolve("203.0.113.9", [b"10.0.0.1", b"127.0.0.1"]) == CLIENT
    assert r.resolve("::ffff:203.0.113.9", [b"1.1.1.1"]) == CLIENT
    assert r.resolve(None, [b"1.1.1.1"]) is None  # no peer (a unix socket): unknown, never the header
    assert r.resolve("garbage", [b"1.1.1.1"]) is None


def test_an_untrusted_peer_is_the_client_whatever_it_sends() -> None:
    r = ClientResolver(["10.0.0.0/8"])
    assert r.enabled
    assert r.resolve("203.0.113.9", [ATTACKER_CHOICE.encode()]) == CLIENT
    assert r.resolve("203.0.113.9", [b"10.0.0.1"]) == CLIENT


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        # One trusted proxy appends the client.
        ("10.0.0.1", [b"203.0.113.9"], "203.0.113.9"),
        # A client-forged entry sits left of the real client: never read.
        ("10.0.0.1", [b"198.51.100.66, 203.0.113.9"], "203.0.113.9"),
        ("10.0.0.1", [b"198.51.100.66,203.0.113.9"], "203.0.113.9"),
        # Trusted hops on the right are skipped.
        ("10.0.0.1", [b"198.51.100.66, 203.0.113.9, 10.0.0.7, 10.0.0.8"], "203.0.113.9"),
        # A forged trusted-looking entry left of the client changes nothing.
        ("10.0.0.1", [b"10.0.0.99, 203.0.113.9"], "203.0.113.9"),
        # Every hop trusted: the leftmost is the best we know.
        ("10.0.0.1", [b"10.0.0.5, 10.0.0.6"], "10.0.0.5"),
        # Several header lines are one list, in order (RFC 9110 5.3).
        ("10.0.0.1", [b"198.51.100.66", b"203.0.113.9"], "203.0.113.9"),
        ("10.0.0.1", [b"198.51.100.66", b"203.0.113.9, 10.0.0.3"], "203.0.113.9"),
        ("10.0.0.1", [b"203.0.113.9", b"10.0.0.3"], "203.0.113.9"),
        # IPv6 clients and IPv4-mapped hops and peers.
        ("10.0.0.1", [b"2001:db8::9"], "2001:db8::9"),
        ("::ffff:10.0.0.1", [b"203.0.113.9"], "203.0.113.9"),
        ("10.0.0.1", [b"203.0.113.9, ::ffff:10.0.0.4"], "203.0.113.9"),
        ("10.0.0.1", [b"::ffff:203.0.113.9"], "203.0.113.9"),
        # No header from a trusted proxy: the proxy itself.
        ("10.0.0.1", [], "10.0.0.1"),
    ],
)
def test_trusted_proxies_read_x_forwarded_for_from_the_right(peer: str, xff: list[bytes], expected: str) -> None:
    r = ClientResolver(["10.0.0.0/8", "::ffff:10.0.0.0/104"])
    assert r.resolve(peer, xff) == ipaddress.ip_address(expected)


@pytest.mark.parametrize(
    "xff",
    [
        [b"203.0.113.9:443"],  # port
        [b"198.51.100.66, 203.0.113.9:443"],
        [b"[2001:db8::9]"],  # brackets
        [b"[2001:db8::9]:443"],
        [b"198.51.100.66, garbage"],
        [b"198.51.100.66, unknown"],
        [b"198.51.100.66, _hidden"],
        [b"198.51.100.66,"],  # empty entries
        [b"198.51.100.66, , 10.0.0.5"],
        [b""],
        [b","],
        [b"198.51.100.66", b""],  # an empty second header line
        [b"198.51.100.66 203.0.113.9"],
        [b"for=198.51.100.66"],
        [b"198.51.100.66;203.0.113.9"],
        [b"198.51.100.66\xff"],  # not ASCII
        [b"\xc3\xa9"],
        [b"198.51.100.66, 203.0.113.9\x00"],
        [b"fe80::1%eth0"],
        [b"192.0.2.01"],
        [b"0xc0.0.2.1"],
        [b"1" * 5000],
    ],
)
def test_malformed_forwarded_for_never_yields_a_spoofed_address(xff: list[bytes]) -> None:
    r = ClientResolver(["10.0.0.0/8"])
    got = r.resolve("10.0.0.1", xff)
    # Unknown (fails every allowlist): never the forged 198.51.100.66, never a guess.
    assert got is None


def test_is_trusted() -> None:
    r = ClientResolver(["10.0.0.0/8", "2001:db8::/32"])
    assert r.is_trusted(V4("10.1.1.1"))
    assert r.is_trusted(parse_address("::ffff:10.1.1.1"))
    assert r.is_trusted(V6("2001:db8::1"))
    assert not r.is_trusted(V4("11.1.1.1"))
    assert not r.is_trusted(None)
    assert not ClientResolver([]).is_trusted(V4("10.1.1.1"))


def test_bad_trusted_proxy_entries_are_refused() -> None:
    with pytest.raises(ValueError, match="'10.0.0.0/33'"):
        ClientResolver(["10.0.0.0/33"])


_entry = st.one_of(
    st.sampled_from(["203.0.113.9", "198.51.100.66", "10.0.0.5", "::ffff:10.0.0.6", "2001:db8::9", "", " ",
                     "unknown", "[::1]", "1.2.3.4:80", "10.0.0.7:80", "::ffff:203.0.113.10"]),
    st.text(alphabet="0123456789abcdef.:[]% ,", max_size=20),
    st.binary(max_size=12).map(lambda b: b.decode("latin-1")),
)
_header_values = st.lists(st.lists(_entry, max_size=5).map(lambda e: ",".join(e).encode("latin-1")), max_size=3)


@settings(max_examples=200, deadline=None)
@given(peer=st.sampled_from(["10.0.0.1", "203.0.113.1", "::ffff:10.0.0.2", "2001:db8::1", "bad"]),
       xff=_header_values)
def test_property_resolve_never_raises_and_never_invents_an_address(peer: str, xff: list[bytes]) -> None:
    r = ClientResolver(["10.0.0.0/8"])
    got = r.resolve(peer, xff)
    peer_addr = parse_address(peer)
    if not r.is_trusted(peer_addr) or not xff:
        assert got == peer_addr
        return
    if got is None:
        return
    entries = [parse_address(e) for e in b",".join(xff).decode("latin-1").split(",")]
    # Every entry right of the chosen one parsed and is a trusted proxy; the chosen one is untrusted, or it is
    # the leftmost entry of an all-trusted chain.
    assert got in entries
    if r.is_trusted(got):
        assert got == entries[0] and all(e is not None and r.is_trusted(e) for e in entries)
    else:
        i = len(entries) - 1 - entries[::-1].index(got)
        assert all(e is not None and r.is_trusted(e) for e in entries[i + 1:])
