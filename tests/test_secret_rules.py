"""One table of secret rules (telemetry/secret_rules.py), read three ways: the log masker
(telemetry.masking, regexes on text), the dump masker (dump.mask, on the parsed message, with its
Python word test) and the dump's C encoder (its word test, run by `suspects()` and while escaping
a frame in `encode()`). On a corpus of keys and values they must give the same verdicts, and the
expected ones: a change to any one of them alone fails here."""
from __future__ import annotations

import os
import re
import sys

import orjson
import pytest

from wire_gateway.dump import encode
from wire_gateway.dump.mask import FrameMasker
from wire_gateway.dump.tap import C2G
from wire_gateway.dump.writer import Dumper, DumpSettings
from wire_gateway.telemetry import secret_rules
from wire_gateway.telemetry.masking import Masker
from wire_gateway.wire.frame import Kind

VALUE = "s3cr3t-Value-98765"           # looks like a token; no keyword of its own

# (key, secret?): spellings and cases of the names, prefixes, near misses, non-ASCII.
KEYS = [
    ("token", True), ("TOKEN", True), ("Token", True), ("github_token", True), ("GITHUB-TOKEN", True),
    ("_token", True), ("my-token", True), ("access_token", True), ("accessToken", True),
    ("Access-Token", True), ("refresh_token", True), ("ID_TOKEN", True), ("idToken", True),
    ("auth_token", True), ("bearerToken", True), ("session-token", True), ("x_session_token", True),
    ("api_key", True), ("apiKey", True), ("API-KEY", True), ("apikey", True), ("x-api-key", True),
    ("X_Api_Key", True), ("password", True), ("PASSWORD", True), ("db_password", True), ("passwd", True),
    ("secret", True), ("client_secret", True), ("clientSecret", True), ("client-secret", True),
    ("authorization", True), ("Proxy-Authorization", True), ("cookie", True), ("Set-Cookie", True),
    ("a b_token", True), ("ключ_token", True),
    # near misses
    ("tokenizer", False), ("author", False), ("progressToken", False), ("tokens", False), ("mytoken", False),
    ("xaccesstoken", False), ("token_type", False), ("key", False), ("keys", False), ("monkey", False),
    ("turkey_key", False), ("apikeys", False), ("secretary", False), ("secret_santa", False),
    ("passwords", False), ("cookies", False), ("authorization_url", False), ("accessTokenExpiry", False),
    ("my token", False), ("api", False), ("id", False), ("session", False), ("пароль", False),
    ("tökén", False), ("pässword", False),
    # non-ASCII letters that IGNORECASE reads as ASCII ones (secret_rules.CASE_FOLDS)
    ("api_\u212aey", True), ("\u017fecret", True), ("pa\u017f\u017fword", True), ("author\u0131zation", True),
    ("AUTHOR\u0130ZATION", True), ("\u212aey", False), ("\u017fession", False),
]
# Values by shape, under a key that is no secret: (value, the part that must not survive or None).
VALUES = [
    ("Bearer abcDEF123456", "abcDEF123456"), ("basic Zm9vOmJhcjEyMw==", "Zm9vOmJhcjEyMw=="),
    ("BEARER\tq1w2e3r4t5", "q1w2e3r4t5"), ("Bearer\u00a0zz99yy88", "zz99yy88"),
    ("eyJhbGciOiJIUzI1NiJ9.e30.sig", None), ("sk-live-0123456789abcdef", None), ("bearerish value", None),
    ("basically fine", None), ("Bearer", None), ("ключ", None),
]


def frames_with(key: str, value: str) -> list[bytes]:
    """A tools/call with the pair among its arguments, and the pair nested deeper; compact, as the
    clients and servers send them."""
    flat = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "t", "arguments": {key: value}}}
    nested = {"jsonrpc": "2.0", "id": 8, "result": {"content": [{"type": "text", "meta": {"a": [{key: value}]}}]}}
    return [orjson.dumps(flat), orjson.dumps(nested)]


def log_hides(text: str, secret: str) -> bool:
    return secret not in Masker(secrets=None)(text)


def dump_hides(raw: bytes, secret: str) -> bool:
    masked, _ = FrameMasker().mask_raw(raw)
    return secret.encode() not in masked


def python_flags(raw: bytes) -> bool:
    masker = FrameMasker()
    masker.word_suspects = None
    return bool(masker.suspects([raw]))


def c_flags(raw: bytes) -> tuple[bool, bool]:
    """The C word test's verdict, both ways it runs: suspects(), and encode()'s escaping pass."""
    native = encode.BUILT
    assert native is not None
    tap = Dumper(DumpSettings(path=os.devnull)).tap("s", "echo", "http", era="modern")
    record = (1.5, tap.hops[C2G], raw, Kind.REQUEST, "tools/call", 1, None)
    data, _, stop, suspect = native.encode([record], 0, b"2026-11-21T00:00:00", 1.0, None, encode._KIND_ORDER,
                                           {}, encode._method_json, encode.to_json, encode._tail, True)
    assert (stop, bool(data)) == ((0, False) if suspect else (1, True)), raw   # stopped there, or wrote it
    return bool(native.suspects([raw])), bool(suspect)


