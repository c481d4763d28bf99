"""Secrets in what the gateway itself writes: its error answers (`data.stderrTail`, messages that
quote an upstream), its log, /status and dumps. Secrets by shape (`api_key=...`, `password: ...`,
`Bearer ...`) and by value (configured `env` values from `${VAR}`, `headers` values) are masked in
all of them, the same way; frames forwarded between client and server are not touched (except in
the dump). First the pieces in-process, then the whole over HTTP and over stdio."""
from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from gateway import MODERN_META, SERVERS, fixture_module, gateway, write_config
from http_gateway import HttpGateway

from wire_gateway.admin.app import serve_admin
from wire_gateway.config import parse_config, register_secrets
from wire_gateway.dump.mask import FrameMasker
from wire_gateway.telemetry import masking
from wire_gateway.telemetry.masking import SECRETS, Masker, SecretValues
from wire_gateway.wire import errors

leaky = fixture_module("leaky")
ENV_SECRET = "vault-s.Zx81QpLmN0"          # what ${MY_SECRET} expands to: printed with no keyword
UPSTREAM_TOKEN = "upstream-tok-77aa99"     # a url server's Authorization header, from ${UPSTREAM_TOKEN}
UPSTREAM_PASSWORD = "pw-from-the-error-page"
SHAPED = (leaky.API_KEY, leaky.PASSWORD, leaky.BEARER, leaky.BEARER[4:])
ALL_SECRETS = (*SHAPED, ENV_SECRET, UPSTREAM_TOKEN, UPSTREAM_PASSWORD)


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    """The registry and the error filter are process-wide: leave them as other tests expect."""
    SECRETS.clear()
    yield
    SECRETS.clear()
    errors.set_text_filter(None)
    masking.mask.set_patterns(())


def leaked(text: str) -> list[str]:
    return [s for s in ALL_SECRETS if s in text]


# ---- the pieces -------------------------------------------------------------------------------

def test_secret_values_are_masked_by_value_and_short_ones_ignored() -> None:
    values = SecretValues()
    values.add("abc12")                           # too short: would mask half the log
    values.add(ENV_SECRET)
    values.add(ENV_SECRET + "-longer")            # a secret containing another is masked whole
    values.add_credential(f"Bearer {UPSTREAM_TOKEN}")
    m = Masker(secrets=values)
    text = m(f"session {ENV_SECRET}-longer and {ENV_SECRET}; abc12; sent {UPSTREAM_TOKEN} in a query")
    assert text == "session *** and ***; abc12; sent *** in a query"
    # Registered values go first: the bearer rule would otherwise leave four characters of one.
    assert m(f"Authorization: Bearer {ENV_SECRET}") == "Authorization: Bearer ***"
    assert m(f"Authorization: Bearer {UPSTREAM_TOKEN}") == "Authorization: ***"   # the whole header value
    assert Masker(secrets=None)(ENV_SECRET) == ENV_SECRET


@pytest.mark.parametrize("text", [
    "API_KEY=abcdef123", "Password : abcdef123", "authorization: BASIC dXNlcjpwYXNz", "redis://:abcdef123@h",
    "X-Api-\u212aey: abcdef123",                  # KELVIN SIGN: IGNORECASE reads it as k
])
def test_the_cheap_pre_check_never_skips_a_rule(text: str) -> None:
    masked = Masker(secrets=None)(text)
    assert "abcdef123" not in masked and "dXNlcjpwYXNz" not in masked, masked


def test_plain_text_is_left_alone() -> None:
    text = "server echo: pid 123 ended (exit status 3) after 0.4s; tools/call not answered"
    assert Masker(secrets=None)(text) == text


def test_error_frames_go_through_the_process_masker() -> None:
    SECRETS.add(ENV_SECRET)
    tail = leaky.stderr_lines(ENV_SECRET)
    masking.configure([r"corp-\d{6}"])
    raw = errors.error_frame(7, errors.UPSTREAM_EXITED, f"server quoted {ENV_SECRET} and corp-123456",
                             {"server": "leaky", "stderrTail": tail, "n": 3})
    frame = json.loads(raw)
    assert leaked(raw.decode()) == [] and "corp-123456" not in raw.decode()
    assert frame["id"] == 7 and frame["error"]["data"]["n"] == 3 and frame["error"]["data"]["source"] == "wire-gateway"
    assert frame["error"]["message"] == "server quoted *** and ***"
    assert frame["error"]["data"]["stderrTail"] == [
        "leaky: config api_key=*** region=eu-west-1", "leaky: db ready, password: ***",
        "leaky: upstream said Authorization: Bearer eyJh***", "leaky: vault session *** opened",
        "leaky: crashing on purpose"]
    # The id is the client's, and must come back as it was sent; nothing suspect: the same objects.
    assert json.loads(errors.error_frame(f"password={ENV_SECRET}", errors.INVALID_REQUEST, "m"))["id"] == \
        f"password={ENV_SECRET}"
    data = {"server": "echo", "stderrTail": ["ready"]}
    masking.mask.set_patterns(())                 # (a configured pattern makes every error suspect)
    assert masking.mask.error("plain", data)[1] is data


