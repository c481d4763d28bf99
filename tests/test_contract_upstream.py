"""The `Upstream` contract: one suite that every implementation passes, the way every trio stream
passes trio.testing's stream checks.

Implementations: the supervised process (`command` server), the HTTP upstream (`url` server), the
policy runner around each, and the aggregate with a member of each kind; the era bridge (a
legacy-only server behind the stdio front's choice, `bridge-command`); with auth, the policy
runner whose auth slot serves a caller's project (`auth-command`), and an HTTP upstream that
presents the gateway's own OAuth client credentials (`oauth-url`, against a local issuer); the
policy runner with guardrails on both sides (`guardrails-command`, `guardrails-url`); with tracing
on (`traced-command`, `traced-url`: the runner a server without policy gets then, its spans kept in
memory, one per tool request answered); a pool of three copies of a command server, each behind its
policy runner (`pool-command`). They run in this test's own trio loop with a recording
Sink standing in for the session; only the MCP servers behind them are real (the bundled echo
server as a subprocess, the HTTP echo fixture on a free port).

The contract, as sessions rely on it:
- every request gets exactly one answer: the bytes `request()` returns, or one frame through the sink;
- `era` and `tap` can be set (the aggregate sets a member's era; dumps set taps), and a set tap
  sees the request's server-side hops;
- `shutdown()` answers every request still pending;
- a request the client cancelled (`notifications/cancelled`) is not answered at all, so never twice;
- a request the server does not answer within the server's `timeout` gets an error, once;
- a second request with an id already in flight is refused at once, and the first still gets its one answer.
"""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from gateway import MODERN_META, PY, SERVERS

from wire_gateway.auth.context import CALLER
from wire_gateway.auth.directory import Principal
from wire_gateway.auth.model import Project, ToolRule
from wire_gateway.config import Config, parse_config
from wire_gateway.dump.tap import G2S, S2G
from wire_gateway.policy.services import Services
from wire_gateway.proxy.aggregate import Aggregate
from wire_gateway.proxy.route import member_factory, open_upstream
from wire_gateway.proxy.stdio_era import EraChoice
from wire_gateway.upstream.pool import PooledUpstream
from wire_gateway.upstream.protocol import Upstream
from wire_gateway.wire import jsonfast
from wire_gateway.wire.frame import Frame, Kind, decode

KINDS = ("command", "url", "policy-command", "policy-url", "aggregate-command", "aggregate-url", "auth-command",
         "oauth-url", "guardrails-command", "guardrails-url", "traced-command", "traced-url", "pool-command",
         "bridge-command")
# the guardrails kinds: the filter of the policy kinds, and detectors on both sides that the
# contract's traffic passes (a redaction rewrites what reaches the server, not who answers)
GUARDRAILS = {"input": [{"detectors": ["secrets"], "action": "block"}, {"detectors": ["pii"], "action": "redact"}],
              "output": [{"detectors": ["secrets", "injection"], "action": "redact"}]}
_ISSUER: Any = None      # the local OAuth issuer of the oauth-url kind, started on first use


@pytest.fixture(scope="module", autouse=True)
def _stop_issuer() -> Any:
    yield
    global _ISSUER
    if _ISSUER is not None:
        _ISSUER.stop()
        _ISSUER = None


def issuer() -> Any:
    global _ISSUER
    if _ISSUER is None:
        from oauth_server import OAuthServer

        _ISSUER = OAuthServer()
        _ISSUER.add_client("gw", "contract-secret", "mcp")
    return _ISSUER
ANSWER_TIMEOUT = 15.0


