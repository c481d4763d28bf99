"""Credentials by their shape: cloud and forge tokens, API keys, JWTs, private keys, and any
random-looking value that sits next to a name such as `api_key` or `password`.

Every detector runs on every string of every call and result, so none of them steps a regex
through the whole text (`prefilter` says why). Every secret here is, or holds, a run of 20 or
more token characters (letters, digits, `_-+/.` and a few symbols), which English words, numbers
and most identifiers are not: one `bytes.translate` and a `bytes.find` of 20 such bytes find the
runs of a string, once for all eight detectors. Each detector then reads only the runs that hold
its literal (`AKIA`, `gh`, `glpat-`, `xox`, `sk-`, `eyJ`, a `-----BEGIN ` just before), and the
two that judge a value by its name (`entropy_secret`, and `aws_key` for secret access keys) read
the name just before a run (`name = value`, `"name": "value"`, `Authorization: Bearer value`)
or take the JSON key the string sits under.

A shape alone is not enough for precision: the documentation placeholders (`AKIA...EXAMPLE`,
`ghp_xxxx...`, `sk-your-key-here`, `<your-token>`, `${API_KEY}`) are published non-secrets and
must not be masked as if they were, and a value next to a secret name must look random (two
character classes, 10 distinct characters, 3 bits of entropy a character) to count: `changeme`,
UUIDs, paths and words do not. What is not detected, on purpose: passwords inside URLs
(`scheme://user:pass@host`), secrets of vendors without a prefix of their own unless a secret
name sits next to them (a Stripe `sk_live_` key in prose), values shorter than 20 characters
(before base64 padding) or holding spaces, quotes or `=:,;<>()[]{}`, a bare `key` name (cache
and object keys), and public keys and certificates (published on purpose).
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import re
import string

from wire_gateway.guardrails.detectors.base import Detector, Span
from wire_gateway.guardrails.detectors.prefilter import LastText, one_byte_each

# ---- what makes a value look like a secret ------------------------------------------------------

_PLACEHOLDER_WORDS = ("xxxx", "****", "....", "example", "your", "changeme", "placeholder", "redacted",
                      "dummy", "sample", "<", ">", "{", "}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _placeholder(value: str) -> bool:
    lower = value.lower()
    return any(word in lower for word in _PLACEHOLDER_WORDS)


def _entropy(value: str, chars: set[str]) -> float:
    """Shannon entropy of the value's characters, in bits per character."""
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in map(value.count, chars))


_UPPER, _LOWER, _DIGITS = (frozenset(string.ascii_uppercase), frozenset(string.ascii_lowercase),
                           frozenset(string.digits))


def _classes(chars: set[str]) -> int:
    """How many of upper case, lower case and digits (ASCII) the characters hold."""
    return (not chars.isdisjoint(_UPPER)) + (not chars.isdisjoint(_LOWER)) + (not chars.isdisjoint(_DIGITS))


def _random(value: str, distinct: int = 10) -> bool:
    """A token body that looks generated: not a placeholder, enough distinct characters."""
    return len(set(value)) >= distinct and not _placeholder(value)


def _secret_value(value: str) -> bool:
    """A value that, next to a secret name, is a secret: long, random-looking, not a reference
    to one (`${VAR}`, `%VAR%`, a path or URL), not a UUID."""
    if not 20 <= len(value) <= 1024 or value[0] in "$%~." or "://" in value:
        return False
    if value[0] == "/" and value.count("/") > 1:
        return False                           # a path
    chars = set(value)
    if len(chars) < 10 or _classes(chars) < 2 or _placeholder(value) or _UUID.fullmatch(value):
        return False
    if chars.isdisjoint(_DIGITS):              # io.example/subscriptionId, AuthenticationString: words
        words = _WORD.findall(value)
        if sum(map(len, words)) >= 4 * len(words):
            return False
    return _entropy(value, chars) >= 3.0


# ---- what makes a name a secret's name ---------------------------------------------------------

_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
_SECRET_WORDS = frozenset(("secret", "token", "password", "passwd", "pwd", "pass", "passphrase",
                           "credential", "credentials", "auth", "authorization", "apikey"))
_KEY_QUALIFIERS = ("api", "secret", "private", "access", "auth", "encryption", "signing", "master",
                   "client", "app", "service", "account", "admin", "deploy", "webhook", "consumer",
                   "subscription", "session")
# Words that make a name with a secret word hold no secret: pagination and progress tokens (opaque
# ids an API hands out on purpose), counts and limits, published keys. (`password_hash`, `key_id`,
# `token_type` fail anyway: a name's last word must be a secret word.)
_NOT_SECRET_WORDS = frozenset(("public", "page", "cursor", "progress", "continuation", "sync", "next",
                               "max", "min", "count", "limit", "usage", "tokens"))


