"""Acceptance: the official SDK client against the aggregate of three servers (the demo echo
server and the SDK fixture over stdio, the raw HTTP echo fixture as a `url` upstream), through
`wire-gateway stdio` without --server and through `POST /mcp`, in the SDK's legacy mode and
in its default mode (which probes server/discover first and then runs the modern era).

It lists namespaced tools page by page (a small page size), calls one tool of each server,
reads a resource of each, gets prompts, receives a list change, then kills one server's
process and checks the other two keep working."""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from http_gateway import HttpGateway
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.subscriptions import ToolsListChanged
from test_http_upstream import http_echo

REPO_ROOT = Path(__file__).resolve().parents[1]
SDK_SERVER = REPO_ROOT / "fixtures" / "servers" / "sdk_server.py"
MODES = {"legacy": "legacy", "auto": "auto"}
STEP = 15.0
PAGE_SIZE = 4


def servers(web_url: str) -> dict[str, Any]:
    return {
        "echo": {"command": sys.executable, "args": ["-m", "wire_gateway.demo.echo"]},
        "sdk": {"command": sys.executable, "args": [str(SDK_SERVER)], "cwd": str(REPO_ROOT)},
        "web": {"url": web_url, "timeout": 5},
    }


async def all_pages(fetch: Any, key: str) -> tuple[list[Any], int]:
    """Every item of a paginated list, and how many pages it took."""
    items, cursor, pages = [], None, 0
    while True:
        with anyio.fail_after(STEP):
            page = await fetch(cursor)
        items += getattr(page, key)
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            return items, pages
        assert pages < 50, "the aggregate's cursors never end"


def text_of(result: Any) -> str:
    assert not getattr(result, "is_error", False), result
    return result.content[0].text


async def scenario(transport: Any, mode: str, kill: Any) -> dict[str, Any]:
    """Drive the aggregate; `kill()` ends one member's process and returns that member's name."""
    out: dict[str, Any] = {}
    notified: list[str] = []

    async def on_message(message: Any) -> None:
        method = getattr(message, "method", None) or getattr(getattr(message, "root", None), "method", None)
        if isinstance(method, str):
            notified.append(method)

    client = Client(transport, mode=mode, message_handler=on_message, read_timeout_seconds=STEP)
    with anyio.fail_after(120):
        async with client:
            out["protocol_version"] = client.protocol_version
            out["server_name"] = client.server_info.name
            tools, out["tool_pages"] = await all_pages(lambda c: client.list_tools(cursor=c), "tools")
            out["tools"] = [t.name for t in tools]

            out["echo"] = text_of(await client.call_tool("echo__echo", {"text": "to echo"}))
            out["sdk"] = text_of(await client.call_tool("sdk__add", {"a": 2, "b": 40}))
            out["web"] = text_of(await client.call_tool("web__echo", {"text": "to web"}))

            resources, _ = await all_pages(lambda c: client.list_resources(cursor=c), "resources")
            out["resources"] = sorted(str(r.uri) for r in resources)
            templates, _ = await all_pages(lambda c: client.list_resource_templates(cursor=c), "resource_templates")
            out["templates"] = [t.uri_template for t in templates]
            reads = {}
            for uri in ("echo://info", "info://server", "http-echo://info", "greeting://wire"):
                with anyio.fail_after(STEP):
                    reads[uri] = (await client.read_resource(uri)).contents[0].text
            out["reads"] = reads

            prompts, _ = await all_pages(lambda c: client.list_prompts(cursor=c), "prompts")
            out["prompts"] = sorted(p.name for p in prompts)
            with anyio.fail_after(STEP):
                got = await client.get_prompt("web__greet", {"name": "Ada"})
                out["prompt_web"] = got.messages[0].content.text
                got = await client.get_prompt("sdk__greet", {"name": "Ada"})
                out["prompt_sdk"] = got.messages[0].content.text

            # a list change from the echo server reaches the client (legacy: a notification; modern: listen)
            if mode == "legacy":
                await client.call_tool("echo__touch_tools", {})
                with anyio.fail_after(STEP):
                    while "notifications/tools/list_changed" not in notified:
                        await anyio.sleep(0.05)
                out["list_changed"] = True
            else:
                async with client.listen(tools_list_changed=True) as sub:
                    await client.call_tool("echo__touch_tools", {})
                    with anyio.fail_after(STEP):
                        event = await sub.__anext__()
                out["list_changed"] = isinstance(event, ToolsListChanged)

            # one member dies: the other two keep working
            killed = await anyio.to_thread.run_sync(kill)
            out["killed"] = killed
            survivors = {"echo": ("echo__echo", {"text": "still here"}), "sdk": ("sdk__echo", {"text": "still here"}),
                         "web": ("web__echo", {"text": "still here"})}
            out["after_kill"] = {}
            for name, (tool, args) in survivors.items():
                if name != killed:
                    with anyio.fail_after(STEP):
                        out["after_kill"][name] = text_of(await client.call_tool(tool, args))
            tools, _ = await all_pages(lambda c: client.list_tools(cursor=c, cache_mode="refresh"), "tools")
            out["tools_after_kill"] = [t.name for t in tools]
    return out