class RecordingSink:
    """The session's side of an upstream: every answer kept by id, in arrival order."""

    def __init__(self) -> None:
        self.answers: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        self.others: list[Frame] = []

    def server_frame(self, frame: Frame) -> None:
        if frame.kind is Kind.RESPONSE or frame.kind is Kind.ERROR:
            self.answers[frame.id].append(frame.msg)
        else:
            self.others.append(frame)

    def gateway_reply(self, req_id: Any, data: bytes) -> None:
        self.answers[req_id].append(jsonfast.loads(data))

    def flush(self) -> None:
        """Answers are recorded as they arrive."""

    async def wait_writable(self) -> None:
        """A test sink is never full."""

    async def answer(self, req_id: Any, timeout: float = ANSWER_TIMEOUT) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while not self.answers.get(req_id):
                await trio.sleep(0.01)
        return self.answers[req_id][0]


class RecordingTap:
    """A dump tap that keeps (server, direction, id) for every hook call."""

    def __init__(self, server: str = "", seen: list[tuple[str, str, Any]] | None = None) -> None:
        self.server = server
        self.seen: list[tuple[str, str, Any]] = [] if seen is None else seen

    def frame(self, direction: str, frame: Frame, policy: str | None = None) -> None:
        self.seen.append((self.server, direction, frame.id))

    def put(self, direction: str, raw: bytes, kind: Any = None, method: str | None = None, msg_id: Any = None,
            policy: str | None = None) -> None:
        self.seen.append((self.server, direction, msg_id))

    def gateway(self, direction: str, raw: bytes) -> None:
        self.seen.append((self.server, direction, None))

    def for_server(self, server: str, upstream: Any) -> RecordingTap:
        return RecordingTap(server, self.seen)



class Subject:
    """One implementation under test, with the way to name a tool through it."""

    def __init__(self, kind: str, url: str, sink: RecordingSink, timeout: float | None = None) -> None:
        self.kind = kind
        command = {"command": PY, "args": [str(SERVERS / "echo.py")]}
        server: dict[str, Any] = {"url": url} if kind.endswith("url") else dict(command)
        if timeout is not None:
            server["timeout"] = timeout
        if kind.startswith(("policy", "pool")):
            server = {**server, "tools": {"deny": ["add"]}}
        if kind.startswith("guardrails"):
            server = {**server, "tools": {"deny": ["add"]}, "guardrails": GUARDRAILS}
        if kind == "oauth-url":
            server["oauth"] = {"token_url": issuer().issuer + "/token", "client_id": "gw",
                               "client_secret": "contract-secret", "scope": "mcp"}
        doc: dict[str, Any] = {"servers": {"s": server}}
        if kind == "auth-command":
            doc["auth"] = {"mode": "keys"}
        if kind == "bridge-command":       # a legacy-only server, modern requests: the era bridge (stdio_era.py)
            doc = {"servers": {"s": {**server, "args": [str(SERVERS / "legacy_echo.py")], "era": "legacy"}}}
        if kind.startswith("aggregate"):
            doc = {"servers": {"s": {**server, "tools": {"deny": ["add"]}}, "p": command},
                   "aggregate": {"separator": "__"}}
        self.config: Config = parse_config(json.loads(json.dumps(doc)), base_dir=Path.cwd())
        self.services = Services(self.config)
        if kind.startswith("aggregate"):
            self.upstream: Upstream = Aggregate(self.config, sink, member_factory(self.config, self.services))
        elif kind == "pool-command":      # three copies, each behind its policy runner
            spec = self.config.servers["s"].resolved()
            self.upstream = PooledUpstream(
                "s", 3, lambda copy_sink: open_upstream(spec, self.config, copy_sink, self.services), sink)
        elif kind == "bridge-command":
            self.upstream = EraChoice(self.config.servers["s"].resolved(), self.config, sink, self.services)
        else:
            self.upstream = open_upstream(self.config.servers["s"].resolved(), self.config, sink, self.services)

    def tool(self, name: str) -> str:
        return f"s__{name}" if self.kind.startswith("aggregate") else name


def frame(req_id: Any, method: str, params: dict[str, Any] | None = None) -> Frame:
    msg = {"jsonrpc": "2.0", "id": req_id, "method": method, "params": {**(params or {}), "_meta": MODERN_META}}
    decoded = decode(jsonfast.dumps(msg))
    assert isinstance(decoded, Frame)
    return decoded


