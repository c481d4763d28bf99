"""The dump's record encoder: a chunk of hook tuples (`dump.tap`) to JSON lines, masked.

The C encoder (`_records.encode`, where the extension is built) does the usual records in one
call and stops where a record needs Python; `_encode_python` is the same encoder in Python (the
reference the C one is fuzzed against, and the fallback where no C compiler was at hand). Both
write the same bytes; docs/dumps.md says what a record holds and what each way costs. The writer
task (`dump.writer.Dumper`, built on this class) decides when to encode and where the bytes go.
"""
from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterable, Sequence
from itertools import repeat
from operator import mul, sub
from types import ModuleType
from typing import Any

import orjson

from wire_gateway.dump.mask import FrameMasker
from wire_gateway.dump.tap import to_json
from wire_gateway.wire.frame import Frame, Kind, decode

_REQUEST, _RESPONSE, _ERROR, _NOTIFICATION = Kind.REQUEST, Kind.RESPONSE, Kind.ERROR, Kind.NOTIFICATION
_KIND_ORDER = (_REQUEST, _NOTIFICATION, _RESPONSE, _ERROR)   # the heads' order (tap.KINDS), for the C encoder
BUILT: ModuleType | None
"""The C encoder as built (an optional part of the build), or None."""
try:
    from wire_gateway.dump import _records as BUILT
except ImportError:
    BUILT = None
# WIRE_GATEWAY_DUMP_ENCODER=python: the Python encoder even where the C one is built.
NATIVE = None if os.environ.get("WIRE_GATEWAY_DUMP_ENCODER") == "python" else BUILT
# One record: after mono, the tap's head (,"session" .. "kind"); after bytes, `,"latency_ms":..` or
# nothing; after "policy":, the policy and the frame's key, then the frame.
_RECORD = b'{"ts":"%s.%06dZ","mono":%.6f%s,"method":%s,"id":%s,"bytes":%d%s,"policy":%s%s}\n'
_RECORD_INT_ID = _RECORD.replace(b'"id":%s', b'"id":%d')   # for a chunk whose ids are all integers
_INT = {int}
_FORMATS: dict[tuple[int, bool], bytes] = {}   # _RECORD (or _RECORD_INT_ID) times n, for a chunk of n records