def test_register_secrets_takes_env_expansions_and_headers() -> None:
    config = parse_config({"servers": {
        "a": {"command": "x", "env": {"SECRET_TOKEN": "${MY_SECRET}", "MODE": "${MODE:-production-mode}",
                                      "LITERAL": "written-in-the-config", "SHORT": "${SHORT}",
                                      "URL": "https://user:${DB_PASS}@db.example/x"}},
        "b": {"url": "https://h.example/mcp", "headers": {"Authorization": "Bearer ${UPSTREAM_TOKEN}",
                                                          "X-Client": "literal-client-id"}}}})
    register_secrets(config.servers.values(), {"MY_SECRET": ENV_SECRET, "SHORT": "abc",
                                               "DB_PASS": "db-pass-123", "UPSTREAM_TOKEN": UPSTREAM_TOKEN})
    assert set(SECRETS) == {ENV_SECRET, "db-pass-123", f"Bearer {UPSTREAM_TOKEN}", UPSTREAM_TOKEN,
                            "literal-client-id"}


def test_dump_masker_masks_secret_values_in_any_spelling() -> None:
    quoted = 'tok"en\\with-quote'
    m = FrameMasker((), [ENV_SECRET, quoted])
    assert m.has_patterns                         # the exact path: every frame is tested
    spelled = ENV_SECRET.replace("Z", "\\u005a")
    for raw in (json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"text": f"is {ENV_SECRET}!"}}).encode(),
                b'{"jsonrpc":"2.0","id":1,"result":{"text":"' + spelled.encode() + b'"}}',
                json.dumps({"jsonrpc": "2.0", "id": 2, "result": {"text": quoted}}).encode(),
                b"not json at all " + ENV_SECRET.encode()):
        assert m.suspects([raw]) == {0} or not raw.startswith(b"{"), raw
        masked, changed = m.mask_raw(raw)
        assert changed and ENV_SECRET.encode() not in masked and b"with-quote" not in masked, raw
        if raw.startswith(b"{"):
            json.loads(masked)
    clean = b'{"jsonrpc":"2.0","id":3,"result":{"text":"nothing to see"}}'
    assert m.suspects([clean]) == set() and m.mask_raw(clean) == (clean, False)
    # A batch: each value found in whichever frames hold it (twice in one, in the last one).
    holds = json.dumps({"jsonrpc": "2.0", "id": 4, "result": {"a": ENV_SECRET, "b": ENV_SECRET}}).encode()
    batch = [holds, clean, clean, json.dumps({"jsonrpc": "2.0", "id": 5, "result": quoted}).encode(), clean, holds]
    assert m.suspects(batch) == {0, 3, 5}
    assert not FrameMasker().has_patterns         # no secrets configured: the default (C) path


@pytest.mark.anyio
async def test_status_is_masked() -> None:
    SECRETS.add(ENV_SECRET)
    doc = {"servers": {"r": {"shared": {"lastExit": f"answered HTTP 500: password: {UPSTREAM_PASSWORD}",
                                        "problem": f"server/discover failed (vault {ENV_SECRET})"}}},
           "sessions": [{"clientInfo": {"name": "ok", "version": "1"}}]}
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_admin, lambda: doc, "127.0.0.1", 0, shutdown)
        async with httpx.AsyncClient(timeout=5) as client:
            r = await client.get(f"http://127.0.0.1:{port}/status")
        shutdown.set()
    assert r.status_code == 200 and leaked(r.text) == []
    shared = r.json()["servers"]["r"]["shared"]
    assert shared == {"lastExit": "answered HTTP 500: password: ***", "problem": "server/discover failed (vault ***)"}
    assert r.json()["sessions"] == doc["sessions"]


# ---- end to end ---------------------------------------------------------------------------------

