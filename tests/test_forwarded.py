"""The caller's address behind a load balancer: `X-Forwarded-For`, believed only from
`http.trusted_proxies` (wire/forwarded.py).

It matters beyond the audit log: failed authentications are budgeted per address, so a gateway
that took the balancer's address for everyone's would let one guessing client lock out every
caller behind the balancer, and one that believed any client's header would let a guesser
dodge its budget by making up addresses.
"""
from __future__ import annotations

import ipaddress
from pathlib import Path

import httpx
import pytest
from gateway import fixture
from http_gateway import HttpGateway
from test_auth_http import INIT
from test_http_front import ACCEPT

from wire_gateway.auth.backends import SqliteBackend
from wire_gateway.auth.tenancy import Tenancy
from wire_gateway.config.loader import ConfigError, load_config
from wire_gateway.wire.forwarded import TrustedProxies, parse_networks

PEER = ("10.0.0.5", 41000)
BALANCERS = TrustedProxies(parse_networks(["10.0.0.0/24", "::1"]))


@pytest.mark.parametrize(("peer", "headers", "expected"), [
    (PEER, [], "10.0.0.5"),                                          # no header: the balancer itself
    (PEER, ["203.0.113.9"], "203.0.113.9"),
    (PEER, ["198.51.100.1, 203.0.113.9"], "203.0.113.9"),            # the left part is the client's word
    (PEER, ["198.51.100.1", "203.0.113.9"], "203.0.113.9"),          # several headers are one list
    (PEER, ["203.0.113.9, 10.0.0.7"], "203.0.113.9"),                # a chain of trusted proxies is walked
    (PEER, ["10.0.0.8, 10.0.0.7"], "10.0.0.8"),                      # all trusted: the farthest
    (PEER, ["junk, 10.0.0.7"], "10.0.0.7"),                          # junk ends the walk at the last proxy
    (PEER, ["203.0.113.9, unknown"], "10.0.0.5"),
    (PEER, ["203.0.113.9:5555"], "203.0.113.9"),                     # with a port
    (PEER, ["[2001:db8::1]:443"], "2001:db8::1"),
    (PEER, ["2001:db8::2"], "2001:db8::2"),
    (("::ffff:10.0.0.5", 1), ["203.0.113.9"], "203.0.113.9"),        # a v4-mapped peer is the v4 address
    (("::1", 1), ["203.0.113.9"], "203.0.113.9"),
    (("192.0.2.1", 1), ["203.0.113.9"], "192.0.2.1"),                # not a trusted peer: header ignored
    (None, ["203.0.113.9"], "-"),
])
def test_client_address(peer: tuple[str, int] | None, headers: list[str], expected: str) -> None:
    assert BALANCERS.client(peer, headers) == expected


def test_no_trusted_proxies_ignores_the_header() -> None:
    assert TrustedProxies().client(PEER, ["203.0.113.9"]) == "10.0.0.5"


def test_config_names_a_bad_entry(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    servers = '{"servers": {"e": {"command": "x"}}, '
    path.write_text(servers + '"http": {"trusted_proxies": ["10.0.0.0/8", "balancer.local"]}}')
    with pytest.raises(ConfigError, match=r"trusted_proxies\[1\].*'balancer.local' is not an IP address"):
        load_config(str(path))
    path.write_text(servers + '"http": {"trusted_proxies": ["10.0.0.0/8", "::1"]}}')
    assert load_config(str(path)).http.trusted_proxies == ("10.0.0.0/8", "::1")
    assert parse_networks(["10.1.2.3/8"]) == (ipaddress.ip_network("10.0.0.0/8"),)


def _gateway(tmp_path: Path, trusted: list[str]) -> tuple[HttpGateway, str]:
    servers = {"echo": fixture("echo")}
    tenancy = Tenancy(SqliteBackend(str(tmp_path / "auth.sqlite3")), servers)
    tenancy.create_project("team", ["echo"])
    tenancy.create_user("alice")
    key = tenancy.create_key("team", "alice")[1]
    auth = {"mode": "keys", "failed_attempts": {"rate": 0.01, "burst": 3}}
    return HttpGateway(tmp_path, servers, auth=auth, http={"trusted_proxies": trusted}), key


def _post(gw: HttpGateway, key: str, forwarded_for: str) -> httpx.Response:
    headers = {**ACCEPT, "authorization": f"Bearer {key}", "x-forwarded-for": forwarded_for}
    return httpx.post(gw.url("echo"), json=INIT, headers=headers, timeout=20)


def test_a_guesser_behind_the_balancer_is_limited_alone(tmp_path: Path) -> None:
    gw, key = _gateway(tmp_path, ["127.0.0.1"])
    guess = "wg_abcdefghijkm_" + "x" * 43
    try:
        codes = [_post(gw, guess, "203.0.113.9").status_code for _ in range(4)]
        assert codes == [401, 401, 401, 429]
        assert _post(gw, guess, "198.51.100.1, 203.0.113.9").status_code == 429   # the left part is not believed
        assert _post(gw, guess, "198.51.100.7").status_code == 401                 # another caller: its own budget
        assert _post(gw, key, "198.51.100.7").status_code == 200
    finally:
        gw.stop()
    log = gw.log()
    assert "address=203.0.113.9" in log and "address=198.51.100.7" in log and "address=198.51.100.1" not in log
    assert key not in log and guess not in log


def test_a_made_up_header_from_an_untrusted_peer_changes_nothing(tmp_path: Path) -> None:
    gw, _ = _gateway(tmp_path, [])
    guess = "wg_abcdefghijkm_" + "y" * 43
    try:
        codes = [_post(gw, guess, f"203.0.113.{i}").status_code for i in range(4)]
        assert codes == [401, 401, 401, 429]           # one address, 127.0.0.1, whatever the header says
    finally:
        gw.stop()
    log = gw.log()
    assert "address=127.0.0.1" in log and "203.0.113." not in log
