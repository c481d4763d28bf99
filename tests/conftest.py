"""Shared pytest configuration for the wire-gateway test suite."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Backend for `@pytest.mark.anyio` tests: trio, like the gateway itself.

    The `mcp` SDK (client and stdio transport) is pure anyio and runs under trio.
    """
    return "trio"