class ErrorPage(ThreadingHTTPServer):
    """A remote "MCP server" that answers every request with a 500 page quoting its credentials."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ErrorPageHandler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/mcp"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class ErrorPageHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = (f"db down; password: {UPSTREAM_PASSWORD}; you sent {self.headers.get('authorization')}; "
                f"vault {ENV_SECRET}").encode()
        self.send_response(500)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


LEAKY = {"command": sys.executable, "args": [str(SERVERS / "leaky.py")], "env": {"SECRET_TOKEN": "${MY_SECRET}"},
         "restart": {"initial_delay": 0.05}}
INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "masking", "version": "1"}}
ACCEPT = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


def check_gateway_outputs(log_text: str, dump_text: str) -> None:
    """The log and the dump hold no secret, and still what is not one."""
    assert leaked(log_text) == [], leaked(log_text)
    assert "[leaky stderr] leaky: db ready, password: ***" in log_text
    assert "leaky: vault session *** opened" in log_text and "region=eu-west-1" in log_text
    assert leaked(dump_text) == [], leaked(dump_text)
    assert "leaky: vault session *** opened" in dump_text      # the -31001 answer, as dumped
    assert "region=eu-west-1" in dump_text


def check_crash_answer(answer: dict[str, Any]) -> None:
    assert answer["error"]["code"] == errors.UPSTREAM_EXITED, answer
    text = json.dumps(answer)
    assert leaked(text) == [], leaked(text)
    tail = answer["error"]["data"]["stderrTail"]
    assert tail[0] == "leaky: config api_key=*** region=eu-west-1"
    assert tail[-2:] == ["leaky: vault session *** opened", "leaky: crashing on purpose"]
    for words in leaky.NOT_SECRET:
        assert words in text


def test_http_gateway_masks_stderr_and_secret_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SECRET", ENV_SECRET)
    monkeypatch.setenv("UPSTREAM_TOKEN", UPSTREAM_TOKEN)
    page = ErrorPage()
    dump = tmp_path / "dump.jsonl"
    remote = {"url": page.url, "headers": {"Authorization": "Bearer ${UPSTREAM_TOKEN}"}, "timeout": 5}
    gw = HttpGateway(tmp_path, {"leaky": LEAKY, "remote": remote}, http={"admin_port": 0},
                     dump={"path": str(dump)})
    try:
        deadline = time.monotonic() + 10
        while not (admin := re.search(r"control plane on http://[^:]+:(\d+)/status", gw.log())):
            assert time.monotonic() < deadline, gw.log()
            time.sleep(0.05)
        admin_url = f"http://127.0.0.1:{admin.group(1)}/status"
        with httpx.Client(timeout=10) as client:
            opened = client.post(gw.url("leaky"), json={"jsonrpc": "2.0", "id": 1, "method": "initialize",
                                                         "params": INIT}, headers=ACCEPT)
            assert opened.status_code == 200, opened.text
            headers = {**ACCEPT, "mcp-session-id": opened.headers["mcp-session-id"],
                       "mcp-protocol-version": "2025-11-25"}
            client.post(gw.url("leaky"), json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                        headers=headers)

            def call(req_id: int, tool: str, args: dict[str, Any]) -> dict[str, Any]:
                r = client.post(gw.url("leaky"), headers=headers, json={
                    "jsonrpc": "2.0", "id": req_id, "method": "tools/call",
                    "params": {"name": tool, "arguments": args}})
                assert r.status_code == 200, r.text
                return r.json()

            # The data plane is untouched: the server's own answers reach the client as they are.
            assert call(2, "echo", {"text": f"my {ENV_SECRET}"})["result"]["content"][0]["text"] == f"my {ENV_SECRET}"
            assert ENV_SECRET in call(3, "fail", {})["error"]["message"]
            # What the gateway says is masked.
            check_crash_answer(call(4, "leak", {}))

            # An upstream's error page quoted in the gateway's answer (a legacy session of its own) ...
            refused = client.post(gw.url("remote"), json={"jsonrpc": "2.0", "id": 5, "method": "initialize",
                                                           "params": INIT}, headers=ACCEPT).json()
            assert refused["error"]["code"] == errors.UPSTREAM_UNAVAILABLE, refused
            assert "HTTP 500" in refused["error"]["message"] and "db down; password: ***" in refused["error"]["message"]
            assert leaked(json.dumps(refused)) == [], refused
            # ... and in the shared upstream's lastExit (its server/discover probe got the page too).
            probed = client.post(gw.url("remote"), headers={
                **ACCEPT, "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/list"}, json={
                "jsonrpc": "2.0", "id": 6, "method": "tools/list", "params": {"_meta": MODERN_META}})
            assert leaked(probed.text) == [], probed.text

            status = client.get(admin_url)
            assert status.status_code == 200 and leaked(status.text) == [], status.text
            last_exit = status.json()["servers"]["remote"]["shared"]["lastExit"]
            assert "HTTP 500" in last_exit and "db down; password: ***" in last_exit, last_exit
    finally:
        code = gw.stop()
        page.stop()
    assert code == 0, gw.log()
    check_gateway_outputs(gw.log(), dump.read_text())
    assert "answered HTTP 500" in gw.log()


def test_stdio_gateway_masks_stderr_and_secret_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SECRET", ENV_SECRET)
    dump = tmp_path / "dump.jsonl"
    config = write_config(tmp_path, {"leaky": LEAKY})
    client = gateway(config, "leaky", tmp_path, "--dump", str(dump))
    try:
        client.request("initialize", INIT)
        client.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert client.call("echo", {"text": f"my {ENV_SECRET}"})["result"]["content"][0]["text"] == f"my {ENV_SECRET}"
        assert ENV_SECRET in client.call("fail")["error"]["message"]
        check_crash_answer(client.call("leak"))
        assert client.close() == 0
    finally:
        client.close()
    check_gateway_outputs(client.log_text(), dump.read_text())
