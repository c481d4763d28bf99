"""Test helper for framing property tests: cut a byte stream at arbitrary points."""


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` cut into consecutive pieces at the given positions (taken modulo its length + 1)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, prev = [], 0
    for p in [*points, len(data)]:
        pieces.append(data[prev:p])
        prev = p
    return pieces
