"""The dump's C record encoder (`wire_gateway/dump/_records.c`) against the Python one, fuzzed.

The Python encoder (`Dumper._encode_python`, with the word test in Python too) is the reference:
on any batch of hook tuples the C encoder must write the same bytes, leave the same open requests
behind, or fail the same way. Hypothesis makes the batches: JSON frames with secret-looking keys
and credentials (so masking runs), escapes, control characters and any Unicode, frames with bytes
spliced in (not UTF-8, lone surrogates, NULs), plain junk, frames past the 64 KiB "large" line,
every kind, id, method and policy shape, times across seconds' edges.

`.ci/sanitize` runs this file against a build of the extension with AddressSanitizer and
UndefinedBehaviorSanitizer (WIRE_GATEWAY_FUZZ_EXAMPLES sets how many batches; the default keeps
the ordinary test run quick)."""
from __future__ import annotations

import json
import os
from unittest import mock

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from wire_gateway.dump import encode
from wire_gateway.dump.tap import DIRECTIONS
from wire_gateway.dump.writer import Dumper, DumpSettings
from wire_gateway.wire.frame import Kind

if encode.BUILT is None:   # CI requires it (WIRE_GATEWAY_REQUIRE_C_ENCODER, test_dump.py)
    pytest.skip("the C record encoder is not built (no C compiler at install time)", allow_module_level=True)
# Set by .ci/sanitize: the sanitized build must be the one under test, not an installed one.
SANITIZED = os.environ.get("WIRE_GATEWAY_SANITIZED_ENCODER")

EXAMPLES = int(os.environ.get("WIRE_GATEWAY_FUZZ_EXAMPLES", "100"))
KINDS = {"request": Kind.REQUEST, "notification": Kind.NOTIFICATION, "response": Kind.RESPONSE, "error": Kind.ERROR,
         None: None}     # a frame the gateway wrote: the writer decodes it

# Pieces that make the masker and the escaping work: key words in every case and with prefixes,
# credential schemes, escapes spelled out, control characters, letters IGNORECASE folds to ASCII.
SECRET_KEYS = ["token", "TOKEN", "api_key", "Api-Key", "apikey", "x-api-key", "client_secret", "secret",
               "password", "PassWord", "passwd", "my-passwd", "cookie", "Set-Cookie", "authorization",
               "Proxy-Authorization", "accessToken", "refresh_token", "id_token", "sessionToken",
               "progressToken", "keys", "tokens", "api_\u212aey", "pa\u017fsword", "cook\u0131e", "AUTHORIZAT\u0130ON"]
PIECES = ["Bearer abc.def", "basic Zm9v", "BEARER\tx", "Bearer\u00a0y", "b", "B", "bearer", "caf\u00e9",
          "\\", '"', "\\u0065", "\x00", "\x01", "\x1f", "\x7f", "\t\r\n\b\f", "\u2028", "\U0001f600",
          "sk-123", "hunter2-value", 'quo"te"', "token\"", "key\""]

keys = st.one_of(st.sampled_from(SECRET_KEYS), st.text(max_size=8))
strings = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=12)), max_size=6).map("".join)
values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), strings),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12)
SERIALISERS = [lambda o: json.dumps(o, separators=(",", ":"), ensure_ascii=False),
               lambda o: json.dumps(o, ensure_ascii=False), lambda o: json.dumps(o),
               lambda o: json.dumps(o, indent=1, ensure_ascii=False)]


@st.composite
def json_frames(draw: st.DrawFn) -> bytes:
    message = {"jsonrpc": "2.0", "id": draw(st.integers(0, 9)), "result": draw(values)}
    text = draw(st.sampled_from(SERIALISERS))(message)
    return text.encode("utf-8", "surrogatepass")


@st.composite
def spliced(draw: st.DrawFn) -> bytes:
    """A JSON frame with bytes put in anywhere: broken UTF-8, a surrogate, a NUL, a quote."""
    raw = draw(json_frames())
    junk = draw(st.one_of(st.binary(min_size=1, max_size=6),
                          st.sampled_from([b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe0\x80\xaf",
                                           b"\x00", b'"', b"\\"])))
    at = draw(st.integers(0, len(raw)))
    return raw[:at] + junk + raw[at:]


@st.composite
def long_frames(draw: st.DrawFn) -> bytes:
    """Past the encoder's 64 KiB line (an exact reservation), a piece repeated, maybe a secret inside."""
    piece = draw(st.sampled_from(["x", "\u00e9", "\\n", '"', "\x01", "ab\U0001f600"]))
    body = piece * draw(st.integers(10_000, 70_000))
    key = draw(st.sampled_from(["text", "token", "api_key"]))
    return json.dumps({"jsonrpc": "2.0", "id": 1, "result": {key: body}}, ensure_ascii=False).encode()