def notification(method: str, params: dict[str, Any]) -> Frame:
    decoded = decode(jsonfast.dumps({"jsonrpc": "2.0", "method": method, "params": params}))
    assert isinstance(decoded, Frame)
    return decoded


def send(up: Upstream, sink: RecordingSink, f: Frame) -> None:
    """What a session does with a request: hand it over, deliver an immediate answer, flush."""
    refused = up.request(f)
    if refused is not None:
        sink.gateway_reply(f.id, refused)
    up.flush()


def run(kind: str, url: str, body: Callable[[Subject, RecordingSink], Any], timeout: float | None = None) -> None:
    if kind.startswith("traced"):
        traced(kind, url, body, timeout)
        return

    async def main() -> None:
        if kind == "auth-command":     # the caller the fronts would have proven: its project hides `add`
            CALLER.set(Principal("wg_contract", "u", Project("m", ("*",), {"s": ToolRule(deny=("add",))})))
        sink = RecordingSink()
        subject = Subject(kind, url, sink, timeout)
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                await nursery.start(subject.upstream.run)
                try:
                    await body(subject, sink)
                finally:
                    await subject.upstream.shutdown()
                nursery.cancel_scope.cancel()
        for req_id, answers in sink.answers.items():
            assert len(answers) == 1, f"{req_id!r} was answered {len(answers)} times: {answers}"

    trio.run(main)


