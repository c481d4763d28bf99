"""Personal data by its shape: email addresses, phone numbers, payment cards, US social security
numbers, IBANs and IP addresses.

Every detector runs on every string of every call and result, so none of them steps a regex
through the whole text (`prefilter` says why). The email detector looks for '@' (a byte search)
and reads around each one. The others start from the string's *shape*: one `bytes.translate`
turns every digit into '0', every capital into 'A' and every small letter into 'a', and on that
form one regex that starts with the literal '0' finds the runs of digits and separators
(`_CLUSTER`); phone numbers, cards, SSNs, IBAN account parts and IPv4 addresses all sit in such
a run, and the five numeric detectors share the runs (one translation, one scan per string). IPv6
has its own scan, from each ':' of the shape. A run only says where to look: each candidate is
then read in the text itself and checked (separators, Luhn, issuer prefix, mod 97, country
length, octet ranges, version context), which is what keeps precision up on order numbers,
timestamps, ISBNs and versions.

What is not detected, on purpose: phone numbers written without separators or a '+' (a 10-digit
run is as often an id or a timestamp), 7-digit US local numbers, numbers with the '00'
international prefix, `user@host` without a dotted domain (`root@localhost` names an account,
not a person), `user:password@host` in URLs (not an email), loopback and unspecified addresses
(`127.0.0.1`, `0.0.0.0` and the rest of 0.x, `::1`, `::`) and netmasks (`255.255.255.0`), which
identify nobody, SSNs written with spaces, lower-case IBANs, and anything in non-ASCII digits.
"""
from __future__ import annotations

import ipaddress
import re

from wire_gateway.guardrails.detectors.base import Detector, Span
from wire_gateway.guardrails.detectors.prefilter import LastText, one_byte_each

# ---- the shape of a string, shared by the numeric detectors ----------------------------------

_SHAPE_TABLE = bytes.maketrans(
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    b"0" * 10 + b"A" * 26 + b"a" * 26)

# A run of digits and separators that starts with a digit and is 7 characters long at least: every
# phone number, card, SSN, IPv4 address and IBAN account part is one (or sits in one). A single
# character class after the literal keeps the scan in C; the detectors read the run exactly.
_CLUSTER = re.compile(rb"0[0 \-./()]{6,}")

Clusters = list[tuple[int, int, int]]


def _scan(text: str) -> tuple[bytes, Clusters]:
    """The text's shape (digits as '0', letters as 'A'/'a', one byte a code point) and its digit
    runs with 4 digits at least, as (start, end, how many digits)."""
    shape = one_byte_each(text).translate(_SHAPE_TABLE)
    clusters: Clusters = []
    if b"0" in shape:
        for m in _CLUSTER.finditer(shape):
            start, end = m.span()
            while shape[end - 1] != 48:        # 48: b"0"; a run ends with its last digit
                end -= 1
            digits = shape.count(b"0", start, end)
            if digits >= 4:
                clusters.append((start, end, digits))
    return shape, clusters


_numbers = LastText(_scan)


def _clusters(text: str) -> Clusters:
    return _numbers(text)[1]


def _disjoint(spans: list[Span]) -> list[Span]:
    """spans in order, each once: the windows around neighbouring clusters may overlap."""
    if len(spans) < 2:
        return spans
    out: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.start, -s.end)):
        if not out or span.start >= out[-1].end:
            out.append(span)
    return out


# ---- email -------------------------------------------------------------------------------------

_LOCAL = re.compile(r"[\w.%+\-']{1,64}\Z")      # \w: internationalised names (RFC 6531) too
_DOMAIN = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9\-@])")
_RETINA = re.compile(r"\d(?:\.\d)?x\.", re.ASCII)   # icon@2x.png, logo@1.5x.webp: image names


