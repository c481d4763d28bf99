"""SSE codec: WHATWG parsing rules, chunking never changes the events, encode/decode round-trips."""
import pytest
from chunking import split
from hypothesis import given, settings, strategies as st

from wire_gateway.wire.sse import (
    Event,
    SSEDecoder,
    SSEError,
    encode_comment,
    encode_event,
    encode_retry,
)


def decode(chunks, **kw):
    dec = SSEDecoder(**kw)
    out = []
    for chunk in chunks:
        out += dec.feed(chunk)
    return out


# -- parsing rules ------------------------------------------------------------------------


def test_one_event_per_blank_line():
    stream = b'data: {"jsonrpc":"2.0","id":1,"result":{}}\n\ndata: {"x":2}\n\n'
    assert decode([stream]) == [Event(b'{"jsonrpc":"2.0","id":1,"result":{}}'), Event(b'{"x":2}')]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_all_three_line_endings(eol):
    stream = eol.join([b"event: message", b"id: 7", b"data: a", b"data: b", b"", b"data: c", b"", b""])
    assert decode([stream]) == [Event(b"a\nb", "7", "message"), Event(b"c", "7")]


def test_crlf_split_across_chunks_is_one_line_ending():
    # CR ends the line at once; the LF that follows in the next chunk must not make a blank line.
    assert decode([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]) == [Event(b"a\nb")]
    assert decode([b"data: a\r", b"\n", b"\r\n"]) == [Event(b"a")]


def test_comments_are_ignored():
    assert decode([b":\n: keep-alive\ndata: x\n:mid\n\n:\r\n"]) == [Event(b"x")]


def test_field_without_colon_has_empty_value():
    # "data" alone is a data field with an empty value; "id" alone resets the id
    assert decode([b"id: 1\ndata\ndata\n\n"]) == [Event(b"\n", "1")]
    dec = SSEDecoder()
    dec.feed(b"id: 1\ndata: a\n\nid\ndata: b\n\n")
    assert dec.last_event_id is None


def test_only_one_leading_space_is_stripped():
    assert decode([b"data:no space\n\ndata:  two\n\ndata:\ttab\n\n"]) == [
        Event(b"no space"), Event(b" two"), Event(b"\ttab")]


def test_colons_in_the_value_are_kept():
    assert decode([b'data: {"a":"b:c"}\n\n']) == [Event(b'{"a":"b:c"}')]


def test_unknown_fields_are_ignored():
    assert decode([b"foo: bar\nDATA: x\ndata : y\ndata: z\n\n"]) == [Event(b"z")]


def test_event_without_data_is_not_dispatched_but_sets_the_id():
    dec = SSEDecoder()
    assert dec.feed(b"id: 42\nevent: ping\n\n") == []
    assert dec.last_event_id == "42"
    assert dec.feed(b"data: x\n\n") == [Event(b"x", "42")]  # id persists, event type does not


def test_empty_data_field_dispatches_an_empty_event():
    # the legacy era's priming event: an id and an empty data field
    dec = SSEDecoder()
    assert dec.feed(b"id: s1-0\ndata:\n\n") == [Event(b"", "s1-0")]
    assert dec.last_event_id == "s1-0"


def test_id_persists_and_is_replaced():
    got = decode([b"id: a\ndata: 1\n\ndata: 2\n\nid: b\ndata: 3\n\n"])
    assert [(e.data, e.id) for e in got] == [(b"1", "a"), (b"2", "a"), (b"3", "b")]


def test_id_with_nul_is_ignored():
    dec = SSEDecoder()
    got = dec.feed(b"id: good\ndata: 1\n\nid: ba\x00d\ndata: 2\n\n")
    assert [e.id for e in got] == ["good", "good"]
    assert dec.last_event_id == "good"


def test_id_only_becomes_last_event_id_at_dispatch():
    dec = SSEDecoder()
    dec.feed(b"id: 5\ndata: x\n")
    assert dec.last_event_id is None  # the event is not complete
    dec.feed(b"\n")
    assert dec.last_event_id == "5"


def test_retry():
    dec = SSEDecoder()
    assert dec.feed(b"retry: 1500\n") == []
    assert dec.retry == 1500  # takes effect when read, even without an event
    # still the same block: the event reports the valid retry; invalid ones change nothing
    assert dec.feed(b"retry: soon\nretry: -1\nretry:\nretry: \xd9\xa3\ndata: x\n\n") == [Event(b"x", retry=1500)]
    assert dec.retry == 1500
    assert dec.feed(b"retry: 9x\ndata: w\n\n") == [Event(b"w")]
    assert dec.feed(b"retry: 20\ndata: y\n\ndata: z\n\n") == [Event(b"y", retry=20), Event(b"z")]
    assert dec.feed(b"retry: " + b"9" * 5000 + b"\ndata: v\n\n") == [Event(b"v")]  # hostile, ignored
    assert dec.retry == 20


def test_bom_is_stripped_once_even_when_split():
    bom = b"\xef\xbb\xbf"
    assert decode([bom + b"data: x\n\n"]) == [Event(b"x")]
    assert decode([b"\xef", b"\xbb", b"\xbfdata: x\n\n"]) == [Event(b"x")]
    # a second BOM is part of the first line's field name, so that field is unknown
    assert decode([bom + bom + b"data: x\n\ndata: y\n\n"]) == [Event(b"y")]
    # a BOM later in the stream is not special
    assert decode([b"data: x\n\n" + bom + b"data: y\n\n"]) == [Event(b"x")]
    # a first chunk that only looks like the start of a BOM
    assert decode([b"\xef", b"data: x\n\n"]) == []  # "\xefdata" is an unknown field
    assert decode([b"d", b"ata: x\n\n"]) == [Event(b"x")]


