"""API keys: how they look, and how they are kept (as a digest only) and checked.

A key is `wg_<id>_<secret>`: `id` (12 base32 characters, 60 bits) names the key's record, so a
check is one dictionary lookup, never a scan; `secret` is 256 bits from `secrets`. The record
keeps the SHA-256 of the whole key, never the key. A fast digest is right here, where a slow
one (bcrypt, scrypt) is right for passwords: a password is guessable, so each guess must cost;
a 256-bit random secret is not, and a slow hash would only cost every honest request CPU time.
The comparison is constant-time (`hmac.compare_digest`), so timing says nothing about a digest.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from wire_gateway.telemetry.secret_rules import GATEWAY_KEY_ID, GATEWAY_KEY_PREFIX, GATEWAY_KEY_SECRET

PREFIX = GATEWAY_KEY_PREFIX       # the log masker knows the shape too (telemetry/secret_rules.py)
_SHAPE = re.compile(f"{PREFIX}({GATEWAY_KEY_ID})_({GATEWAY_KEY_SECRET})\\Z")


def new_key() -> tuple[str, str]:
    """A fresh (key id, full key). The full key is shown once, to whoever created it."""
    key_id = base64.b32encode(secrets.token_bytes(10)).decode("ascii").lower()[:12]
    return key_id, f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def key_id_of(text: str) -> str | None:
    """The id inside something that claims to be a key, or None when it does not have a key's shape."""
    m = _SHAPE.match(text)
    return m.group(1) if m else None


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def matches(key: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(key).encode("ascii"), stored_digest.encode("ascii"))


def shown(key_id: str) -> str:
    """How a key is named in lists, logs and audit lines: its public prefix, never its secret."""
    return f"{PREFIX}{key_id}"