def _email(text: str, key: str | None) -> list[Span]:
    spans: list[Span] = []
    at = text.find("@")
    while at >= 0:
        local = _LOCAL.search(text, max(0, at - 64), at)
        domain = _DOMAIN.match(text, at + 1) if local else None
        if local and domain:
            start, end = local.start(), domain.end()
            while start < at and text[start] in ".'":
                start += 1
            name = text[start:at]
            url_user = start > 0 and text[start - 1] in "/:" and not text.endswith("mailto:", 0, start)
            scp = text.startswith(":", end) and end + 1 < len(text) and not text[end + 1].isspace()
            if (name and not name.endswith(".") and ".." not in name and not url_user and not scp
                    and not _RETINA.match(text, at + 1)):
                spans.append(Span("email", start, end))
        at = text.find("@", at + 1)
    return spans


# ---- phone -------------------------------------------------------------------------------------

# +<country code><number>: digits, single separators, a bracketed area code or trunk prefix. The
# quantifier is possessive: a phone's groups can be split many ways, and a regex that tried them
# all on a long run of digits would take exponential time (the last group is checked in `_phone`).
_INTL = re.compile(r"(?<![\w+])\+[1-9](?:\d|[ .\-](?=[\d(])|\(\d{1,4}\)(?=[ .\-]?\d))*+", re.ASCII)
_SHORT_TAIL = re.compile(r"[ .\-]\d\Z")     # "+1 555 123 4567 2": the 2 is not part of the number
# US: (555) 123-4567, 555-123-4567, 555.123.4567, 1-800-555-0199; area code 2-9xx.
_US = re.compile(r"(?<![\w+\-.])(?:1[ .\-])?(?:\([2-9]\d\d\) ?|[2-9]\d\d([.\-]))\d{3}(?(1)\1|[.\-])\d{4}"
                 r"(?![\w\-])(?![.\-]\d)", re.ASCII)
# National forms with a trunk 0: UK 020 7946 0958 / 07700 900123, DE 030 12345678 / 089/1234567 /
# (030) 1234567, FR 01 23 45 67 89.
_NATIONAL = re.compile(r"(?<![\w+\-./])(?<!\d )(?:\(0[1-9]\d{1,4}\)|0[1-9]\d{0,4})(?:[ /.\-]\d{2,8}){1,4}"
                       r"(?![\w\-])(?![ /.]\d)", re.ASCII)


_GROUP_SEP = re.compile(r"[ /.\-]")


def _national_ok(number: str, digits: int) -> bool:
    if not 10 <= digits <= 12:
        return False
    rest = number[number.index(")") + 1:].lstrip(" ") if number.startswith("(") else number
    groups = _GROUP_SEP.split(rest)
    if len({c for c in rest if not c.isdigit()}) > 1:
        return False                           # 01-02-2024 12:30: a date and a time
    if "." in rest or all(len(g) == 2 for g in groups):
        return len(groups) == 5 and all(len(g) == 2 for g in groups)   # French
    return True


def _phone(text: str, key: str | None) -> list[Span]:
    shape, clusters = _numbers(text)
    spans: list[Span] = []
    for s, e, digits in clusters:
        if digits < 7:
            continue
        lo, hi = max(0, s - 6), min(len(text), e + 3)
        # Each form only where it can be: after a '+', in 10 digits or more (US), at a trunk '0'.
        if text.find("+", lo, s + 1) >= 0:
            for m in _INTL.finditer(text, lo, hi):
                end = m.end()
                if _SHORT_TAIL.search(text, m.start(), end):
                    end -= 2
                if 9 <= shape.count(b"0", m.start(), end) <= 15 and text[end - 2].isdigit():
                    spans.append(Span("phone", m.start(), end))
        if digits >= 10:
            spans += [Span("phone", *m.span()) for m in _US.finditer(text, lo, hi)]
        if text[s] == "0" or text.find(" 0", s, e) >= 0 or text.find("(0", lo, e) >= 0:
            for m in _NATIONAL.finditer(text, lo, hi):
                if _national_ok(m.group(), shape.count(b"0", m.start(), m.end())):
                    spans.append(Span("phone", m.start(), m.end()))
    return _disjoint(spans)


# ---- payment card ------------------------------------------------------------------------------

