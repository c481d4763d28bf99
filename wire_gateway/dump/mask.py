"""Masking secrets out of frames before they are dumped.

Masking works on the parsed message, not on the text: a key-based rule must see keys
as JSON sees them (escapes, nesting), and the frame must stay valid JSON so the
dump tools and fixtures can read it. Only frames that might hold something to mask
are parsed and re-serialised (`FrameMasker.suspects` is a cheap test on a batch of JSON
frames, `might_hold_secret` a broader one on any bytes); every other frame is dumped as
the exact bytes that travelled.

What counts as a secret (key names, credential schemes) is `telemetry.secret_rules`' table, which
the log masker reads too; this module derives its regexes and pre-check words from it, and hands
it to the C word test (`_records.set_secret_rules`) when it is imported.
"""
from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson

from wire_gateway.telemetry import secret_rules
from wire_gateway.telemetry.masking import Masker
from wire_gateway.wire import jsonfast

_c_word_suspects: Callable[[Iterable[bytes]], list[int]] | None
try:   # the word test in C (an optional part of the build): one pass per frame
    from wire_gateway.dump import _records
except ImportError:
    _c_word_suspects = None
else:  # it reads the same table as the rest of this module (see _records.c: set_secret_rules)
    _records.set_secret_rules([s.encode() for s in secret_rules.KEY_SPELLINGS], secret_rules.SEPARATORS.encode(),
                              [s.encode() for s in secret_rules.SCHEMES], [f.encode() for f in secret_rules.CASE_FOLDS])
    _c_word_suspects = _records.suspects

MASK = "***"
_KEY_MEMO_SIZE = 4096      # key names whose SECRET_KEY verdict is remembered, at most
_KEY_MEMO_LENGTH = 128     # and only names this short

# A whole key name is secret when SECRET_KEY matches it in full: one of secret_rules' names,
# optionally after a "something_" / "something-" prefix ("github_token", "x-api-key").
SECRET_KEY = re.compile(r"(?:.*[_-])?" + secret_rules.KEY_PATTERN, re.IGNORECASE)
BEARER = re.compile(r"\b(" + "|".join(secret_rules.SCHEMES) + r")\s+[" + secret_rules.CREDENTIAL_CHARS + "]+",
                    re.IGNORECASE)
# Anything that could make the exact-bytes shortcut unsafe: a secret-ish word, a credential
# scheme, or any escape (a key spelled with \u escapes must not slip past the word test).
# Matched on the lower-cased bytes, as substring tests in C: several times faster than a
# case-insensitive regex. This broad test is for any text (a frame that is not JSON is masked
# as text, by rules that look for these words anywhere); JSON texts take the narrower test below.
# Non-ASCII letters that re.IGNORECASE matches to an ASCII letter of the words (secret_rules'
# CASE_FOLDS), UTF-8 encoded: `bytes.lower()` leaves them as they are, so a key such as
# "api_\u212aey" written unescaped would pass a plain word test.
_FOLDS = tuple(f.encode() for f in secret_rules.CASE_FOLDS)
_WORDS = tuple(w.encode() for w in (*secret_rules.KEY_WORDS, *secret_rules.SCHEMES))

# The narrow test, for JSON texts only (frames that parsed). A key that SECRET_KEY matches in
# full ends with one of its names' last words, and in JSON its closing quote follows the last
# letter at once; what may come before the word is just as fixed (the rest of a spelling of the
# name, after the key's opening quote or a separator), which a hit is checked against, so that
# progressToken or "key" do not send a frame the slow way. The C word test is the same rule.
# An escape anywhere is a backslash, a trigger of its own. BEARER needs its scheme word,
# anywhere in a string.
_KEY_WORDS: dict[bytes, tuple[bytes, ...]] = {}   # 'token"' -> (what may come before it, ...)
_STARTS = (b'"', *(bytes([c]) for c in secret_rules.SEPARATORS.encode()))
for _spelling in secret_rules.KEY_SPELLINGS:
    _word = next(w for w in secret_rules.KEY_WORDS if _spelling.endswith(w)).encode() + b'"'
    _KEY_WORDS[_word] = (*_KEY_WORDS.get(_word, ()),
                         *(start + _spelling.encode()[:len(_spelling) + 1 - len(_word)] for start in _STARTS))
