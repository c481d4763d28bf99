"""Newline framing: chunking never changes the frames; limits hold without buffering whole lines."""
from chunking import split
from hypothesis import given, settings, strategies as st

from wire_gateway.wire.framing import LineFramer, Oversize

LIMIT = 64


def frames_of(chunks, limit=LIMIT):
    framer = LineFramer(limit)
    out = []
    for chunk in chunks:
        out += framer.feed(chunk)
    out += framer.close()
    return out


lines = st.lists(st.binary(max_size=100).map(lambda b: b.replace(b"\n", b"x")), max_size=20)


@settings(max_examples=300)
@given(lines, st.lists(st.integers(min_value=0), max_size=30), st.booleans())
def test_any_chunking_gives_the_same_frames(body, cuts, trailing_newline):
    data = b"\n".join(body) + (b"\n" if trailing_newline else b"")
    assert frames_of(split(data, cuts)) == frames_of([data])


@settings(max_examples=200)
@given(lines)
def test_frames_are_the_nonblank_lines_and_long_ones_are_reported(body):
    data = b"\n".join(body) + b"\n"
    expected = []
    for line in body:
        if len(line) > LIMIT:
            expected.append(("over", len(line)))
        elif line.strip(b" \t\r"):
            expected.append(line)
    got = [("over", f.size) if isinstance(f, Oversize) else f for f in frames_of([data])]
    assert got == expected


def test_oversize_line_is_not_buffered_and_the_stream_recovers():
    framer = LineFramer(1024)
    out = framer.feed(b'{"id": 7, "x": "' + b"a" * 5000)
    assert out == []
    assert len(framer._buf) == 0  # discarded, not hoarded
    out = framer.feed(b"a" * 100_000)
    assert out == []
    out = framer.feed(b'"}\n{"ok":1}\n')
    assert isinstance(out[0], Oversize) and out[0].size == 16 + 5000 + 100_000 + 2
    assert out[0].prefix.startswith(b'{"id": 7')
    assert out[1] == b'{"ok":1}'


def test_last_line_without_newline_counts_at_eof():
    framer = LineFramer()
    assert framer.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert framer.feed(b":2}") == []
    assert framer.close() == [b'{"b":2}']


def test_crlf_is_kept_in_the_raw_frame():
    assert frames_of([b'{"a":1}\r\n']) == [b'{"a":1}\r']
