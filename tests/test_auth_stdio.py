"""Auth on the stdio front: the key from WIRE_GATEWAY_KEY, each request checked, the process
kept up when the key is missing, bad, outside its project or revoked while it runs."""
from __future__ import annotations

import json
import time
from pathlib import Path

from gateway import PY, LineClient, fixture, text_of

from wire_gateway.auth.backends import SqliteBackend
from wire_gateway.auth.model import ToolRule
from wire_gateway.auth.tenancy import Tenancy


def setup(tmp_path: Path) -> tuple[Path, Tenancy, str, str]:
    servers = {"echo": fixture("echo"), "other": fixture("echo", "--name", "other")}
    config = tmp_path / "gw.json"
    config.write_text(json.dumps({"servers": servers, "auth": {"mode": "keys"}}))
    t = Tenancy(SqliteBackend(str(tmp_path / "auth.sqlite3")), servers)
    t.create_project("team", ["echo"], {"echo": ToolRule(deny=("add",))})
    t.create_project("others", ["other"])
    t.create_user("alice")
    return config, t, t.create_key("team", "alice")[1], t.create_key("others", "alice")[1]


def stdio(config: Path, tmp_path: Path, key: str | None, *args: str) -> LineClient:
    argv = [PY, "-m", "wire_gateway", "stdio", "--config", str(config), *args]
    return LineClient(argv, tmp_path / "gw.log", env={"WIRE_GATEWAY_KEY": key} if key else {"WIRE_GATEWAY_KEY": ""})


def test_a_good_key_serves_and_its_project_decides(tmp_path: Path) -> None:
    config, t, key, _ = setup(tmp_path)
    client = stdio(config, tmp_path, key, "--server", "echo")
    try:
        assert client.initialize()["result"]["serverInfo"]
        names = [x["name"] for x in client.request("tools/list")["result"]["tools"]]
        assert "echo" in names and "add" not in names
        assert text_of(client.call("echo", {"text": "hi"})) == "hi"
        assert client.call("add", {"a": 1, "b": 2})["error"]["message"] == "Unknown tool: add"
        t.revoke_key(key[3:15])
        time.sleep(1.0)
        refused = client.call("echo", {"text": "again"})["error"]
        assert refused["code"] == -31007 and "revoked" in refused["message"]
        assert "WIRE_GATEWAY_KEY" in refused["message"]
        assert client.proc.poll() is None
    finally:
        assert client.close() == 0
    assert key not in client.log_text() and key[:15] in client.log_text()


def test_no_key_or_another_project_gets_errors_and_the_process_stays(tmp_path: Path) -> None:
    config, _, _, other_key = setup(tmp_path)
    client = stdio(config, tmp_path, None, "--server", "echo")
    try:
        for _ in range(3):
            err = client.initialize()["error"]
            assert err["code"] == -31007 and "set WIRE_GATEWAY_KEY" in err["message"]
        assert client.proc.poll() is None
    finally:
        assert client.close() == 0
    client = stdio(config, tmp_path, other_key, "--server", "echo")
    try:
        err = client.initialize()["error"]
        assert "project 'others' does not include server 'echo'" in err["message"]
    finally:
        assert client.close() == 0
    # The aggregate over stdio: only the key's project's servers.
    client = stdio(config, tmp_path, other_key, "--aggregate")
    try:
        client.initialize()
        names = [x["name"] for x in client.request("tools/list")["result"]["tools"]]
        assert names and all(n.startswith("other__") for n in names)
    finally:
        assert client.close() == 0
    assert other_key not in client.log_text()

