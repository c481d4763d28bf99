"""A member whose setup raises inside the gateway is a gateway bug: reported as an ERROR with its
traceback (which the matrix's log check fails on) and not retried as if the server were down,
while the aggregate keeps serving its other members."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import trio
from gateway import PY, SERVERS
from test_contract_upstream import RecordingSink, frame, send

from wire_gateway.config import Limits, ServerSpec, parse_config
from wire_gateway.policy.services import Services
from wire_gateway.proxy.aggregate import Aggregate
from wire_gateway.proxy.route import member_factory
from wire_gateway.upstream.protocol import Sink, Upstream


class Broken:
    """Wraps a real upstream; the first request the aggregate makes of it raises, as a bug would."""

    def __init__(self, inner: Upstream) -> None:
        self.inner = inner
        self.requests = 0

    def request(self, f: Any) -> bytes | None:
        self.requests += 1
        raise AttributeError("property 'era' of 'Broken' object has no setter")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["inner"], name)


def test_a_member_setup_bug_is_an_error_not_a_degraded_member(caplog: pytest.LogCaptureFixture) -> None:
    echo = {"command": PY, "args": [str(SERVERS / "echo.py")]}
    config = parse_config(json.loads(json.dumps({"servers": {"bad": echo, "good": echo}})), base_dir=Path.cwd())
    plain = member_factory(config, Services(config))
    made: dict[str, Broken] = {}

    def factory(spec: ServerSpec, limits: Limits, sink: Sink) -> Upstream:
        up = plain(spec, limits, sink)
        if spec.name == "bad":
            made["bad"] = Broken(up)
            return made["bad"]   # type: ignore[return-value]
        return up

    async def main() -> None:
        sink = RecordingSink()
        agg = Aggregate(config, sink, factory)
        async with trio.open_nursery() as nursery:
            await nursery.start(agg.run)
            send(agg, sink, frame(1, "tools/call", {"name": "good__echo", "arguments": {"text": "still here"}}))
            assert (await sink.answer(1))["result"]["content"][0]["text"] == "still here"
            await trio.sleep(1.5)               # a degraded member would be retried after 1 s
            send(agg, sink, frame(2, "tools/call", {"name": "bad__echo", "arguments": {"text": "x"}}))
            answer = await sink.answer(2)
            states = {name: m.state for name, m in agg.members.items()}, agg.state
            await agg.shutdown()
            nursery.cancel_scope.cancel()
        assert answer["error"]["code"] == -31002 and "gateway failed to set it up" in answer["error"]["message"]
        assert made["bad"].requests == 1, "a gateway bug was retried as if the server were down"
        assert states == ({"bad": "broken", "good": "connected"}, "degraded") and agg.state == "stopped"

    with caplog.at_level(logging.INFO, logger="wire_gateway"):
        trio.run(main)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "member bad" in r.getMessage()]
    assert len(errors) == 1 and errors[0].exc_info is not None, caplog.text
    assert "retrying" not in caplog.text