# Each group of words comes with a letter they all contain that is rare in protocol frames: a
# one-byte search (memchr) for it decides whether the words' own, much slower, searches are
# worth running at all (a word with none of these letters is searched for always).
_RARE_LETTERS = b"zqjxkwv"


def _rare_letter(word: bytes) -> bytes | None:
    return next((bytes([c]) for c in _RARE_LETTERS if c in word), None)


_JSON_WORDS = tuple((rare, tuple(w for w in _KEY_WORDS if _rare_letter(w) == rare))
                    for rare in dict.fromkeys(_rare_letter(w) for w in _KEY_WORDS) if rare is not None)
_JSON_ALWAYS = (*(w for w in _KEY_WORDS if _rare_letter(w) is None), b"\\")   # and a backslash (1 byte anyway)
# BEARER needs whitespace after the scheme. Inside a JSON string in ASCII text, whitespace is a
# space or an escape (JSON forbids raw control characters): compact frames, with no space at
# all, skip the scheme words.
_SCHEMES = tuple(s.encode() for s in secret_rules.SCHEMES)
# A space, or a raw control byte (not JSON, but `\s` matches some: counted as whitespace, as the C
# test does); not NUL, which joins the frames of a batch.
_SPACE_OR_CONTROL = re.compile(rb"[\x01-\x20]")
_SCHEME_LETTERS = tuple(dict.fromkeys(s[:1] for s in _SCHEMES))


def _has_word(low: bytes) -> bool:
    """The broad test on lower-cased bytes (without the backslash)."""
    return any(word in low for word in _WORDS) or (not low.isascii() and any(f in low for f in _FOLDS))


def json_triggers(low: bytes, backslash: bool = True) -> list[bytes]:
    """The words worth searching for in lower-cased JSON text `low` (with `json_find`): a JSON
    text holding none of them cannot hold anything for `FrameMasker.mask_obj` to mask, apart
    from the configured patterns, which are checked separately. backslash=False: without the
    backslash, for a text whose escapes do not matter (then an escaped tab may be the whitespace
    after a scheme)."""
    words = list(_JSON_ALWAYS) if backslash else list(_JSON_ALWAYS[:-1])
    for rare, group in _JSON_WORDS:
        if rare in low:
            words += group
    if low.isascii():
        if (not backslash or _SPACE_OR_CONTROL.search(low)) and any(letter in low for letter in _SCHEME_LETTERS):
            words += _SCHEMES
    else:                    # non-ASCII whitespace, and letters that IGNORECASE folds to ASCII ones
        words += _SCHEMES
        words += _FOLDS
    return words


def json_find(low: bytes, word: bytes, start: int = 0) -> int:
    """The first place from `start` where a trigger word occurs in `low` (-1: nowhere): for a
    key's word, only where the right thing comes before it."""
    i = low.find(word, start)
    before = _KEY_WORDS.get(word)
    if before is not None:
        while i >= 0 and not low.endswith(before, 0, i):
            i = low.find(word, i + 1)
    return i


def _spellings(values: Iterable[str]) -> list[str]:
    """Configured secret values (telemetry.masking.SECRETS) as a frame's bytes may spell them: as
    they are and, for a value with a character JSON escapes (a quote, a backslash, a control
    character), escaped as the encoder writes them, so that the pre-check on the raw bytes sees
    it too. (Other spellings, \\u escapes, are backslashes: the pre-check's own trigger.)"""
    found = []
    for value in values:
        found.append(value)
        escaped = orjson.dumps(value).decode()[1:-1]
        if escaped != value:
            found.append(escaped)
    return found


