"""The `requestState` the era bridge hands a modern client with an input-required result (sans-IO).

2026-07-28 (basic/patterns/mrtr) says a server must treat a `requestState` that comes back as
attacker-controlled, protect its integrity when it matters, reject state that fails verification,
and should bind it to the principal, a short expiry and the request it belongs to. The bridge's
state matters: it names a legacy server's call that is waiting for the client's input, so a
forged or replayed one could answer another client's question. It is therefore

    base64url(JSON payload) "." base64url(HMAC-SHA256(secret, first part))

with the payload `{"v": 1, "k": key, "x": expiry (Unix seconds), "m": method, "d": digest of the
request's own params, "p": principal or null}`. The secret is made per process (`new_secret`): a
state outlives neither the gateway nor the call it names, which lives in that process only.
Verification says why it refused, for the error the client gets (-32602).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

VERSION = 1
MAX_STATE = 4096                        # longer than any state the bridge mints: refused unread
RETRY_KEYS = ("_meta", "inputResponses", "requestState")   # what a retry adds to the original params


def new_secret() -> bytes:
    return secrets.token_bytes(32)


def params_digest(method: str, params: dict[str, Any]) -> str:
    """What identifies the original request: its method and params, without what a retry adds."""
    salient = {k: v for k, v in params.items() if k not in RETRY_KEYS}
    body = json.dumps([method, salient], sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      default=repr)
    return hashlib.sha256(body.encode()).hexdigest()[:32]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint(secret: bytes, key: str, expires: float, method: str, digest: str, principal: str | None) -> str:
    payload = json.dumps({"v": VERSION, "k": key, "x": int(expires), "m": method, "d": digest, "p": principal},
                         separators=(",", ":")).encode()
    head = _b64(payload)
    mac = hmac.new(secret, head.encode(), hashlib.sha256).digest()
    return f"{head}.{_b64(mac)}"


@dataclass(frozen=True, slots=True)
class Verified:
    key: str


def verify(secret: bytes, state: Any, now: float, method: str, digest: str,
           principal: str | None) -> Verified | str:
    """The key a state names, or why it is refused."""
    if not isinstance(state, str) or len(state) > MAX_STATE or state.count(".") != 1:
        return "requestState is not one the gateway issued"
    head, mac = state.split(".")
    expected = _b64(hmac.new(secret, head.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(mac.encode(), expected.encode()):     # as text: any altered character counts
        return "requestState failed verification (altered, or issued by another gateway process)"
    payload = json.loads(_unb64(head))      # ours, since the MAC holds
    if payload.get("x", 0) < now:
        return "requestState has expired; send the request again without it"
    if payload.get("m") != method or payload.get("d") != digest:
        return "requestState belongs to another request (a retry must repeat the original params)"
    if payload.get("p") != principal:
        return "requestState was issued to another caller"
    return Verified(str(payload.get("k")))