class RecordEncoder:
    """Encodes chunks of hook tuples: masks their frames (`masker`) and keeps what spans chunks,
    the RFC 3339 text of the current second and the count of requests waiting for an answer
    (`unanswered`, about: the taps' `unanswered` maps hold them)."""

    def __init__(self, masker: FrameMasker, native: ModuleType | None) -> None:
        self.masker = masker
        self.native = native             # the C record encoder, or None: the Python one
        if native is None:               # and the masking pre-check's words in Python too
            masker.word_suspects = None
        self.unanswered = 0              # requests in the taps' `unanswered`, about (bounded)
        self._sec = -1                   # the whole second whose RFC 3339 text is in _sec_text
        self._sec_text = b""

    def _encode_native(self, native: ModuleType, batch: list[tuple[Any, ...]]) -> bytes:
        """The C encoder for the usual records; where it stops (a record it leaves to Python, or
        the next second), one record in Python or a new call for the new second.

        Masking: with no configured patterns the C encoder runs the word test itself, in its one
        pass over each frame, and stops at a suspect frame; that frame is masked here and the
        call goes on from it with the masked text. With patterns, all frames are tested first."""
        masker = self.masker
        overrides: list[bytes | None] | None = None
        word_test = not masker.has_patterns
        if not word_test:
            raws = [record[2] for record in batch]
            suspects = masker.suspects(raws)
            if suspects:
                overrides = [None] * len(batch)
                for n in suspects:
                    text, overrides[n] = _frame_json(masker.mask_raw(raws[n], True)[0])
                    if not text:      # masked into something that is not UTF-8: all the careful way
                        return self._encode_python(batch)
        parts = []
        opened = 0
        pos, end = 0, len(batch)
        while pos < end:
            sec_text, second_at = self._second_of(batch[pos][0])
            data, more, stop, suspect = native.encode(batch, pos, sec_text, second_at, overrides, _KIND_ORDER,
                                                           _METHODS, _method_json, to_json, _tail, word_test)
            parts.append(data)
            opened += more
            if suspect:
                text, masked = _frame_json(masker.mask_raw(batch[stop][2], True)[0])
                if text:              # go on from it, with its masked text
                    if overrides is None:
                        overrides = [None] * len(batch)
                    overrides[stop] = masked
                    pos = stop
                    continue
            if stop == pos or suspect:
                parts.append(self._encode_python(batch[stop:stop + 1]))
                stop += 1
            pos = stop
        self.unanswered += opened
        return b"".join(parts)

    def _second_of(self, mono: float, offset: float | None = None) -> tuple[bytes, float]:
        """The RFC 3339 text of the wall-clock second holding monotonic time `mono`, and the
        monotonic time at which that second began; the last one is remembered (`_sec`).
        `offset`: wall-clock time minus monotonic time (read now when not given)."""
        if offset is None:
            offset = _clock_offset()
        second_at = self._sec - offset
        if not 0.0 <= mono - second_at < 1.0:
            self._sec = int(mono + offset)
            self._sec_text = _second_text(self._sec)
            second_at = self._sec - offset
        return self._sec_text, second_at

    def _encode_python(self, batch: list[tuple]) -> bytes:
        """The encoder in Python: the work per record that needs no decision (the frame's JSON
        text, the id's, the method's, the size, the time) is done a column at a time by C loops
        (`map` over orjson and bytes methods); one Python loop picks each record's head and
        latency; a single `bytes %` formats the lot (key order is fixed: see docs/dumps.md).
        Whatever is unusual (a frame the gateway wrote, one that is not UTF-8, a large one seen
        at two hops, a chunk across a second's edge) takes a slower way for that column only."""
        kinds: Sequence[Any]          # tuples, or lists where frames the gateway wrote are decoded
        methods: Sequence[Any]
        ids: Sequence[Any]
        monos, hops, raws, kinds, methods, ids, policies = zip(*batch)
        careful: set[int] = set()
        if None in kinds:            # frames the gateway wrote: decode them; mask them the careful way
            kinds, methods, ids = list(kinds), list(methods), list(ids)
            for n, kind in enumerate(kinds):
                if kind is None:
                    careful.add(n)
                    decoded = decode(raws[n])
                    if isinstance(decoded, Frame):
                        kinds[n], methods[n], ids[n] = decoded.kind, decoded.method, decoded.id
        frames, binary = self._frame_texts(raws, careful)
        int_ids = set(map(type, ids)) == _INT   # the usual chunk: `%d` formats them, no JSON call each
        if int_ids:
            id_jsons: Iterable[Any] = ids
        else:
            try:
                id_jsons = list(map(orjson.dumps, ids))
            except (TypeError, orjson.JSONEncodeError):   # an id beyond 64 bits
                id_jsons = list(map(to_json, ids))
        method_jsons = list(map(_METHODS.get, methods))
        if None in method_jsons:
            method_jsons = [known or _method_json(method) for known, method in zip(method_jsons, methods)]
        sec_texts, fracs = self._times(monos)
        if binary or policies.count(None) != len(policies):
            tails: Iterable[bytes] = [_tail(policy, n not in binary) for n, policy in enumerate(policies)]
        else:
            tails = repeat(_TEXT_TAIL)
        args: list[Any] = []
        opened = 0
        for mono, hop, kind, msg_id, sec_text, frac, method_json, id_json, size, tail, frame_json in zip(
                monos, hops, kinds, ids, sec_texts, fracs, method_jsons, id_jsons, map(len, raws), tails, frames):
            latency = b""
            if kind is _REQUEST:
                head = hop[0]
                if msg_id is not None:
                    hop[5][msg_id] = mono
                    opened += 1
            elif kind is _RESPONSE or kind is _ERROR:
                head = hop[2] if kind is _RESPONSE else hop[3]
                if msg_id is not None:
                    start = hop[6].pop(msg_id, None)
                    if start is not None:
                        opened -= 1
                        latency = b',"latency_ms":%.3f' % ((mono - start) * 1000)
            elif kind is _NOTIFICATION:
                head = hop[1]
            else:
                head = hop[4]
            args += (sec_text, frac, mono, head, method_json, id_json, size, latency, tail, frame_json)
        self.unanswered += opened
        fmt = _FORMATS.get((len(batch), int_ids))
        if fmt is None:
            fmt = _FORMATS[len(batch), int_ids] = (_RECORD_INT_ID if int_ids else _RECORD) * len(batch)
        return fmt % tuple(args)

    def _frame_texts(self, raws: tuple[bytes, ...], careful: set[int]) -> tuple[list[bytes], set[int]]:
        """Each frame's JSON string (masked where it may hold a secret), and which are base64
        (not UTF-8). `careful`: frames the gateway wrote, masked after the broad test."""
        masker = self.masker
        suspects = masker.suspects(raws)
        if not careful and max(map(len, raws)) <= _LARGE:
            try:
                frames = list(map(orjson.dumps, map(bytes.decode, raws)))
            except UnicodeDecodeError:
                pass
            else:
                for n in suspects:   # a masked JSON text is UTF-8, as the frame was
                    frames[n] = _frame_json(masker.mask_raw(raws[n], True)[0])[1]
                return frames, set()
        return self._frame_texts_one_by_one(raws, suspects, careful)

    def _frame_texts_one_by_one(self, raws: tuple[bytes, ...], suspects: set[int],
                                careful: set[int]) -> tuple[list[bytes], set[int]]:
        """The slower way, a frame at a time: the same bytes at two hops (a passthrough) are
        encoded once, which matters for large frames."""
        masker = self.masker
        frames: list[bytes] = []
        binary: set[int] = set()
        done: dict[tuple[int, bool | None], tuple[bool, bytes]] = {}
        for n, raw in enumerate(raws):
            suspect = True if n in suspects else None if n in careful else False
            key = (id(raw), suspect)
            known = done.get(key)
            if known is None:
                masked = raw if suspect is False else masker.mask_raw(raw, suspect is True)[0]
                known = done[key] = _frame_json(masked)
            if not known[0]:
                binary.add(n)
            frames.append(known[1])
        return frames, binary

    def _times(self, monos: tuple[float, ...]) -> tuple[Iterable[bytes], Iterable[float]]:
        """Each record's RFC 3339 second and its microseconds (as a float: `%06d` truncates it).

        The hooks read only the monotonic clock; the wall-clock time is derived from it, with the
        offset between the two clocks read once per chunk (`_second_of`)."""
        offset = _clock_offset()
        lo, hi = min(monos), max(monos)
        sec_text, second_at = self._second_of(lo, offset)
        if lo - second_at >= 0.0 and hi - second_at < 1.0:   # the usual chunk: all in one second
            return repeat(sec_text), map(mul, map(sub, monos, repeat(second_at)), repeat(1e6))
        sec_texts, fracs = [], []
        for mono in monos:
            frac = mono - second_at
            if frac >= 1.0 or frac < 0.0:
                sec_text, second_at = self._second_of(mono, offset)
                frac = mono - second_at
                if not 0.0 <= frac < 1.0:     # rounding at the very edge of a second
                    frac = 0.0 if frac < 0.0 else 0.999999
            sec_texts.append(sec_text)
            fracs.append(frac * 1e6)
        return sec_texts, fracs