def _find_in_batch(raws: Sequence[bytes], joined: bytes, words: Iterable[bytes],
                   find: Callable[..., int] | None = None) -> set[int]:
    """Which frames of a batch hold any of `words`: `joined` is the frames joined by NUL (or a
    form of it of the same length, e.g. lower-cased); one search of it per word (`find(joined,
    word, start)`, bytes.find by default), then only from the next frame on after each hit.
    Where each frame starts is worked out once something is found."""
    find = find or bytes.find
    found: set[int] = set()
    starts: list[int] = []
    last = len(raws) - 1
    for word in words:
        i = find(joined, word)
        if i >= 0 and not starts:
            pos = 0
            for raw in raws:
                starts.append(pos)
                pos += len(raw) + 1
        while i >= 0:
            n = bisect_right(starts, i) - 1
            found.add(n)
            if n == last:
                break
            i = find(joined, word, starts[n + 1])   # the rest of that frame is settled
    return found


class FrameMasker:
    def __init__(self, patterns: Iterable[str] = (), secret_values: Iterable[str] = ()) -> None:
        """`patterns`: configured regular expressions; `secret_values`: configured secrets' values,
        masked wherever they occur, as literal patterns. Either makes every frame take the exact
        path (see docs/dumps.md): without them the word test alone decides, in the C encoder's
        own pass."""
        spellings = _spellings(secret_values)
        self.patterns = [re.compile(p) for p in [*patterns, *map(re.escape, spellings)]]
        # For frames that are not JSON: the values are among the patterns, not the process's registry.
        self._text_masker = Masker((p.pattern for p in self.patterns), secrets=None)
        # Configured patterns are matched on the decoded text too, so the pre-check stays exact.
        # Secret values are found by substring search instead, a batch at a time (a regex per
        # frame cost several times the word test).
        self._literals = [v.encode("utf-8", "surrogatepass") for v in spellings]
        self._bytes_patterns = []
        self._text_patterns = []
        for p in self.patterns[:len(self.patterns) - len(spellings)]:
            try:
                self._bytes_patterns.append(re.compile(p.pattern.encode("utf-8")))
            except (re.error, UnicodeEncodeError):
                self._text_patterns.append(p)
        # SECRET_KEY's verdict per key name: the same few dozen keys recur in every frame, and the
        # regex (a leading `.*` that backtracks) costs 0.5-2 us a key.
        self._secret_keys: dict[str, bool] = {}
        self.word_suspects = _c_word_suspects   # None: `_word_suspects`, the same test in Python

    @property
    def has_patterns(self) -> bool:
        """Whether patterns were configured: without any, the word test alone decides (and the
        C record encoder can run it in its own pass over a frame)."""
        return bool(self.patterns)

    def might_hold_secret(self, raw: bytes) -> bool:
        """The broad test, for any text."""
        low = raw.lower()
        if b"\\" in low or _has_word(low):
            return True
        if any(p.search(raw) for p in self._bytes_patterns) or any(v in raw for v in self._literals):
            return True
        if self._text_patterns:
            text = raw.decode("utf-8", "replace")
            return any(p.search(text) for p in self._text_patterns)
        return False

    def suspects(self, raws: Sequence[bytes]) -> set[int]:
        """Which of a batch of JSON texts (frames that parsed) might hold a secret; the others
        are written as they are. A frame that may not be JSON must go through `mask_raw`.

        The word test is C (`_records.suspects`: one pass per frame and a look back from each
        quote) where it is built, else `_word_suspects`; the configured patterns are Python's."""
        if self._text_patterns:
            return set(range(len(raws)))
        found = set(self.word_suspects(raws)) if self.word_suspects else self._word_suspects(raws)
        if self._bytes_patterns:   # per frame: a configured pattern may be anchored (^, $)
            for n, raw in enumerate(raws):
                if n not in found and any(p.search(raw) for p in self._bytes_patterns):
                    found.add(n)
        if self._literals:
            # a hit that spans two frames (a value with a NUL) only adds a suspect
            found |= _find_in_batch(raws, b"\0".join(raws), self._literals)
        return found

    def _word_suspects(self, raws: Sequence[bytes]) -> set[int]:
        """The word test in Python (where the C one is not built): the same rules, a batch at a time.

        One pass over the joined, lower-cased frames per trigger word, and only for the words
        whose rare letter occurs in the batch at all (`json_triggers`): a regex per frame, and
        later every word searched for, was the largest single cost of a dump record (and in the
        end the pre-check still cost more than the C encoder: hence the C word test)."""
        low = b"\0".join(raws).lower()     # no word spans two frames: none contains a NUL
        return _find_in_batch(raws, low, json_triggers(low), json_find)

    def mask_raw(self, raw: bytes, suspect: bool = False) -> tuple[bytes, bool]:
        """The frame to dump and whether anything was masked. Unparseable frames that
        might hold a secret are masked as text, never written as they are. suspect=True: a
        pre-check (`suspects`) has already said this frame might hold one."""
        if not suspect and not self.might_hold_secret(raw):
            return raw, False
        try:
            obj = jsonfast.loads(raw)
        except ValueError:
            text = raw.decode("utf-8", "replace")
            masked = self._text_masker(self._mask_text(text))
            return masked.encode("utf-8"), masked != text
        # Without a backslash the pre-check fired for a word, not an escape: no need to look again.
        if b"\\" in raw and self._only_escapes(obj):
            return raw, False
        masked_obj, changed = self.mask_obj(obj, self._strings_may_match(raw))
        if not changed:
            return raw, False
        return jsonfast.dumps(masked_obj), True

    def _only_escapes(self, obj: Any) -> bool:
        """True when the pre-check fired only for a backslash and the message, with its escapes
        resolved, holds nothing the words or the configured patterns could match. Most tool
        results carry `\\n` or `\\"` in their text; walking each of them costs about twice as much."""
        if self._text_patterns:
            return False
        try:
            # Escapes resolved (only quote, backslash and control characters stay escaped): every
            # word the raw bytes hold is here too, and so is every word an escape spelled out.
            plain = orjson.dumps(obj)
        except (TypeError, orjson.JSONEncodeError):   # an integer beyond 64 bits: take the long way
            return False
        low = plain.lower()
        # JSON text: the narrow words, without the backslash (the escapes left are \\" \\\\ and
        # control characters, which spell no letter).
        if any(json_find(low, word) >= 0 for word in json_triggers(low, backslash=False)):
            return False
        return not any(p.search(plain) for p in self._bytes_patterns) and not any(v in plain for v in self._literals)

    def _strings_may_match(self, raw: bytes) -> bool:
        """Whether any string value in this frame could need `_mask_text`: it has configured
        patterns to apply, a credential scheme word, or something that could spell one in the
        parsed text without spelling it in the bytes (an escape, or a non-ASCII letter that
        IGNORECASE folds to an ASCII one). Otherwise only keys are looked at, which halves the walk."""
        if self.patterns or b"\\" in raw or not raw.isascii():
            return True
        low = raw.lower()
        return b"bearer" in low or b"basic" in low

    def is_secret_key(self, key: str) -> bool:
        verdict = self._secret_keys.get(key)
        if verdict is None:
            verdict = SECRET_KEY.fullmatch(key) is not None
            # Bounded in count and in size: key names a client invents, or sends by the megabyte,
            # are not kept.
            if len(key) <= _KEY_MEMO_LENGTH and len(self._secret_keys) < _KEY_MEMO_SIZE:
                self._secret_keys[key] = verdict
        return verdict

    def mask_obj(self, obj: Any, strings: bool = True) -> tuple[Any, bool]:
        """The message with secret keys' values and (strings=True) credentials in strings masked,
        and whether anything changed."""
        if isinstance(obj, dict):
            changed = False
            out = {}
            for key, value in obj.items():
                if isinstance(key, str) and self.is_secret_key(key) and value not in (None, "", MASK):
                    out[key] = MASK
                    changed = True
                    continue
                if isinstance(value, (dict, list)) or (strings and isinstance(value, str)):
                    new, did = self.mask_obj(value, strings)
                    out[key] = new
                    changed |= did
                else:
                    out[key] = value
            return (out, True) if changed else (obj, False)
        if isinstance(obj, list):
            changed = False
            items = []
            for value in obj:
                new, did = self.mask_obj(value, strings)
                items.append(new)
                changed |= did
            return (items, True) if changed else (obj, False)
        if strings and isinstance(obj, str):
            masked = self._mask_text(obj)
            return masked, masked != obj
        return obj, False

    def _mask_text(self, text: str) -> str:
        text = BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)
        for p in self.patterns:
            text = p.sub(MASK, text)
        return text
