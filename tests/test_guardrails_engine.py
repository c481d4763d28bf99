"""The guardrails engine on its own: the walk, one judging pass, placeholders and their
restoration, blocks, binary payloads. Detectors here are tiny stand-ins so the tests say
exactly what the engine does; the real detectors have their own tests."""
from __future__ import annotations

import re

from wire_gateway.guardrails.detectors.base import Span
from wire_gateway.guardrails.engine import PLACEHOLDER, Hit, blocked_result, first_hit, judge, restore, text_of
from wire_gateway.guardrails.walk import rewrite, strings


def finder(name: str, pattern: str):
    rx = re.compile(pattern)
    return lambda text, key: [Span(name, m.start(), m.end()) for m in rx.finditer(text)]


EMAIL = finder("email", r"[a-z]+@[a-z]+\.com")
AWS = finder("aws_key", r"AKIA[A-Z0-9]{16}")
KEYED = lambda text, key: [Span("entropy_secret", 0, len(text))] if key == "api_key" else []  # noqa: E731


def test_strings_walks_everything_but_binary():
    value = {"content": [{"type": "text", "text": "a"}, {"type": "image", "data": "QUJD", "mimeType": "image/png"},
                         {"type": "resource", "resource": {"uri": "file:///x", "blob": "AAAA"}},
                         {"type": "audio", "data": "UklG", "mimeType": "audio/wav"}],
             "structuredContent": {"deep": [{"k": "b"}], "n": 3}, "inputRequests": {"r": {"message": "c"}}}
    skipped: list[str] = []
    found = list(strings(value, skipped))
    assert [s for s, _ in found] == ["text", "a", "image", "image/png", "resource", "file:///x", "audio", "audio/wav",
                                     "b", "c"]
    assert ("b", "k") in found
    assert sorted(skipped) == ["audio", "blob", "image"]


def test_rewrite_keeps_identity_when_nothing_changes():
    value = {"a": [1, "x", {"b": "y"}], "c": None}
    assert rewrite(value, lambda s, k: s) is value
    out = rewrite(value, lambda s, k: s.upper() if s == "y" else s)
    assert out == {"a": [1, "x", {"b": "Y"}], "c": None}
    assert out["a"] is not value["a"] and value["a"][2] == {"b": "y"}     # the original is untouched


def test_input_redaction_numbers_each_value_once_and_restores_it():
    flat = (("p", "redact", "email", EMAIL),)
    args = {"arguments": {"to": "bob@x.com", "cc": ["ann@y.com", "bob@x.com"], "n": 1}}
    v = judge(args, flat, placeholders=True)
    assert v.block is None
    assert v.value == {"arguments": {"to": "[REDACTED_EMAIL_1]", "cc": ["[REDACTED_EMAIL_2]", "[REDACTED_EMAIL_1]"],
                                     "n": 1}}
    assert v.hits == {Hit("p", "email", "redact"): 3}
    assert v.note == "guardrails:redact:p/email"
    result = {"content": [{"type": "text", "text": "sent to [REDACTED_EMAIL_1] and [REDACTED_EMAIL_2]"}]}
    assert restore(result, v.restore) == {"content": [{"type": "text", "text": "sent to bob@x.com and ann@y.com"}]}
    untouched = {"content": [{"type": "text", "text": "nothing here"}]}
    assert restore(untouched, v.restore) is untouched


def test_output_redaction_masks_and_block_wins_over_redact():
    flat = (("p", "redact", "email", EMAIL), ("q", "block", "aws_key", AWS))
    v = judge({"text": "mail bob@x.com"}, flat, placeholders=False)
    assert v.value == {"text": f"mail {PLACEHOLDER}EMAIL]"} and v.restore == {}
    value = {"a": "bob@x.com", "b": "key AKIAABCDEFGHIJKLMNOP"}
    v = judge(value, flat, placeholders=False)
    assert v.block == Hit("q", "aws_key", "block") and v.value is value
    assert v.note == "guardrails:block:q/aws_key"


def test_log_passes_and_counts():
    v = judge(["bob@x.com", "ann@y.com"], (("p", "log", "email", EMAIL),), placeholders=True)
    assert v.value == ["bob@x.com", "ann@y.com"] and v.hits == {Hit("p", "email", "log"): 2} and not v.restore


def test_key_aware_detectors_see_the_key():
    v = judge({"api_key": "s3cr3t-value", "other": "s3cr3t-value"}, (("p", "redact", "entropy_secret", KEYED),),
              placeholders=False)
    assert v.value == {"api_key": "[REDACTED_ENTROPY_SECRET]", "other": "s3cr3t-value"}


def test_overlapping_matches_merge():
    a = finder("jwt", r"eyJ[a-z.]+")
    b = finder("entropy_secret", r"J[a-z]+")
    v = judge("tok eyJabc.def end", (("p", "redact", "jwt", a), ("p", "redact", "entropy_secret", b)),
              placeholders=False)
    assert v.value == "tok [REDACTED_JWT] end"


def test_binary_is_skipped_and_reported():
    value = {"content": [{"type": "image", "data": "bob@x.com", "mimeType": "image/png"}]}
    v = judge(value, (("p", "block", "email", EMAIL),), placeholders=False)
    assert v.block is None and v.skipped == ["image"]


def test_first_hit_and_text_of():
    assert first_hit({"description": "hi", "x": ["AKIAABCDEFGHIJKLMNOP"]}, (("p", "block", "aws_key", AWS),)) == \
        Hit("p", "aws_key", "block")
    assert first_hit({"description": "hi"}, (("p", "block", "aws_key", AWS),)) is None
    assert text_of({"a": "x", "b": [{"type": "image", "data": "zz"}, "y"]}) == "x\nimage\ny"


def test_blocked_result_names_the_rule_not_the_match():
    r = blocked_result(Hit("strict", "aws_key", "block"), "output", "leak", modern=True)
    assert r["isError"] is True and r["resultType"] == "complete"
    text = r["content"][0]["text"]
    assert "strict" in text and "aws_key" in text and "leak" in text and "withheld" in text
    assert r["_meta"]["dev.wire-gateway/guardrails"] == {"action": "block", "direction": "output",
                                                         "policy": "strict", "detector": "aws_key", "tool": "leak"}
    legacy = blocked_result(Hit("strict", "email", "block"), "input", "send", modern=False)
    assert "resultType" not in legacy and "not sent to the server" in legacy["content"][0]["text"]