# Plain text of every length: the escaping's 16-byte blocks end at every offset of a frame.
plain = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e, exclude_characters='"\\'), max_size=48)
frames = st.one_of(json_frames(), json_frames(), spliced(), st.binary(max_size=64), plain.map(str.encode),
                   long_frames())
# Integers at the edges of the C encoder's digit pairs and of 64 bits, besides any.
EDGE_INTS = [0, 9, 10, 99, 100, 101, 9999, 10_000, 10_099, 1_000_000, -1, -100, 2**63 - 1, -2**63, 2**63, 2**64]
ids = st.one_of(st.none(), *[st.sampled_from([1, 2, 3, "a", "b"])] * 4, st.sampled_from(EDGE_INTS), st.integers(),
                st.text(max_size=6),
                st.booleans(), st.floats(allow_nan=False, allow_infinity=False))
methods = st.one_of(st.none(), st.sampled_from(["tools/call", "tools/list", "initialize"]), st.text(max_size=8))
policies = st.one_of(st.none(), st.none(), st.sampled_from(["filter", "cache", "gateway"]), st.text(max_size=6))
steps = st.sampled_from([0.0, 1e-7, 3e-6, 0.001, 0.137, 0.5000005, 1.0])
records = st.tuples(steps, st.sampled_from([*DIRECTIONS, "gateway->audit"]), frames,
                    st.sampled_from(list(KINDS)), methods, ids, policies)
batches = st.lists(st.lists(records, min_size=1, max_size=40), min_size=1, max_size=3)

MASKING = {"word test in the C encoder": DumpSettings(path=os.devnull),
           "configured pattern": DumpSettings(path=os.devnull, mask_patterns=("sk-[0-9]+",)),
           "configured secret value": DumpSettings(path=os.devnull, secret_values=("hunter2-value",))}


def outcome(dumper: Dumper, batch: list[tuple]) -> tuple:
    """What encoding a batch did: its bytes, or the error it raised."""
    try:
        return ("wrote", dumper._encode(batch))
    except (ValueError, TypeError, OverflowError) as e:   # the same refusal on both sides is agreement too
        return ("raised", type(e).__name__, str(e))


@pytest.mark.slow   # ~3-6 s a masking setting
@pytest.mark.parametrize("masking", list(MASKING))
@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(chunks=batches, start=st.floats(0.0, 1e6))
def test_the_c_encoder_writes_what_the_python_encoder_writes(masking: str, chunks: list[list[tuple]],
                                                             start: float) -> None:
    """Chunk after chunk through two dumpers (the open-request maps carry over, so answers find
    their requests): C and Python write the same bytes (or raise the same error), keep the same
    requests open, and the C word test flags exactly the frames the Python one does."""
    if SANITIZED:
        assert os.path.samefile(encode.BUILT.__file__, SANITIZED), encode.BUILT.__file__
    c_dumper, py_dumper = Dumper(MASKING[masking]), Dumper(MASKING[masking])
    c_dumper.native, py_dumper.native = encode.BUILT, None
    py_dumper.masker.word_suspects = None
    taps = [d.tap("s\u00e9", "echo", "http", era="modern") for d in (c_dumper, py_dumper)]
    mono = start
    with mock.patch.object(encode, "_clock_offset", lambda: 1_700_000_000.25):
        for chunk in chunks:
            pair: list[list[tuple]] = [[], []]
            for step, direction, raw, kind, method, msg_id, policy in chunk:
                mono += step
                for batch, tap in zip(pair, taps):
                    batch.append((mono, tap.hops[direction], raw, KINDS[kind], method, msg_id, policy))
            written = outcome(c_dumper, pair[0])
            assert written == outcome(py_dumper, pair[1])
            assert taps[0].unanswered == taps[1].unanswered and c_dumper.unanswered == py_dumper.unanswered
            if written[0] == "wrote":
                for line in written[1].splitlines():
                    record = json.loads(line)    # what was exercised (--hypothesis-show-statistics)
                    event("masked" if "***" in record.get("frame", "") else "base64" if "frame_b64" in record
                          else "as it travelled")
                    if "latency_ms" in record:
                        event("an answer's latency")
            else:
                event("raised")
            raws = [record[2] for record in pair[0]]
            per_frame = {n for n, raw in enumerate(raws) if py_dumper.masker._word_suspects([raw])}
            assert set(encode.BUILT.suspects(raws)) == per_frame
