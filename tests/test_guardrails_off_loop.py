"""Large frames are judged in a worker thread, so the event loop (every other client) does not
wait for the detectors; small ones inline, as before. The policy runner drives a memory-store
chain inline and gives up at its first suspension (`chain.drive`): the hand-off must stop it
at a plain checkpoint, never half-way into the thread hand-off, and the task it then runs in
must judge exactly as the inline path does."""
from __future__ import annotations

import threading
from typing import Any

import trio

from wire_gateway.config import parse_config
from wire_gateway.guardrails.engine import Compiled
from wire_gateway.policy import guardrails as gr
from wire_gateway.policy.chain import DEFER, Call, Chain, Reply, drive
from wire_gateway.policy.tools import ToolIndex
from wire_gateway.wire import jsonfast
from wire_gateway.wire.frame import Frame, Kind

KEY = "AKIA" + "Q7XWGTZ3HMRV5KPN"       # synthetic, base32 like a real id
POLICY = {"input": [{"detectors": ["email"], "action": "redact"}, {"detectors": ["aws_key"], "action": "block"}],
          "output": [{"detectors": ["aws_key"], "action": "redact"}]}


def guardrails() -> gr.Guardrails:
    config = parse_config({"servers": {"s": {"command": "x", "guardrails": "p"}}, "guardrails": {"p": POLICY}})
    compiled = Compiled.of(config.guardrails["p"])
    return gr.Guardrails("s", ToolIndex(), [compiled], {"p": compiled})


def call_of(text: str) -> Call:
    msg = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": text}}}
    return Call("s", Frame(jsonfast.dumps(msg), Kind.REQUEST, msg, "tools/call", 7), "", "2025-06-18")


def answer(text: str) -> Reply:
    msg = {"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": text}]}}
    return Reply(msg, jsonfast.dumps(msg))


def threads_used(monkeypatch: Any) -> list[str]:
    used: list[str] = []
    real = trio.to_thread.run_sync

    async def spy(fn: Any, *args: Any, **kw: Any) -> Any:
        def run() -> Any:
            used.append(threading.current_thread().name)
            return fn(*args)
        return await real(run, **kw)

    monkeypatch.setattr(gr.trio.to_thread, "run_sync", spy)
    return used


def test_small_frames_stay_inline(monkeypatch: Any) -> None:
    used = threads_used(monkeypatch)
    g, call = guardrails(), call_of("mail a.person@example.org please")
    assert g.check is not None and g.check(call) is None       # decided now: redacted in place
    assert b"[REDACTED_EMAIL_1]" in call.frame.raw and call.frame.id == 7
    chain = Chain("s", [g], sync=True)
    ok, out = drive(chain.up(call, answer(f"sent to [REDACTED_EMAIL_1], key {KEY}"), 1))
    assert ok and out.msg["result"]["content"][0]["text"] == "sent to a.person@example.org, key [REDACTED_AWS_KEY]"
    assert used == []


def test_a_large_request_defers_then_is_judged_in_a_thread(monkeypatch: Any) -> None:
    used = threads_used(monkeypatch)
    g = guardrails()
    filler = "x " * gr.OFF_LOOP_BYTES
    call = call_of(filler + "mail a.person@example.org")
    assert g.check is not None and g.check(call) is DEFER
    chain = Chain("s", [g], sync=True)
    assert chain.down_now(call) is None
    ok, _ = drive(chain.down(call))               # inline: stops at the checkpoint, touches nothing
    assert not ok and b"a.person@example.org" in call.frame.raw and used == []

    async def task() -> Any:                      # the runner's task path
        return await chain.down(call)

    reply, _ = trio.run(task)
    assert reply is None and b"[REDACTED_EMAIL_1]" in call.frame.raw and b"a.person@" not in call.frame.raw
    assert len(used) == 1 and used[0] != threading.main_thread().name

    blocked = call_of(filler + KEY)

    async def block() -> Any:
        return await chain.down(blocked)

    reply, _ = trio.run(block)
    assert reply is not None and reply.msg["result"]["isError"] is True
    assert KEY not in jsonfast.dumps(reply.msg).decode()


def test_a_large_answer_is_judged_in_a_thread(monkeypatch: Any) -> None:
    used = threads_used(monkeypatch)
    g = guardrails()
    call = call_of("short")
    chain = Chain("s", [g], sync=True)
    big = answer("line of text. " * (gr.OFF_LOOP_BYTES // 10) + f"key={KEY}")
    ok, _ = drive(chain.up(call, big, 1))
    assert not ok and used == []

    async def task() -> Any:
        return await chain.up(call, big, 1)

    out = trio.run(task)
    text = out.msg["result"]["content"][0]["text"]
    assert KEY not in text and text.endswith("key=[REDACTED_AWS_KEY]") and len(used) == 1
