"""Auth shared through Redis: two gateways, one set of keys and one rate-limit budget.

Keys are made in Redis (as `wire-gateway keys create` does with a Redis store); both gateways
accept them, both refuse a revoked key within a second (the change is announced on the store's
channel), and a project's limit is one budget however the requests are spread.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
from gateway import fixture
from http_gateway import HttpGateway
from test_auth_http import INIT
from test_http_front import ACCEPT
from test_policy_redis import RedisProcess

from wire_gateway.auth.backends import RedisBackend
from wire_gateway.auth.model import RateLimit
from wire_gateway.auth.tenancy import Tenancy


def post(gw: HttpGateway, key: str) -> httpx.Response:
    return httpx.post(gw.url("echo"), json=INIT, headers={**ACCEPT, "authorization": f"Bearer {key}"}, timeout=20)


def test_two_gateways_share_keys_revocation_and_budgets(tmp_path: Path, redis_server: RedisProcess) -> None:
    prefix = f"wg{os.urandom(3).hex()}:"
    servers = {"echo": fixture("echo")}
    tenancy = Tenancy(RedisBackend(redis_server.url, prefix, "redis"), servers)
    tenancy.create_project("team", ["echo"])
    tenancy.create_project("metered", ["echo"], rate_limit=RateLimit(0.01, 3))
    tenancy.create_user("alice")
    key = tenancy.create_key("team", "alice")[1]
    metered = tenancy.create_key("metered", "alice")[1]
    store = {"backend": "redis", "url": redis_server.url, "prefix": prefix}
    gateways = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        gateways.append(HttpGateway(tmp_path / name, servers, auth={"mode": "keys"}, store=store))
    a, b = gateways
    try:
        assert post(a, key).status_code == 200 and post(b, key).status_code == 200
        late = tenancy.create_key("team", "alice")[1]          # made after both started
        assert post(b, late).status_code == 200
        # One budget of 3 for the metered key, spread over both gateways.
        codes = [post(gw, metered).status_code for gw in (a, b, a, b)]
        assert codes == [200, 200, 200, 429]
        limited = post(a, metered)
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert post(a, key).status_code == 200                 # another caller is unaffected
        # Revoked through the store (as `keys revoke` does): refused by both within a second (the
        # issue's bound), since the change is announced on the store's channel, not polled for.
        tenancy.revoke_key(key[3:15])
        revoked = time.monotonic()
        while time.monotonic() < revoked + 3.0 and (post(a, key).status_code, post(b, key).status_code) != (401, 401):
            time.sleep(0.02)
        took = time.monotonic() - revoked
        assert post(a, key).status_code == 401 and post(b, key).status_code == 401
        assert took < 1.0, f"revocation took {took:.2f} s to reach both gateways"
    finally:
        for gw in gateways:
            gw.stop()
    for gw in gateways:
        for secret in (key, metered, late):
            assert secret not in gw.log()
    r = tenancy.backend._r
    raw = b"".join(v for k in r.keys(prefix + "*") if r.type(k) == b"hash" for v in r.hvals(k))
    assert key.encode() not in raw and metered.encode() not in raw