_METHODS: dict[Any, bytes] = {None: b"null"}   # method name -> its JSON (a handful of names recur)
_LARGE = 64 << 10                              # frames beyond this are encoded once for two hops


def _frame_json(raw: bytes) -> tuple[bool, bytes]:
    """(True, the frame as a JSON string) or, when it is not UTF-8, (False, its base64 as one)."""
    try:
        return True, orjson.dumps(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return False, b'"' + base64.b64encode(raw) + b'"'


def _tail(policy: str | None, text: bool) -> bytes:
    return (b"null" if policy is None else to_json(policy)) + (b',"frame":' if text else b',"frame_b64":')


_TEXT_TAIL = _tail(None, True)   # after "policy": for the usual frame (no policy, UTF-8)


def _clock_offset() -> float:
    """Wall-clock time minus monotonic time, now (the hooks read only the monotonic clock)."""
    return time.time() - time.monotonic()


def _second_text(sec: int) -> bytes:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode()


def _method_json(method: Any) -> bytes:
    encoded = to_json(method)
    if len(_METHODS) < 1000:
        _METHODS[method] = encoded
    return encoded


def rfc3339(wall: float) -> str:
    """UTC, microseconds, 'Z' (for the rare record not made by `_encode`: a drop count)."""
    sec = int(wall)
    return f"{_second_text(sec).decode()}.{int((wall - sec) * 1e6):06d}Z"