_CARD = re.compile(r"(?<![\w.\-])(?<!\d )(?:\d{13,19}|\d{4}([ \-])\d{4}\1\d{4}\1\d{4}(?:\1\d{3})?"
                   r"|\d{4}([ \-])\d{6}\2\d{4,5})(?![\w\-])", re.ASCII)


def _luhn(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = ord(c) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_brand_ok(d: str) -> bool:
    """A plausible issuer prefix (IIN) for the length."""
    n, p2, p4 = len(d), int(d[:2]), int(d[:4])
    if d[0] == "4":
        return n in (13, 16, 19)                                   # Visa
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:
        return n == 16                                             # Mastercard
    if p2 in (34, 37):
        return n == 15                                             # American Express
    if p4 == 6011 or p2 == 65 or 644 <= int(d[:3]) <= 649:
        return 16 <= n <= 19                                       # Discover
    if 3528 <= p4 <= 3589:
        return 16 <= n <= 19                                       # JCB
    if 300 <= int(d[:3]) <= 305 or p2 in (36, 38, 39):
        return 14 <= n <= 19                                       # Diners Club
    if p2 == 62:
        return 16 <= n <= 19                                       # UnionPay
    if p4 in (5018, 5020, 5038, 5893, 6304, 6759, 6761, 6762, 6763):
        return 12 <= n <= 19                                       # Maestro
    return False


def _card(text: str, key: str | None) -> list[Span]:
    spans: list[Span] = []
    for s, e, digits in _clusters(text):
        if digits < 13:
            continue
        for m in _CARD.finditer(text, max(0, s - 2), min(len(text), e + 2)):
            number = m.group().replace(" ", "").replace("-", "")
            if _card_brand_ok(number) and _luhn(number):
                spans.append(Span("card", m.start(), m.end()))
    return _disjoint(spans)


# ---- US social security number -----------------------------------------------------------------

_SSN = re.compile(r"(?<![\w\-.])(?<!\d )(\d{3})-(\d{2})-(\d{4})(?![\w\-])(?!\.\d)", re.ASCII)


def _ssn(text: str, key: str | None) -> list[Span]:
    spans: list[Span] = []
    for s, e, digits in _clusters(text):
        if digits < 9:
            continue
        for m in _SSN.finditer(text, max(0, s - 2), min(len(text), e + 2)):
            area, group, serial = m.groups()
            if area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000":
                spans.append(Span("ssn", m.start(), m.end()))
    return _disjoint(spans)


# ---- IBAN --------------------------------------------------------------------------------------

_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24,
    "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21,
    "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LI": 21,
    "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30,
    "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}
_IBAN_START = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?= ?[A-Z0-9])", re.ASCII)


def _iban_at(text: str, start: int) -> int:
    """End of a valid IBAN that starts at `start` (compact, or in groups of 4 split by single
    spaces), or -1."""
    length = _IBAN_LENGTHS.get(text[start:start + 2])
    if length is None:
        return -1
    chars: list[str] = []
    i, n = start, len(text)
    while len(chars) < length and i < n:
        c = text[i]
        if c == " " and chars and len(chars) % 4 == 0 and i + 1 < n and text[i + 1] != " ":
            i += 1
            continue
        if not ("0" <= c <= "9" or "A" <= c <= "Z"):
            return -1
        chars.append(c)
        i += 1
    if len(chars) < length or (i < n and (text[i].isalnum() or (text[i] == " " and i + 1 < n
                                                                    and text[i + 1].isdigit()))):
        return -1
    iban = "".join(chars)
    number = "".join(str(int(c, 36)) for c in iban[4:] + iban[:4])
    return i if int(number) % 97 == 1 else -1


def _iban(text: str, key: str | None) -> list[Span]:
    spans: list[Span] = []
    last = -1
    for s, e, digits in _clusters(text):
        if digits < 7:
            continue
        for m in _IBAN_START.finditer(text, max(0, s - 14, last), e):
            end = _iban_at(text, m.start())
            if end > 0:
                spans.append(Span("iban", m.start(), end))
                last = end
    return _disjoint(spans)


# ---- IP address --------------------------------------------------------------------------------

