"""The legacy handshake a client performed, kept so it can be replayed to a
restarted server process and the client's session survives the crash.
"""
from __future__ import annotations

from typing import Any

from wire_gateway.wire import jsonfast
from wire_gateway.wire.frame import Frame, Kind


class Handshake:
    __slots__ = ("init_msg", "init_id", "completed", "initialized_raw")

    def __init__(self) -> None:
        self.init_msg: dict[str, Any] | None = None
        self.init_id: Any = None
        self.completed = False
        self.initialized_raw: bytes | None = None

    def on_client_request(self, frame: Frame) -> None:
        if frame.method == "initialize":
            self.init_msg = frame.msg
            self.init_id = frame.id
            self.completed = False

    def on_client_notification(self, frame: Frame) -> None:
        if frame.method == "notifications/initialized":
            self.initialized_raw = frame.raw

    def on_server_reply(self, frame: Frame) -> None:
        if self.init_msg is not None and not self.completed and frame.id == self.init_id:
            self.completed = frame.kind is Kind.RESPONSE

    @property
    def needs_replay(self) -> bool:
        """Only a session whose initialize succeeded is a legacy session worth restoring."""
        return self.completed

    def replay(self, replay_id: str) -> tuple[bytes, bytes | None]:
        """The initialize request (under the gateway's own id) and the initialized notification."""
        assert self.init_msg is not None
        msg = dict(self.init_msg)
        msg["id"] = replay_id
        return jsonfast.dumps(msg), self.initialized_raw
