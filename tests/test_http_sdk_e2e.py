"""The official SDK client over Streamable HTTP, through `wire-gateway serve`, to an
SDK-built server over stdio: the same results as a direct connection, in every era."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from http_gateway import HttpGateway
from mcp.client.streamable_http import streamable_http_client
from test_sdk_e2e import SDK_SERVER, check_scenario, direct_target, era_params, run_logged, run_scenario

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.anyio
@era_params
async def test_sdk_client_over_http_matches_direct(mode: str, tmp_path: Path) -> None:
    direct = await run_logged(direct_target(), mode, tmp_path / "server-stderr.log")
    gateway = HttpGateway(tmp_path, {"sdk": {"command": sys.executable, "args": [str(SDK_SERVER)],
                                             "cwd": str(REPO_ROOT)}})
    try:
        proxied = await run_scenario(streamable_http_client(gateway.url("sdk")), mode)
    except BaseException:
        print(gateway.log())
        raise
    finally:
        assert gateway.stop() == 0
    check_scenario(proxied, mode)
    for key, expected in direct.items():
        assert proxied[key] == expected, f"scenario step {key!r} differs through the HTTP gateway"
    assert proxied == direct