_V4_SHAPE = re.compile(rb"0\.0{1,3}\.0{1,3}\.0")     # from the last digit of the first octet
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_V4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}(?![\w\-])(?!\.\w)", re.ASCII)   # not 10.1.2.3.example.com
# Words and operators after which a dotted quad is a version, not an address.
_VERSION_BEFORE = re.compile(r"(?:\b(?:version|release|build|ver|v|rev|section)\.?|==|>=|<=|~=|!=|\^|~|§)\s*\Z",
                             re.IGNORECASE)
# Addresses that identify nobody: loopback, "this network" (0.x, 0.0.0.0 among them), netmasks
# and broadcast (255.x).
_V4_NOBODY = ("127.", "0.", "255.")
_V6_SHAPE = re.compile(rb":[0Aa]{0,4}:")
_HEX_COLON = frozenset("0123456789abcdefABCDEF:.")


def _ipv4(text: str, shape: bytes, clusters: Clusters, spans: list[Span]) -> None:
    for s, e, _ in clusters:
        if shape.find(b".", s, e) >= 0:
            for m in _V4_SHAPE.finditer(shape, s, e):
                _ipv4_at(text, shape, m.start(), spans)


def _ipv4_at(text: str, shape: bytes, first: int, spans: list[Span]) -> None:
    """An IPv4 address whose first octet ends at or after `first` (a digit before a dot)."""
    start = first
    while start > 0 and shape[start - 1] == 48 and first - start < 2:    # 48: b"0"
        start -= 1
    if start and (text[start - 1].isalnum() or text[start - 1] in "._-"):
        return
    if start and text[start - 1] == "/" and start > 1 and text[start - 2].isalnum():
        return                                                 # Chrome/120.0.0.0
    ip = _V4.match(text, start)
    if ip and not ip.group().startswith(_V4_NOBODY) and not _VERSION_BEFORE.search(text, max(0, start - 12), start):
        spans.append(Span("ip_address", start, ip.end()))


def _ipv6(text: str, shape: bytes, spans: list[Span]) -> None:
    done = 0
    for m in _V6_SHAPE.finditer(shape):
        if m.start() < done:
            continue
        start, end, n = m.start(), m.end(), len(text)
        while start > 0 and text[start - 1] in _HEX_COLON:
            start -= 1
        while end < n and text[end] in _HEX_COLON:
            end += 1
        done = end
        while end > start and text[end - 1] in ".:" and not text.endswith("::", 0, end):
            end -= 1
        while start < end and text[start] == ".":
            start += 1
        if (start and (text[start - 1].isalnum() or text[start - 1] in "_")) or \
                (end < n and (text[end].isalnum() or text[end] == "_")):
            continue
        candidate = text[start:end]
        groups = [g for g in candidate.split(":") if g]
        if len(groups) < 2 or not any(c.isdigit() for c in candidate):
            continue
        try:
            address = ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        v4 = address.ipv4_mapped
        if not (address.is_loopback or address.is_unspecified or (v4 is not None and v4.is_loopback)):
            spans.append(Span("ip_address", start, end))


def _ip_address(text: str, key: str | None) -> list[Span]:
    shape, clusters = _numbers(text)
    spans: list[Span] = []
    _ipv4(text, shape, clusters, spans)
    if b":" in shape:
        _ipv6(text, shape, spans)
    return _disjoint(spans)


DETECTORS: tuple[Detector, ...] = (
    Detector("email", "pii", _email, "email addresses (name@domain.tld)"),
    Detector("phone", "pii", _phone, "phone numbers: +<country> international, US, UK, DE and FR national forms"),
    Detector("card", "pii", _card, "payment card numbers (13-19 digits, Luhn and issuer prefix checked)"),
    Detector("ssn", "pii", _ssn, "US social security numbers (ddd-dd-dddd, invalid areas excluded)"),
    Detector("iban", "pii", _iban, "IBANs (country length and mod-97 checked, compact or grouped)"),
    Detector("ip_address", "pii", _ip_address, "IPv4 and IPv6 addresses (not versions)"),
)