def test_non_utf8_id_and_event_are_replaced_not_fatal():
    got = decode([b"id: \xff\nevent: \xfe\ndata: x\n\n"])
    assert got == [Event(b"x", "\ufffd", "\ufffd")]


def test_incomplete_event_at_end_is_not_returned():
    assert decode([b"data: x\n\ndata: partial\n", b"data: more"]) == [Event(b"x")]


# -- limits -------------------------------------------------------------------------------


def test_a_line_that_never_ends_is_refused():
    dec = SSEDecoder(max_event_bytes=1000)
    dec.feed(b"data: ")
    with pytest.raises(SSEError, match="exceeds 1000 bytes"):
        for _ in range(100):
            dec.feed(b"x" * 100)


def test_an_event_that_never_ends_is_refused():
    dec = SSEDecoder(max_event_bytes=1000)
    with pytest.raises(SSEError):
        for _ in range(100):
            dec.feed(b"data: " + b"x" * 50 + b"\n")


def test_an_event_within_the_limit_is_fine_and_memory_is_released():
    dec = SSEDecoder(max_event_bytes=1000)
    for _ in range(1000):  # many events, each small: no accumulation
        assert dec.feed(b"data: " + b"x" * 900 + b"\n\n") == [Event(b"x" * 900)]
    for _ in range(1000):  # comments do not accumulate either
        assert dec.feed(b": " + b"x" * 900 + b"\n") == []


# -- encoding -----------------------------------------------------------------------------


def test_encode_event():
    assert encode_event(b'{"id":1}') == b'data: {"id":1}\n\n'
    assert encode_event(b"x", event_id="7", event="message") == b"event: message\nid: 7\ndata: x\n\n"
    assert encode_event(b"a\nb\r\nc\rd") == b"data: a\ndata: b\ndata: c\ndata: d\n\n"
    assert encode_event(b"") == b"data: \n\n"


@pytest.mark.parametrize("kw", [{"event_id": "a\nb"}, {"event_id": "a\rb"}, {"event_id": "a\0b"},
                                {"event": "x\ny"}])
def test_encode_event_refuses_field_injection(kw):
    with pytest.raises(ValueError):
        encode_event(b"x", **kw)


def test_encode_comment_and_retry():
    assert encode_comment() == b":\n"
    assert encode_comment("keep-alive") == b": keep-alive\n"
    assert encode_comment("a\nb") == b": a\n: b\n"
    assert encode_retry(3000) == b"retry: 3000\n"
    for bad in (-1, 1.5, True, "10"):
        with pytest.raises(ValueError):
            encode_retry(bad)
    dec = SSEDecoder()
    assert dec.feed(encode_comment("x\ny") + encode_retry(10) + encode_event(b"z")) == [Event(b"z", retry=10)]
    assert dec.retry == 10


# -- properties ---------------------------------------------------------------------------

single_line = st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))
multi_line = st.lists(single_line, min_size=1, max_size=4).map(b"\n".join)
field_text = st.text(max_size=12).map(lambda s: s.replace("\n", "").replace("\r", "").replace("\0", ""))
events = st.lists(
    st.tuples(st.one_of(single_line, multi_line), st.none() | field_text, st.none() | field_text,
              st.none() | st.integers(min_value=0, max_value=10**6), st.none() | field_text),
    max_size=8,
)


def build(evs):
    """Encode (data, id, event, retry, comment) tuples; also the events a decoder must return."""
    stream, expected, last_id = [], [], None
    for data, event_id, event, retry, comment in evs:
        if comment is not None:
            stream.append(encode_comment(comment))
        if retry is not None:
            stream.append(encode_retry(retry))
        stream.append(encode_event(data, event_id, event))
        if event_id is not None:
            last_id = event_id or None
        expected.append(Event(data, last_id, event or None, retry))
    return b"".join(stream), expected


@settings(max_examples=150, deadline=None)
@given(events, st.lists(st.integers(min_value=0), max_size=30))
def test_encode_decode_round_trips_under_any_chunking(evs, cuts):
    stream, expected = build(evs)
    assert decode([stream]) == expected
    assert decode(split(stream, cuts)) == expected


@settings(max_examples=100, deadline=None)
@given(events, st.lists(st.integers(min_value=0), max_size=30), st.sampled_from([b"\r\n", b"\r"]),
       st.booleans())
def test_line_endings_and_bom_do_not_matter(evs, cuts, eol, bom):
    stream, expected = build(evs)
    stream = (b"\xef\xbb\xbf" if bom else b"") + stream.replace(b"\n", eol)
    assert decode(split(stream, cuts)) == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(min_value=0), max_size=30))
def test_any_bytes_any_chunking_same_events(data, cuts):
    """Arbitrary (even hostile) input: chunking never changes the outcome, nothing but SSEError escapes."""
    def run(chunks):
        dec = SSEDecoder(max_event_bytes=200)
        out = []
        try:
            for chunk in chunks:
                out += dec.feed(chunk)
        except SSEError:
            return "error"
        return out, dec.last_event_id, dec.retry

    whole = run([data])
    pieces = run(split(data, cuts))
    if whole != "error" and pieces != "error":
        assert whole == pieces
    else:
        # the limit may trip at a different point only if it trips: both must refuse
        assert whole == pieces == "error"
