"""Shared pytest configuration for the wire-gateway test suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Backend for `@pytest.mark.anyio` tests: trio, like the gateway itself.

    The `mcp` SDK (client and stdio transport) is pure anyio and runs under trio.
    """
    return "trio"


@pytest.fixture(scope="module")
def url_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The HTTP echo fixture on a free port (one per test module): the `url` upstream of the
    contract suite and the combination matrix."""
    from matrix_scenario import UrlServer

    server = UrlServer(tmp_path_factory.mktemp("url-upstream"))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_server() -> Iterator[object]:
    """A real redis-server of this test's own, on a free port (test_policy_redis.RedisProcess)."""
    from test_policy_redis import RedisProcess

    server = RedisProcess()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="session")
def node() -> str:
    """The `node` binary with the TypeScript SDK client installed (test_ts_sdk.find_node)."""
    from test_ts_sdk import find_node

    return find_node()