def _secret_name(name: str) -> bool:
    """`api_key`, `X-Api-Key`, `GITHUB_TOKEN`, `clientSecret`, `db_password`: yes; `max_tokens`,
    `nextPageToken`, `tokenizer`, `author`, `key`, `public_key`, `password_hash`: no."""
    words: list[str] = [w.lower() for w in _WORD.findall(name.rsplit(".", 1)[-1])]
    if not words or any(w in _NOT_SECRET_WORDS for w in words):
        return False
    last = words[-1]
    if last in _SECRET_WORDS or last.endswith(("token", "secret", "password", "passwd")):
        return True
    if last == "key":
        return len(words) > 1 and words[-2] in _KEY_QUALIFIERS
    return last.endswith("key") and last[:-3].endswith(_KEY_QUALIFIERS)


# ---- long runs of token characters, shared by every detector here -----------------------------

# Every secret found here is (or holds) a run of 20 or more of these characters; English words,
# numbers and most identifiers are shorter. '=' and ':' are not among them: they join a name to
# its value (base64 padding is added back to a value's span); '&' is, for passwords, and a value
# in a URL query ends at the next one (`_query_value`). One `bytes.translate` maps them to
# 'T' and anything else to ' ', and `bytes.find` of 20 'T's (a byte search, no regex) finds runs.
_TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "_-+/.!#$%&*@~^")
_TOKEN_TABLE = bytes(84 if chr(i) in _TOKEN_CHARS else 32 for i in range(256))
_MIN_RUN = 20
_RUN = b"T" * _MIN_RUN


def _find_runs(text: str) -> list[tuple[int, int]]:
    """(start, end) of each run of 20+ token characters in text."""
    runs: list[tuple[int, int]] = []
    if len(text) >= _MIN_RUN:
        tokens = one_byte_each(text).translate(_TOKEN_TABLE)
        start = tokens.find(_RUN)
        while start >= 0:
            end = tokens.find(b" ", start + _MIN_RUN)
            end = len(tokens) if end < 0 else end
            runs.append((start, end))
            start = tokens.find(_RUN, end)
    return runs


_runs = LastText(_find_runs)


def _in_runs(pattern: re.Pattern[str], literal: str, text: str, runs: list[tuple[int, int]],
             before: int = 0) -> list[re.Match[str]]:
    """pattern's matches inside the runs that hold `literal` (each run widened by `before`
    characters on the left): a `str.find` is cheaper than starting the regex on every run."""
    return [m for s, e in runs if text.find(literal, s, e) >= 0
            for m in pattern.finditer(text, max(0, s - before), e)]


_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "_.-")
_SCHEMES = ("bearer", "basic", "token")


def _name_before(text: str, start: int) -> str:
    """The name a value starting at `start` is assigned to (`name = value`, `"name": "value"`,
    `name: value`, `name => value`, `name := value`, `Authorization: Bearer value`), or ''."""
    i = start
    if i and text[i - 1] in "\"'`":
        i -= 1
    while i and text[i - 1] in " \t":
        i -= 1
    if i < start:                              # an auth scheme between the name and the value
        j = i
        while j and i - j <= 6 and text[j - 1].isalpha():
            j -= 1
        if text[j:i].lower() in _SCHEMES and j and text[j - 1] in " \t":
            i = j
            while i and text[i - 1] in " \t":
                i -= 1
    if text.endswith((":=", "=>"), 0, i):
        i -= 2
    elif i and text[i - 1] in "=:":
        i -= 1
    else:
        return ""
    while i and text[i - 1] in " \t":
        i -= 1
    if i and text[i - 1] in "\"'":
        i -= 1
    j = i
    while j and i - j < 80 and text[j - 1] in _NAME_CHARS:
        j -= 1
    return text[j:i]


def _run_value(text: str, start: int, end: int) -> tuple[int, int]:
    """A run as a value: with its base64 padding, without the punctuation that ends a sentence."""
    if text.startswith("=", end):
        end = end + 2 if text.startswith("==", end) else end + 1
    else:
        while end > start and text[end - 1] in ".,!":
            end -= 1
    return start, end


def _query_value(text: str, start: int, end: int) -> int:
    """Where a value that starts at `start` ends if it is a URL query parameter's (`?api_key=v&q=1`):
    at the next '&'. Otherwise `end`."""
    if text.rfind("=", 0, start) != start - 1:
        return end
    name_start = start - 1
    while name_start and text[name_start - 1] in _NAME_CHARS:
        name_start -= 1
    amp = text.find("&", start, end)
    return amp if amp > 0 and name_start and text[name_start - 1] in "?&" else end


