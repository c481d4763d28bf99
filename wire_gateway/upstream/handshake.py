"""The legacy handshake a client performed, kept so it can be replayed to a
restarted server process and the client's session survives the crash.

A handshake can also be restored from a record (`restore`): a session that another gateway
instance opened and this one adopts (proxy/session_registry.py). The upstream then replays it
at its first start, by the same code that replays it after a crash.
"""
from __future__ import annotations

from typing import Any

from wire_gateway.wire import jsonfast
from wire_gateway.wire.frame import Frame, Kind


class Handshake:
    __slots__ = ("init_msg", "init_id", "completed", "initialized_raw", "version", "restored")

    def __init__(self) -> None:
        self.init_msg: dict[str, Any] | None = None
        self.init_id: Any = None
        self.completed = False
        self.initialized_raw: bytes | None = None
        self.version: str | None = None      # the protocol version the server's answer negotiated
        self.restored = False                # from a record, not seen here: replay it at the first start

    def restore(self, init_msg: dict[str, Any], initialized_raw: bytes | None, version: str | None) -> None:
        """A handshake another instance saw succeed: the upstream replays it before anything else."""
        self.init_msg = init_msg
        self.init_id = init_msg.get("id")
        self.initialized_raw = initialized_raw
        self.version = version
        self.completed = True
        self.restored = True

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
            result = frame.msg.get("result") if self.completed else None
            version = result.get("protocolVersion") if isinstance(result, dict) else None
            self.version = version if isinstance(version, str) else None

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
