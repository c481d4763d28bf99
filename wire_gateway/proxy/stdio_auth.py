"""Auth on the stdio front: one caller for the life of the process, its key in the environment.

A desktop client's config sets `WIRE_GATEWAY_KEY` for the gateway it launches. With auth on,
each request is checked against the gate's snapshot before it goes anywhere: no key, a bad,
revoked or expired key, a server outside the key's project, or a rate limit answers that
request with a JSON-RPC error saying what to do, and the process stays up (a client shows
the error; a restarted client with a fixed key works). The check is synchronous (the
snapshot is in memory and refreshed by the gate's own task), so requests keep their order.
"""
from __future__ import annotations

import os

from wire_gateway.auth.context import CALLER
from wire_gateway.auth.directory import Principal, Refusal, refusal_message
from wire_gateway.auth.gate import Gate
from wire_gateway.telemetry.masking import SECRETS
from wire_gateway.wire import errors
from wire_gateway.wire.frame import Frame

ENV_KEY = "WIRE_GATEWAY_KEY"


class StdioAdmission:
    def __init__(self, gate: Gate, server: str | None, key: str | None) -> None:
        self.gate = gate
        self.server = server            # None: the aggregate
        self.key = key
        self.principal: Principal | None = None

    @classmethod
    def from_environment(cls, gate: Gate, server: str | None) -> StdioAdmission:
        key = os.environ.get(ENV_KEY, "").strip() or None
        if key is not None:
            SECRETS.add(key)        # masked in every log line and dump from here on
        return cls(gate, server, key)

    async def start(self) -> Principal | Refusal:
        """The first check (it may reload the store for a key made a moment ago); sets the caller
        for every task started after it."""
        got = await self.gate.authenticate(self.key, "stdio")
        if isinstance(got, Principal):
            self.principal = got
            CALLER.set(got)
        return got

    def __call__(self, frame: Frame) -> bytes | None:
        got = self.gate.check_now(self.key, "stdio")
        if isinstance(got, Principal) and self.server is not None and not got.project.may_use(self.server):
            got = Refusal(403, f"project {got.project.name!r} does not include server {self.server!r}",
                          "insufficient_scope")
        if isinstance(got, Principal):
            return None
        return errors.error_frame(frame.id, errors.RATE_LIMITED if got.status == 429 else errors.UNAUTHORIZED,
                                  _message(got), _data(got))


def _message(refusal: Refusal) -> str:
    if refusal.status == 401 and refusal.error is None:
        return f"Unauthorized: no API key; set {ENV_KEY} in the environment the client starts the gateway with"
    return refusal_message(refusal, f"retry in {refusal.retry_after or 1:.1f} s", f"the key comes from {ENV_KEY}")


def _data(refusal: Refusal) -> dict[str, object]:
    data: dict[str, object] = {"status": refusal.status}
    if refusal.retry_after is not None:
        data["retryAfterSeconds"] = round(refusal.retry_after, 3)
    return data

