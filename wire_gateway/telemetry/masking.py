"""Mask secrets in text the gateway itself writes: logs, the error answers it writes, /status.
(Dumps mask frames with `dump.mask`, which takes the same configured patterns and secret values.)

Two kinds of secret:
- by shape (`_RULES`): `key=value` and `"key": "value"` for secret keys and `Bearer`/`Basic`
  credentials (the rules of `secret_rules`, which the dump's maskers share), credentials in a
  URL's userinfo, and the configured `mask_patterns`;
- by value (`SECRETS`): the values of configured secrets, whatever surrounds them. The config's
  `env` values that came from `${VAR}` expansion and every `headers` value of a url server are
  registered when the config is loaded (`config.loader.register_secrets`); a server that prints
  its token on stderr, or an upstream that quotes it in an error page, needs no keyword before it.

One process-wide masker (`mask`) does both, and every output calls it: the log formatter, the
gateway's JSON-RPC error answers (`configure` installs it as `wire.errors`' text filter), the
control plane's /status, the HTTP upstream client's messages. None of those is a hot path; still,
text with no secret-looking word, no `@` and no registered value skips the regexes (one
`lower()` and a few substring tests).

We never write a full token: a bearer token keeps its first four characters so two different
tokens can still be told apart while debugging (unless it is a registered value: then none).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from wire_gateway.telemetry import secret_rules
from wire_gateway.wire import errors

MASK = "***"
MIN_SECRET_LENGTH = 6
"""Registered values shorter than this are ignored: masking `dev`, `1` or `true` everywhere would
mask half the log and protect nothing (such a value is guessable anyway)."""

_CREDENTIAL = "[" + secret_rules.CREDENTIAL_CHARS + "]"
_SCHEMES = "(" + "|".join(secret_rules.SCHEMES) + ")"
# A secret key name (secret_rules): one of the names, after any `word_` / `word-` prefix.
_KEY = r"(?:[\w-]*[_-])?" + secret_rules.KEY_PATTERN
_JSON_KEY = r'(?:[^"\\\n]*[_-])?' + secret_rules.KEY_PATTERN   # inside a JSON string: any character

_RULES: list[tuple[re.Pattern[str], str]] = [
    # "key": "value" in JSON text
    (re.compile(r'("' + _JSON_KEY + r'"\s*:\s*")((?:[^"\\]|\\.)*)(")', re.IGNORECASE), r"\1***\3"),
    # the password in a URL's userinfo (redis://:secret@host, https://user:secret@host)
    (re.compile(r"\b([a-z][a-z0-9+.-]*://[^\s/:@]*:)([^\s/@]+)(@)", re.IGNORECASE), r"\1***\3"),
    # Bearer / Basic credentials anywhere
    (re.compile(r"\b" + _SCHEMES + r"\s+(" + _CREDENTIAL + "{4})" + _CREDENTIAL + "*", re.IGNORECASE), r"\1 \2***"),
    # the gateway's own API keys, anywhere: the public `wg_<id>` stays, the secret goes
    (re.compile(r"\b(" + secret_rules.GATEWAY_KEY_PREFIX + secret_rules.GATEWAY_KEY_ID + ")_"
                + secret_rules.GATEWAY_KEY_SECRET), r"\1_***"),
    # key=value or key: value in plain text (headers, env dumps, argv)
    (re.compile(r"\b(" + _KEY + r")(\s*[=:]\s*)(?!" + "|".join(s + r"\b" for s in secret_rules.SCHEMES)
                + r"|\*\*\*)([^\s,;\"'&]+)", re.IGNORECASE), r"\1\2***"),
]
# Lower-cased ASCII text holding none of these cannot match a rule: every secret key contains one of
# the key words, a credential follows a scheme word, a URL's userinfo needs "@".
# (Non-ASCII text always takes the rules: IGNORECASE folds some non-ASCII letters to ASCII ones.)
_TRIGGERS = (*secret_rules.KEY_WORDS, *secret_rules.SCHEMES, "@", secret_rules.GATEWAY_KEY_PREFIX)


def _may_match(low: str) -> bool:
    for word in _TRIGGERS:     # a loop, not any(<generator>): half the cost on a log line
        if word in low:
            return True
    return False


class SecretValues:
    """The values of configured secrets, masked wherever they appear (longest first, so a secret
    that contains another is masked whole). Values shorter than MIN_SECRET_LENGTH are ignored."""

    def __init__(self) -> None:
        self._values: tuple[str, ...] = ()

    def add(self, value: str) -> None:
        value = value.strip()
        if len(value) >= MIN_SECRET_LENGTH and value not in self._values:
            self._values = tuple(sorted((*self._values, value), key=len, reverse=True))

    def add_credential(self, value: str) -> None:
        """A header value: the whole value and, for `Scheme credentials` values (Authorization:
        Bearer ...), the credentials alone (a peer may quote just those)."""
        self.add(value)
        credentials = value.strip().partition(" ")[2]
        if credentials:
            self.add(credentials)

    def found_in(self, text: str) -> bool:
        for value in self._values:
            if value in text:
                return True
        return False

    def mask(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        return text

    def clear(self) -> None:
        self._values = ()

    def __iter__(self) -> Any:
        return iter(self._values)

    def __bool__(self) -> bool:
        return bool(self._values)


SECRETS = SecretValues()
"""The process-wide registry: filled when the config loads, read by every output."""


class Masker:
    def __init__(self, extra_patterns: Iterable[str] = (), secrets: SecretValues | None = SECRETS) -> None:
        self.rules = list(_RULES)
        self.patterns = [re.compile(p) for p in extra_patterns]
        self.secrets = secrets

    def set_patterns(self, patterns: Iterable[str]) -> None:
        self.patterns = [re.compile(p) for p in patterns]

    def __call__(self, text: str) -> str:
        if self.secrets:
            text = self.secrets.mask(text)
        if not text.isascii() or _may_match(text.lower()):
            for pattern, repl in self.rules:
                text = pattern.sub(repl, text)
        for pattern in self.patterns:
            text = pattern.sub(MASK, text)
        return text

    def suspects(self, text: str) -> bool:
        """Whether `text` might hold something to mask: cheap, and never False when `self(text)`
        would change it."""
        if self.patterns or (self.secrets and self.secrets.found_in(text)):
            return True
        return not text.isascii() or _may_match(text.lower())

    def error(self, message: str, data: dict[str, Any]) -> tuple[str, Any]:
        """An error answer's message and data, masked (`wire.errors`' filter). One cheap test over
        all their text first: almost every error holds nothing to mask, and walking it costs more."""
        text = "\n".join(_strings(data, [message]))
        if not self.suspects(text):
            return message, data
        return self(message), self.data(data)

    def data(self, obj: Any) -> Any:
        """A JSON-able value with every string in it (keys too) masked: for structured output,
        where masking the serialised text could cut through an escape."""
        if isinstance(obj, str):
            return self(obj)
        if isinstance(obj, dict):
            return {self(k) if isinstance(k, str) else k: self.data(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self.data(v) for v in obj]
        return obj


def _strings(obj: Any, out: list[str]) -> list[str]:
    """Every string in a JSON-able value (keys too), appended to `out`."""
    if isinstance(obj, str):
        out.append(obj)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(key, str):
                out.append(key)
            if isinstance(value, str):
                out.append(value)
            elif isinstance(value, (dict, list, tuple)):
                _strings(value, out)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _strings(value, out)
    return out


mask = Masker()
"""The process-wide masker: the registry's values, the rules, and (after `configure`) the
configured `logging.mask_patterns`."""


def configure(patterns: Iterable[str] = ()) -> None:
    """Set the configured patterns and make every error answer the gateway writes go through `mask`
    (wire.errors cannot import this layer; it takes the filter instead)."""
    mask.set_patterns(patterns)
    errors.set_text_filter(mask.error)