def folds(text: str) -> bool:
    return any(f in text for f in secret_rules.CASE_FOLDS)


@pytest.mark.parametrize(("key", "secret"), KEYS)
def test_the_three_agree_on_keys(key: str, secret: bool) -> None:
    for raw in frames_with(key, VALUE):
        assert log_hides(raw.decode(), VALUE) == secret, ("log masker", raw)
        assert dump_hides(raw, VALUE) == secret, ("dump masker", raw)
        # The word tests are pre-checks: a frame with a case-folding letter is a suspect whatever
        # its keys (bytes.lower() cannot read it); otherwise exactly the secret keys' frames are.
        flagged = secret or folds(key)
        assert python_flags(raw) == flagged, ("Python word test", raw)
        if encode.BUILT is not None:
            assert c_flags(raw) == (flagged, flagged), ("C word test", raw)
    if re.fullmatch(r"[\w-]+", key):          # a key=value name in plain text: the log masker's other rule
        for text in (f"{key}={VALUE}", f"config {key}: {VALUE} loaded"):
            assert log_hides(text, VALUE) == secret, ("log masker, plain text", text)


@pytest.mark.parametrize(("value", "hidden"), VALUES)
def test_the_three_agree_on_values(value: str, hidden: str | None) -> None:
    # The log masker reads text: the value as it is, and JSON text where no escape spells it
    # differently (a JSON text's `\t` is no whitespace to a regex; the dump masker parses it).
    texts = [value, *(raw.decode() for raw in frames_with("note", value) if b"\\" not in raw)]
    for text in texts:
        if hidden is None:
            assert Masker(secrets=None)(text) == text, ("log masker", text)
        else:
            assert log_hides(text, hidden), ("log masker", text)
    for raw in frames_with("note", value):
        if hidden is None:
            assert FrameMasker().mask_raw(raw) == (raw, False), ("dump masker", raw)
        else:
            assert dump_hides(raw, hidden), ("dump masker", raw)
            # a scheme word with whitespace after it in a string: a suspect, in every word test
            assert python_flags(raw), ("Python word test", raw)
            if encode.BUILT is not None:
                assert c_flags(raw) == (True, True), ("C word test", raw)


def test_the_c_encoder_reads_the_table_it_is_given() -> None:
    """The C word test has no names of its own: hand it another table and it follows that one."""
    native = encode.BUILT
    if native is None:
        pytest.skip("the C record encoder is not built")
    frames = [b'{"widget":1}', b'{"x_widget":1}', b'{"token":1}', b'{"a":"Quux q"}', b'{"a":"Bearer q"}']
    try:
        native.set_secret_rules([b"widget"], b"_", [b"quux"], [])
        assert native.suspects(frames) == [0, 1, 3]
        with pytest.raises(ValueError, match="one same ASCII letter"):
            native.set_secret_rules([b"widget"], b"_", [b"quux", b"bearer"], [])
    finally:
        native.set_secret_rules([s.encode() for s in secret_rules.KEY_SPELLINGS], secret_rules.SEPARATORS.encode(),
                                [s.encode() for s in secret_rules.SCHEMES],
                                [f.encode() for f in secret_rules.CASE_FOLDS])
    assert native.suspects(frames) == [2, 4]


def test_case_folds_are_all_the_letters_ignorecase_reads_as_ascii_ones() -> None:
    """CASE_FOLDS is data the pre-checks rely on: every non-ASCII character that IGNORECASE matches
    to a letter of the names or schemes must be there (and nothing else)."""
    letters = sorted(set("".join(secret_rules.KEY_NAMES + secret_rules.SCHEMES).replace("_", "")))
    pattern = re.compile("[" + "".join(letters) + "]", re.IGNORECASE)
    everything = "".join(chr(c) for c in range(0x80, sys.maxunicode + 1) if not 0xD800 <= c < 0xE000)
    assert sorted(pattern.findall(everything)) == sorted(secret_rules.CASE_FOLDS)


def test_the_table_is_the_documented_rule() -> None:
    """KEY_SPELLINGS (what the C test and the pre-checks read) and KEY_PATTERN (the regexes) say the
    same: a key is one of the spellings, or ends with a separator and one."""
    whole = re.compile(r"(?:.*[_-])?" + secret_rules.KEY_PATTERN, re.IGNORECASE)
    for key, secret in KEYS:
        if key.isascii():
            low = key.lower()
            by_spelling = any(low == s or any(low.endswith(sep + s) for sep in secret_rules.SEPARATORS)
                              for s in secret_rules.KEY_SPELLINGS)
            assert by_spelling == secret == bool(whole.fullmatch(key)), key