def _whole_value(text: str) -> tuple[int, int] | None:
    """The one token a keyed value holds (after an auth scheme), as (start, end), or None."""
    start, end = 0, len(text)
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    space = text.find(" ", start, end)
    if space > 0 and text[start:space].lower() in _SCHEMES:
        start = space + 1
    if any(c.isspace() for c in text[start:end]):
        return None
    return start, end


# ---- AWS ----------------------------------------------------------------------------------------

_AWS_ID = re.compile(r"(?<![A-Za-z0-9])(?:A3T[A-Z0-9]|AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ASCA|ABIA|ACCA|APKA)"
                     r"[A-Z2-7]{16}(?![A-Za-z0-9])")
_AWS_SECRET = re.compile(r"[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")


def _aws_secret_name(name: str) -> bool:
    """aws_secret_access_key, AWS_SECRET_KEY, SecretAccessKey, secret_access_key."""
    words = [w.lower() for w in _WORD.findall(name.rsplit(".", 1)[-1])]
    return "secret" in words and words[-1] == "key" and ("aws" in words or "access" in words)


def _aws_secret_ok(value: str) -> bool:
    return _classes(set(value)) == 3 and _random(value, 15)


def _aws_key(text: str, key: str | None) -> list[Span]:
    spans: list[Span] = []
    for s, e in _runs(text):
        if text.find("A", s, e - 19) >= 0:
            spans += [Span("aws_key", *m.span()) for m in _AWS_ID.finditer(text, s, e)
                      if not m.group().endswith("EXAMPLE")]
        value = _run_value(text, s, e)
        if (value[1] - value[0] == 40 and _aws_secret_name(_name_before(text, s))
                and _AWS_SECRET.fullmatch(text, *value) and _aws_secret_ok(text[value[0]:value[1]])):
            spans.append(Span("aws_key", *value))
    if key is not None and _aws_secret_name(key):
        whole = _whole_value(text)
        if whole and _AWS_SECRET.fullmatch(text, *whole) and _aws_secret_ok(text[whole[0]:whole[1]]) \
                and not any(span.start == whole[0] for span in spans):
            spans.append(Span("aws_key", *whole))
    return spans


# ---- forges, chat, model vendors ---------------------------------------------------------------

_GITHUB = re.compile(r"(?<![A-Za-z0-9_])(?:gh[pousr]_([A-Za-z0-9]{36,251})|github_pat_([A-Za-z0-9_]{60,251}))"
                     r"(?![A-Za-z0-9_])")
_GITLAB = re.compile(r"(?<![A-Za-z0-9_\-])gl(?:pat|dt|rt|ptt|oas|cbt|ft|soat)-([A-Za-z0-9_\-]{20,64})"
                     r"(?![A-Za-z0-9_\-])")
_SLACK = re.compile(r"(?<![A-Za-z0-9_\-])xox(?:e\.xox[bp]|[abprse])-([A-Za-z0-9\-]{20,250})(?![A-Za-z0-9_\-])")
_SLACK_HOOK = re.compile(r"https://hooks\.slack\.com/(?:services|workflows|triggers)/"
                         r"T[A-Z0-9]{6,12}/[A-Z0-9]{6,14}/([A-Za-z0-9]{16,40})(?![A-Za-z0-9])")
_SK = re.compile(r"(?<![A-Za-z0-9_\-])sk-(?:(?:proj|svcacct|admin|ant-(?:api|admin|sid)\d\d)-)?"
                 r"([A-Za-z0-9_\-]{32,250})(?![A-Za-z0-9_\-])")


def _github_token(text: str, key: str | None) -> list[Span]:
    if not (runs := _runs(text)):
        return []
    return [Span("github_token", *m.span()) for m in _in_runs(_GITHUB, "_", text, runs)    # ghp_, github_pat_
            if _random(m.group(1) or m.group(2), 12)]


def _gitlab_token(text: str, key: str | None) -> list[Span]:
    if not (runs := _runs(text)):
        return []
    return [Span("gitlab_token", *m.span()) for m in _in_runs(_GITLAB, "gl", text, runs) if _random(m.group(1))]


def _slack_token(text: str, key: str | None) -> list[Span]:
    if not (runs := _runs(text)):
        return []
    spans: list[Span] = []
    for m in _in_runs(_SLACK, "xox", text, runs):
        body = m.group(1)
        if sum(c.isdigit() for c in body) >= 8 and _random(body):
            spans.append(Span("slack_token", *m.span()))
    # the URL's run starts after "https:" (':' is not a token character)
    spans += [Span("slack_token", *m.span()) for m in _in_runs(_SLACK_HOOK, "hooks.slack.com/", text, runs, 6)
              if _random(m.group(1))]
    return spans


