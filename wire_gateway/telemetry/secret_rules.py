"""What counts as a secret by its shape: the one table the log masker (`telemetry.masking`), the
dump masker (`dump.mask`) and the dump's C encoder (`dump/_records.c`, handed the table by
`dump.mask` at import) all read. Change a rule here and all three follow; tests/test_secret_rules.py
holds them to the same verdicts on a corpus of keys and values.

Data only, and nothing imported: telemetry sits below dump (docs/design.md), and the C encoder
takes these as plain strings. What each consumer builds from them (regexes, substring tests,
lookup tables) is its own business; the few derived constants below are here so that the
consumers do not derive them three ways.

Secret keys. A JSON object key (or a `key=value` / `key: value` name in plain text) is secret when,
case-insensitively, it is one of KEY_NAMES or ends with one after a `_` or `-` (`github_token`,
`x-api-key`, `proxy-authorization`). Inside a name, each `_` may also be written `-` or left out
(`api_key`, `api-key`, `apikey`; `access_token`, `accessToken`). camelCase compounds such as
`progressToken` (an MCP field) or near misses such as `tokenizer` and `author` are not secrets.

Secret values by shape: a credential after one of SCHEMES (`Bearer xxx`, `Basic xxx`) anywhere in
a string, the credential being a run of CREDENTIAL_CHARS.
"""
from __future__ import annotations

KEY_NAMES = (
    "authorization", "cookie", "password", "passwd", "secret", "client_secret",
    "token", "access_token", "refresh_token", "id_token", "auth_token", "bearer_token", "session_token",
    "api_key",
)
"""Lower case; `_` stands for `_`, `-` or nothing (see the module docstring)."""

SEPARATORS = "_-"
"""What may join a prefix to a secret key name, and what `_` in a name may be written as."""

SCHEMES = ("bearer", "basic")
"""Credential schemes, lower case. They must share their first letter: the C encoder looks for
that one letter in its SIMD pass over a frame (a second letter would cost a second comparison on
every 16 bytes of every frame)."""

CREDENTIAL_CHARS = "A-Za-z0-9._~+/=-"
"""A credential's characters, as a regex character class body (RFC 6750 token68)."""

GATEWAY_KEY_PREFIX = "wg_"
"""The gateway's own API keys (auth/keys.py) start with this; the log masker masks a key's secret
part wherever one appears and keeps `wg_<id>`, the public name keys are listed and audited by."""

GATEWAY_KEY_ID = "[a-z2-7]{12}"
GATEWAY_KEY_SECRET = "[A-Za-z0-9_-]{43}"
"""A whole key is PREFIX + ID + `_` + SECRET (regex bodies; auth/keys.py makes and parses them)."""

CASE_FOLDS = ("\u212a", "\u017f", "\u0130", "\u0131")
"""Non-ASCII letters that case-insensitive matching (`re.IGNORECASE`) takes for an ASCII letter of
KEY_NAMES or SCHEMES: KELVIN SIGN (k), LONG S (s), I WITH DOT ABOVE and DOTLESS I (i). Byte and
ASCII lower-casing leave them as they are, so the substring pre-checks look for them by name
(tests/test_secret_rules.py checks this list against every code point)."""


def _spellings(name: str) -> list[str]:
    parts = name.split("_")
    found = [parts[0]]
    for part in parts[1:]:
        found = [done + sep + part for done in found for sep in ("", *SEPARATORS)]
    return found


KEY_SPELLINGS = tuple(spelling for name in KEY_NAMES for spelling in _spellings(name))
"""Every way KEY_NAMES may be written, lower case: a key is secret when it is one of these, or ends
with a separator and one of these (the C encoder's and the pre-checks' form of the rule)."""

KEY_PATTERN = ("(?:" + "|".join(name.replace("_", "[_-]?") for name in KEY_NAMES) + ")")
"""The names as a regex alternation, to be compiled with re.IGNORECASE (which also folds
CASE_FOLDS). A whole key: `(?:.*[_-])?` + KEY_PATTERN, fully matched."""

KEY_WORDS = tuple(dict.fromkeys(name.rsplit("_", 1)[-1] for name in KEY_NAMES))
"""The last word of each name: every secret key, in any spelling, contains one (`token`, `key`,
...). With SCHEMES, the words a text must hold (lower-cased) for a shape rule to apply."""
