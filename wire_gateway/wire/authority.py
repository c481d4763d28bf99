"""Who a request says it is for and where it comes from: Host, Origin, absolute-form targets.

DNS-rebinding protection compares these values with an allow-list, so they must be
read exactly as the RFCs define them, never by a lenient URL parser: `urlsplit`
reads `evil.com@127.0.0.1` as host 127.0.0.1 (the part before `@` is userinfo),
`127.0.0.1#evil.com` as 127.0.0.1 (the rest is a fragment) and `//localhost` as an
origin, so a check built on it lets through what a browser, a proxy or a virtual
host may read as another host. Here a value either parses in full or is an error
whose text says what is wrong with it.

- Host (RFC 9110 §7.2): `uri-host [ ":" port ]`, with uri-host the RFC 3986 host
  (IP-literal in brackets, IPv4 address or reg-name). No userinfo, path, query or
  fragment; the port is 1 to 5 digits, at most 65535 (an empty port is refused).
- Origin (RFC 6454 §7): `null`, or one or more `scheme "://" host [ ":" port ]`
  separated by single spaces.
- An absolute-form request target (RFC 9112 §3.2.2): `http(s)://authority[path][?query]`,
  whose authority takes the place of Host; no userinfo (RFC 9110 §4.2.4) and no fragment.

Host names compare case-insensitively, so they are lowercased; IPv6 addresses are
kept unbracketed in their compressed form (`[0:0::1]` is `::1`). Sans-IO: strings in,
values or AuthorityError out.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

__all__ = [
    "DEFAULT_PORTS",
    "Authority",
    "AuthorityError",
    "Origin",
    "parse_absolute_target",
    "parse_host",
    "parse_origins",
    "show",
]

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

# RFC 3986 reg-name: unreserved / pct-encoded / sub-delims (IPv4 addresses match it too).
_REG_NAME = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_PATH_QUERY = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*")   # path-abempty ["?" query]


class AuthorityError(ValueError):
    """A Host, Origin or request-target authority that does not parse; the text says why."""


@dataclass(slots=True, frozen=True)
class Authority:
    """A parsed `host [":" port]`: host lowercased (IPv6 unbracketed), port None when absent."""

    host: str
    port: int | None = None

    def port_or(self, scheme: str) -> int | None:
        """The port, or the scheme's default when none was given."""
        return self.port if self.port is not None else DEFAULT_PORTS.get(scheme)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


@dataclass(slots=True, frozen=True)
class Origin:
    """A parsed serialized origin: scheme and host lowercased, port None when absent."""

    scheme: str
    authority: Authority

    def key(self) -> tuple[str, str, int | None]:
        """What two origins must share to be the same origin (default ports made explicit)."""
        return self.scheme, self.authority.host, self.authority.port_or(self.scheme)