def check(out: dict[str, Any], mode: str) -> None:
    assert out["protocol_version"] == ("2025-11-25" if mode == "legacy" else "2026-07-28")
    assert out["server_name"] == "wire-gateway-aggregate"
    tools = out["tools"]
    assert {"echo__echo", "echo__touch_tools", "sdk__add", "sdk__ask_llm", "web__echo", "web__pid"} <= set(tools)
    assert len(tools) == len(set(tools)) == 9 + 6 + 3
    assert out["tool_pages"] == 3 + 2 + 1            # pages of 4: echo 9, sdk 6, web 2
    assert out["echo"] == "to echo" and out["sdk"] == "42" and out["web"] == "to web"
    assert {"echo://info", "info://server", "http-echo://info"} <= set(out["resources"])
    assert out["templates"] == ["greeting://{name}"]
    assert "fixture server" in out["reads"]["echo://info"]
    assert json.loads(out["reads"]["info://server"])["name"] == "sdk-fixture"
    assert "over HTTP" in out["reads"]["http-echo://info"]
    assert out["reads"]["greeting://wire"] == "Hello, wire!"
    assert out["prompts"] == ["echo__greet", "sdk__greet", "web__greet"]
    assert out["prompt_web"] == "Hello, Ada!" and "Ada" in out["prompt_sdk"]
    assert out["list_changed"] is True
    survivors = {"echo", "sdk", "web"} - {out["killed"]}
    assert out["after_kill"] == {name: "still here" for name in survivors}
    for name in survivors:
        assert any(t.startswith(f"{name}__") for t in out["tools_after_kill"])


def kill_echo(tmp_path: Path) -> Any:
    """Kill the demo echo server's process (the pid it reports) with SIGKILL."""
    def kill() -> str:
        os.kill(int((tmp_path / "echo.pid").read_text()), signal.SIGKILL)
        return "echo"
    return kill


@pytest.mark.anyio
@pytest.mark.parametrize("mode", list(MODES.values()), ids=list(MODES))
async def test_sdk_client_over_stdio_aggregate(mode: str, tmp_path: Path) -> None:
    web = http_echo(tmp_path)
    config = tmp_path / "aggregate.json"
    members = servers(web.url)
    # The echo server writes its pid where the test can find it, through a tiny wrapper.
    wrapper = tmp_path / "echo_with_pid.py"
    wrapper.write_text("import os, runpy, sys\n"
                       f"open({str(tmp_path / 'echo.pid')!r}, 'w').write(str(os.getpid()))\n"
                       "sys.argv = ['echo']\nrunpy.run_module('wire_gateway.demo.echo', run_name='__main__')\n")
    members["echo"] = {"command": sys.executable, "args": [str(wrapper)], "cwd": str(REPO_ROOT)}
    config.write_text(json.dumps({"servers": members, "aggregate": {"page_size": PAGE_SIZE}}))
    log_path = tmp_path / "gateway.log"
    params = StdioServerParameters(command=sys.executable, args=[
        "-m", "wire_gateway", "stdio", "--config", str(config), "--log-file", str(log_path)], cwd=str(REPO_ROOT))
    try:
        with open(tmp_path / "stderr.log", "w") as errlog:
            out = await scenario(stdio_client(params, errlog=errlog), mode, kill_echo(tmp_path))
        check(out, mode)
    except BaseException:
        print(log_path.read_text() if log_path.exists() else "(no gateway log)")
        raise
    finally:
        web.stop()
    assert "server echo: pid" in log_path.read_text()       # the supervisor saw the kill


@pytest.mark.anyio
@pytest.mark.parametrize("mode", list(MODES.values()), ids=list(MODES))
async def test_sdk_client_over_http_aggregate(mode: str, tmp_path: Path) -> None:
    web = http_echo(tmp_path)

    def kill_web() -> str:
        web.proc.send_signal(signal.SIGKILL)
        web.proc.wait(10)
        return "web"

    gateway = HttpGateway(tmp_path, servers(web.url), aggregate={"page_size": PAGE_SIZE})
    try:
        out = await scenario(streamable_http_client(f"{gateway.base}/mcp"), mode, kill_web)
        check(out, mode)
        assert not any(t.startswith("web__") for t in out["tools_after_kill"])
    except BaseException:
        print(gateway.log())
        raise
    finally:
        web.stop()
        assert gateway.stop() == 0