def _openai_key(text: str, key: str | None) -> list[Span]:
    if not (runs := _runs(text)):
        return []
    return [Span("openai_key", *m.span()) for m in _in_runs(_SK, "sk-", text, runs)
            if _classes(set(m.group(1))) == 3 and _random(m.group(1), 12)]


# ---- JWT, private keys ----------------------------------------------------------------------------

_JWT = re.compile(r"(?<![A-Za-z0-9_\-])(eyJ[A-Za-z0-9_\-]{8,})\.([A-Za-z0-9_\-]{2,})\.([A-Za-z0-9_\-]*)")


def _jwt_header(segment: str) -> dict[str, object] | None:
    """The decoded header, if it is a JSON object. A real header is a few hundred bytes; a longer
    segment is not decoded (hostile text could nest JSON deep enough to exhaust the stack)."""
    if len(segment) > 2048:
        return None
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        return None
    return header if isinstance(header, dict) else None


def _jwt(text: str, key: str | None) -> list[Span]:
    if not (runs := _runs(text)):
        return []
    spans: list[Span] = []
    for m in _in_runs(_JWT, "eyJ", text, runs):
        header = _jwt_header(m.group(1))
        if header is None or not isinstance(header.get("alg"), str):
            continue
        if m.group(3) or header["alg"] == "none":
            spans.append(Span("jwt", *m.span()))
    return spans


_PEM_BEGIN = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----")
_PEM_BODY = re.compile(r"(?:\s|\\n|\\r|[A-Za-z0-9+/=]|(?<=\n)[A-Za-z-]+: [^\n]*)*")
_BASE64_CHAR = re.compile(r"[A-Za-z0-9+/]")


def _private_key(text: str, key: str | None) -> list[Span]:
    spans: list[Span] = []
    for s, _ in _runs(text):                   # a body line, or the run after a one-line header
        done = spans[-1].end if spans else 0
        if s < done:
            continue
        begin = text.rfind("-----BEGIN ", max(done, s - 300), s)
        m = _PEM_BEGIN.match(text, begin) if begin >= 0 else None
        if m is None:
            continue
        end_marker = f"-----END {m.group(1)}-----"
        stop = text.find(end_marker, m.end())
        if stop >= 0:
            body, end = text[m.end():stop], stop + len(end_marker)
        else:                                  # cut short: the key is as far as its base64 goes
            run = _PEM_BODY.match(text, m.end())
            end = run.end() if run else m.end()
            while end > m.end() and text[end - 1].isspace():
                end -= 1
            body = text[m.end():end]
        body = body.replace("\\n", "\n").replace("\\r", "\n")
        lines = [line for line in body.split("\n") if ": " not in line]
        if len(_BASE64_CHAR.findall("".join(lines))) >= 40 and not _placeholder(body):
            spans.append(Span("private_key", m.start(), end))
    return spans


# ---- a random value next to a secret's name ---------------------------------------------------------

def _entropy_secret(text: str, key: str | None) -> list[Span]:
    spans: list[Span] = []
    if key is not None and _secret_name(key):
        whole = _whole_value(text)
        if whole and _secret_value(text[whole[0]:whole[1]]):
            spans.append(Span("entropy_secret", *whole))
    for s, e in _runs(text):
        name = _name_before(text, s) if not spans or s >= spans[-1].end else ""
        if name and _secret_name(name):
            value = _run_value(text, s, _query_value(text, s, e))
            if not text.startswith("(", value[1]) and _secret_value(text[value[0]:value[1]]):   # not a call
                spans.append(Span("entropy_secret", *value))
    return spans


DETECTORS: tuple[Detector, ...] = (
    Detector("aws_key", "secrets", _aws_key, "AWS access key ids (AKIA...), and secret access keys next to their name"),
    Detector("github_token", "secrets", _github_token, "GitHub tokens (ghp_, gho_, ghu_, ghs_, ghr_, github_pat_)"),
    Detector("gitlab_token", "secrets", _gitlab_token, "GitLab tokens (glpat-, gldt-, glrt-, ...)"),
    Detector("slack_token", "secrets", _slack_token, "Slack tokens (xoxb-, xoxp-, ...) and webhook URLs"),
    Detector("openai_key", "secrets", _openai_key, "OpenAI and Anthropic API keys (sk-, sk-proj-, sk-ant-)"),
    Detector("jwt", "secrets", _jwt, "JSON Web Tokens (three base64url parts, a header with alg)"),
    Detector("private_key", "secrets", _private_key, "PEM private key blocks (RSA, EC, OpenSSH, PGP, PKCS#8)"),
    Detector("entropy_secret", "secrets", _entropy_secret,
             "a random-looking value of 20+ characters next to a secret's name (api_key, password, ...)"),
)