def show(text: str, limit: int = 100) -> str:
    """A client-sent value quoted for an error message: bounded, control characters escaped."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return "'" + "".join(c if " " <= c <= "~" else f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"
                         for c in text) + "'"


def parse_host(value: str) -> Authority:
    """A Host header value (RFC 9110 §7.2). Raises AuthorityError when it is not `host[:port]`."""
    if not value:
        raise AuthorityError("it is empty")
    if value[0] == "[":
        end = value.find("]")
        if end < 0:
            raise AuthorityError("an IPv6 address opened with '[' is not closed with ']'")
        host = _ip_literal(value[1:end])
        rest = value[end + 1:]
        if rest and rest[0] != ":":
            raise AuthorityError("only ':port' may follow a bracketed IPv6 address" if rest[0] not in "@/?#"
                                 else _bad_host_char(rest, 0))
    else:
        colon = value.find(":")
        name, rest = (value, "") if colon < 0 else (value[:colon], value[colon:])
        if "@" in value:
            raise AuthorityError(_bad_host_char("@", 0))
        if rest.count(":") > 1:
            raise AuthorityError("it has more than one ':' (an IPv6 address is written in brackets, "
                                 "as in [::1]:8080)")
        if rest and not name:
            raise AuthorityError("the host before ':' is empty")
        match = _REG_NAME.match(name)
        end = match.end() if match else 0
        if end < len(name):
            raise AuthorityError(_bad_host_char(name, end))
        host = name.lower()
    port = None
    if rest:
        digits = rest[1:]
        if not digits:
            raise AuthorityError("the port after ':' is empty")
        bad = next((i for i, c in enumerate(digits) if not "0" <= c <= "9"), None)
        if bad is not None:
            raise AuthorityError(_bad_host_char(digits, bad) if digits[bad] in "@/?#"
                                 else f"the port {show(digits)} is not a number")
        if len(digits) > 5 or int(digits) > 65535:
            raise AuthorityError(f"the port {show(digits)} is out of range (0-65535)")
        port = int(digits)
    return Authority(host, port)


def parse_origins(value: str) -> list[Origin] | None:
    """An Origin header value (RFC 6454 §7.1): None for `null`, else the origins it lists
    (browsers send one). Raises AuthorityError for anything else."""
    if value == "null":
        return None
    if not value:
        raise AuthorityError("it is empty")
    return [_origin(part) for part in value.split(" ")]


def _origin(text: str) -> Origin:
    scheme, sep, rest = text.partition("://")
    if not sep or not scheme:
        if not text:
            raise AuthorityError("origins in a list are separated by single spaces")
        if text.startswith(("//", "://")):
            raise AuthorityError("an origin starts with its scheme (as in http://localhost), not with //")
        raise AuthorityError("an origin is scheme://host[:port] (or null), and this has no scheme://")
    if not _SCHEME.fullmatch(scheme):
        raise AuthorityError(f"{show(scheme)} is not a URI scheme")
    try:
        authority = parse_host(rest)
    except AuthorityError as exc:
        raise AuthorityError(f"its host[:port] {show(rest)} does not parse: {exc}") from None
    return Origin(scheme.lower(), authority)


def parse_absolute_target(target: str) -> tuple[str, Authority]:
    """The scheme and authority of an absolute-form request target (RFC 9112 §3.2.2),
    e.g. `http://127.0.0.1:8080/mcp`. Raises AuthorityError when it is not an http(s)
    URI with a valid authority, an optional path and query, and no fragment."""
    scheme, sep, rest = target.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        raise AuthorityError("it is neither a path (/...) nor an absolute http:// or https:// URI")
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        raise AuthorityError(f"the scheme {show(scheme)} is not http or https")
    cut = len(rest)
    for stop in "/?#":
        at = rest.find(stop)
        if 0 <= at < cut:
            cut = at
    authority, tail = rest[:cut], rest[cut:]
    if "@" in authority:
        raise AuthorityError("it carries userinfo ('...@'), which an http URI must not (RFC 9110 §4.2.4)")
    if "#" in tail:
        raise AuthorityError("it carries a fragment ('#...'), which a request target never has")
    if not _PATH_QUERY.fullmatch(tail):
        raise AuthorityError("its path or query has characters a URI does not allow")
    try:
        return scheme, parse_host(authority)
    except AuthorityError as exc:
        raise AuthorityError(f"its authority {show(authority)} does not parse: {exc}") from None


def _ip_literal(text: str) -> str:
    if text[:1] in ("v", "V"):
        raise AuthorityError(f"[{text}] is an IPvFuture literal, which is not supported")
    if "%" in text:   # ipaddress takes a zone id (fe80::1%eth0); a Host never carries one
        raise AuthorityError(f"[{text}] carries a zone id, which a Host never has")
    try:
        return ipaddress.IPv6Address(text).compressed
    except ValueError:
        raise AuthorityError(f"[{text}] is not an IPv6 address") from None


def _bad_host_char(text: str, at: int) -> str:
    """Why `text` (a host or what follows one) cannot go on at position `at`."""
    c = text[at] if at < len(text) else ""
    if c == "@":
        return "it carries userinfo ('...@'), which a Host never has (RFC 9110 §7.2); send the bare host"
    if c in "/?#":
        return "it carries a path, query or fragment after the host; a Host is host[:port] only"
    if c == "[" or c == "]":
        return "a bracket belongs only around a whole IPv6 address, as in [::1]:8080"
    if c == "%":
        return "a '%' must start a percent-encoded octet (%XX)"
    if c.isspace() or ord(c or " ") < 0x20:
        return "it contains whitespace or control characters"
    return f"the character {show(c)} is not allowed in a host name"


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an IP literal, brackets allowed) is this machine's loopback:
    `localhost` or a loopback address. Any other name may resolve anywhere, so it is not."""
    import ipaddress

    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_url(url: str) -> bool:
    from urllib.parse import urlsplit

    return is_loopback(urlsplit(url).hostname or "")