def traced(kind: str, url: str, body: Callable[[Subject, RecordingSink], Any], timeout: float | None) -> None:
    """The contract with tracing on for this process while the body runs (then off again), and a
    SERVER span for each tool request that was answered, and for no other request."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from wire_gateway.telemetry import context, tracing

    exporter = InMemorySpanExporter()
    t = tracing.setup(exporter=exporter)
    sinks: list[RecordingSink] = []
    tools: set[str] = set()

    async def recorded(subject: Subject, sink: RecordingSink) -> Any:
        sinks.append(sink)
        request = subject.upstream.request

        def noting(f: Frame) -> Any:
            if (f.method or "").startswith("tools/"):
                tools.add(str(f.id))
            return request(f)

        subject.upstream.request = noting      # type: ignore[method-assign]
        await body(subject, sink)

    try:
        run(kind.split("-")[1], url, recorded, timeout)
    finally:
        t.provider.force_flush()
        t.provider.shutdown()
        context.TRACER = None
        context.TRACING = context.ACTIVE = False
    [sink] = sinks
    spans = [x for x in exporter.get_finished_spans() if x.kind.name == "SERVER"]
    traced_ids = {str((x.attributes or {}).get("jsonrpc.request.id")) for x in spans}
    answered = {str(i) for i, msgs in sink.answers.items() if msgs} & tools
    assert answered <= traced_ids <= tools, (answered, traced_ids, tools)
    for span in spans:
        assert (span.attributes or {}).get("wire_gateway.server") == "s", span


@pytest.mark.parametrize("kind", KINDS)
def test_every_request_gets_exactly_one_answer(kind: str, url_server: str) -> None:
    async def body(subject: Subject, sink: RecordingSink) -> None:
        up = subject.upstream
        send(up, sink, frame("list", "tools/list"))
        send(up, sink, frame("call", "tools/call", {"name": subject.tool("echo"), "arguments": {"text": "hi"}}))
        send(up, sink, frame("hidden", "tools/call", {"name": subject.tool("add"), "arguments": {"a": 1, "b": 2}}))
        send(up, sink, frame("unknown", "wg/no-such-method"))
        send(up, sink, frame(7, "ping"))
        for req_id in ("list", "call", "hidden", "unknown", 7):
            await sink.answer(req_id)
        assert sink.answers["call"][0]["result"]["content"][0]["text"] == "hi"
        assert "error" in sink.answers["unknown"][0]
        if kind not in ("command", "url", "oauth-url", "traced-command", "traced-url", "bridge-command"):
            # a policy hides `add`
            assert sink.answers["hidden"][0]["error"]["code"] == -32602
        if kind == "oauth-url":                       # the server was reached with the gateway's own token
            assert issuer().issued
        await trio.sleep(0.3)                         # nothing more arrives for any of them

    run(kind, url_server, body)


@pytest.mark.parametrize("kind", KINDS)
def test_era_and_tap_can_be_set_and_the_tap_sees_the_server_hops(kind: str, url_server: str) -> None:
    async def body(subject: Subject, sink: RecordingSink) -> None:
        up = subject.upstream
        tap = RecordingTap("s")
        up.tap = tap
        assert up.tap is tap
        if not kind.startswith("aggregate"):       # the aggregate's era is its client's (it sets its members')
            up.era = "modern"
            assert up.era == "modern"
        send(up, sink, frame("call", "tools/call", {"name": subject.tool("echo"), "arguments": {"text": "tapped"}}))
        await sink.answer("call")
        directions = {direction for server, direction, _ in tap.seen if server == "s"}
        assert {G2S, S2G} <= directions, tap.seen
        up.tap = None
        assert up.tap is None

    run(kind, url_server, body)


@pytest.mark.parametrize("kind", KINDS)
def test_shutdown_answers_what_is_pending(kind: str, url_server: str) -> None:
    async def body(subject: Subject, sink: RecordingSink) -> None:
        up = subject.upstream
        send(up, sink, frame("slow", "tools/call", {"name": subject.tool("wait"), "arguments": {"seconds": 30}}))
        await trio.sleep(0.5)
        assert not sink.answers.get("slow")
        with trio.fail_after(ANSWER_TIMEOUT):
            await up.shutdown()
        answer = await sink.answer("slow", 1.0)
        assert "error" in answer, answer

    run(kind, url_server, body)


@pytest.mark.parametrize("kind", KINDS)
def test_a_cancelled_request_is_not_answered(kind: str, url_server: str) -> None:
    async def body(subject: Subject, sink: RecordingSink) -> None:
        up = subject.upstream
        send(up, sink, frame("gone", "tools/call", {"name": subject.tool("wait"), "arguments": {"seconds": 30}}))
        await trio.sleep(0.3)
        up.notify(notification("notifications/cancelled", {"requestId": "gone", "reason": "test"}))
        up.flush()
        send(up, sink, frame("after", "tools/call", {"name": subject.tool("echo"), "arguments": {"text": "x"}}))
        await sink.answer("after")
        await trio.sleep(0.3)
        with trio.fail_after(ANSWER_TIMEOUT):
            await up.shutdown()
        assert not sink.answers.get("gone"), sink.answers["gone"]

    run(kind, url_server, body)


@pytest.mark.parametrize("kind", KINDS)
def test_an_id_already_in_flight_is_refused_and_the_first_still_answered(kind: str, url_server: str) -> None:
    async def body(subject: Subject, sink: RecordingSink) -> None:
        up = subject.upstream
        send(up, sink, frame(5, "tools/call", {"name": subject.tool("wait"), "arguments": {"seconds": 0.5}}))
        await trio.sleep(0.1)
        second = up.request(frame(5, "tools/call", {"name": subject.tool("echo"), "arguments": {"text": "dup"}}))
        assert second is not None and jsonfast.loads(second)["error"]["code"] == -32600, second
        answer = await sink.answer(5)
        assert "waited" in answer["result"]["content"][0]["text"], answer
        await trio.sleep(0.2)

    run(kind, url_server, body)


@pytest.mark.parametrize("kind", KINDS)
def test_a_request_the_server_does_not_answer_in_time_gets_one_error(kind: str, url_server: str) -> None:
    async def body(subject: Subject, sink: RecordingSink) -> None:
        up = subject.upstream
        send(up, sink, frame("late", "tools/call", {"name": subject.tool("wait"), "arguments": {"seconds": 20}}))
        answer = await sink.answer("late", 10.0)
        assert "error" in answer and "1" in answer["error"]["message"], answer
        await trio.sleep(0.5)

    run(kind, url_server, body, timeout=1.0)
