"""What every request to `wire-gateway serve` is checked for before its body is decoded.

- Host, and the authority of an absolute-form target (`POST http://host/mcp HTTP/1.1`),
  against the loopback names, the bound address and `http.allowed_hosts`; Origin
  against loopback origins and `http.allowed_origins` (403: DNS-rebinding protection).
  A value that does not parse as its RFC defines it (wire/authority.py) is refused
  with the parser's reason: a lenient reading is how `evil.com@127.0.0.1` passed as
  127.0.0.1.
- An absolute-form target is not refused (RFC 9112 §3.2.2: a server MUST accept it),
  but its authority is what the request is for, so it must pass the Host check and
  name the same host and port as the Host header: a proxy or virtual host in front
  that routes by Host must not see another host than the gateway.
- An MCP POST must accept application/json and text/event-stream, a GET
  text/event-stream (406); a POST's body must be declared application/json, in UTF-8
  (415). See wire/media.py.

The same few header values arrive on every request, so verdicts are remembered per
(Host, Origin) and per (Accept, Content-Type) pair, 1,024 of each at most: the usual
request pays one pass over its headers and a dict lookup per check, as before these
checks parsed anything (measured: about 1 us per POST for both, old and new).
"""
from __future__ import annotations

import ipaddress

from wire_gateway.config import ConfigError, HttpSettings
from wire_gateway.config.loader import allow_list_problems
from wire_gateway.transport.http_server import Request
from wire_gateway.wire.authority import (
    Authority,
    AuthorityError,
    parse_absolute_target,
    parse_host,
    parse_origins,
    show,
)
from wire_gateway.wire.media import (
    JSON_TYPE,
    SSE_TYPE,
    accept_problem,
    json_content_type_problem,
)

Refusal = tuple[int, str]   # (HTTP status, what a person should read)

LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})
POST_ACCEPT = (JSON_TYPE, SSE_TYPE)
GET_ACCEPT = (SSE_TYPE,)
MAX_VERDICTS = 1024
_UNSEEN: object = object()


def normalise_bound(host: str) -> str | None:
    """The bound address as a parsed Host names it, or None for a wildcard bind (which names nothing)."""
    host = host.strip("[]").lower()
    if host in WILDCARD_BINDS:
        return None
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host


class EdgeCheck:
    """The allow-lists, parsed once, and the verdicts given so far."""

    def __init__(self, settings: HttpSettings) -> None:
        problems = allow_list_problems({"allowed_hosts": settings.allowed_hosts,
                                        "allowed_origins": settings.allowed_origins})
        if problems:
            raise ConfigError(problems)
        self.any_host = "*" in settings.allowed_hosts
        self.hosts = {(a.host, a.port) for a in (parse_host(h) for h in settings.allowed_hosts if h != "*")}
        self.any_origin = "*" in settings.allowed_origins
        self.null_origin = "null" in settings.allowed_origins
        self.origins = {o.key() for entry in settings.allowed_origins if entry not in ("*", "null")
                        for o in parse_origins(entry) or ()}
        self.bound = normalise_bound(settings.host)
        # verdicts by (Host, Origin) and by (Accept, Content-Type): apart, so that no value
        # sent in one header can stand for another's
        self._verdicts: dict[tuple[str | None, str | None], Refusal | None] = {}
        self._media_verdicts: dict[tuple[str | None, str | None], Refusal | None] = {}

    # ---- Host, target, Origin (every request) ------------------------------------------------

    def refusal(self, request: Request) -> Refusal | None:
        host = origin = None
        origins = 0
        for name, value in request.headers:   # one pass: this runs on every request
            if name == "host":
                host = value
            elif name == "origin":
                origin = value
                origins += 1
        if origins > 1:
            return 403, "the request has more than one Origin header (DNS-rebinding protection); send one"
        verdict = self._verdicts.get((host, origin), _UNSEEN)
        if verdict is _UNSEEN:
            verdict = self._judge_host_origin(host, origin)
            if len(self._verdicts) < MAX_VERDICTS:
                self._verdicts[(host, origin)] = verdict
        if verdict is not None:
            return verdict   # type: ignore[return-value]
        target = request.target
        if target[:1] != "/" and "://" in target:   # absolute-form: rare, so never remembered
            return self._judge_target(target, host)   # type: ignore[arg-type]
        return None

    def _judge_host_origin(self, host: str | None, origin: str | None) -> Refusal | None:
        if host is None:
            return 403, "the request has no Host header (DNS-rebinding protection needs one); send Host: host[:port]"
        return self._judge_host(host) or (None if origin is None else self._judge_origin(origin))

    def _judge_host(self, value: str) -> Refusal | None:
        try:
            authority = parse_host(value)
        except AuthorityError as exc:
            return 403, f"Host {show(value)} is not a valid host[:port]: {exc} (DNS-rebinding protection)"
        return self._authority_refusal(authority, f"Host {show(value)}")

    def _authority_refusal(self, authority: Authority, what: str) -> Refusal | None:
        host, port = authority.host, authority.port
        if (self.any_host or host in LOOPBACK or host == self.bound or (host, None) in self.hosts
                or (host, port) in self.hosts
                or (port is None and ((host, 80) in self.hosts or (host, 443) in self.hosts))):
            return None
        return 403, (f"{what} is not allowed (DNS-rebinding protection); add {str(authority)!r} to "
                     "http.allowed_hosts if this gateway is reached under that name")

    def _judge_target(self, target: str, host: str) -> Refusal | None:
        try:
            scheme, authority = parse_absolute_target(target)
        except AuthorityError as exc:
            return 403, f"request target {show(target)} does not parse: {exc} (DNS-rebinding protection)"
        refused = self._authority_refusal(authority, f"the request target's host {show(str(authority))}")
        if refused is not None:
            return refused
        said = parse_host(host)   # it passed _judge_host, so it parses
        if (authority.host, authority.port_or(scheme)) != (said.host, said.port_or(scheme)):
            return 403, (f"the request target {show(target)} is for {show(str(authority))} but Host says "
                         f"{show(host)}; they must name the same host and port (send the path alone, "
                         f"as in POST /mcp HTTP/1.1)")
        return None

    def _judge_origin(self, value: str) -> Refusal | None:
        try:
            origins = parse_origins(value)
        except AuthorityError as exc:
            return 403, (f"Origin {show(value)} is not a valid origin (scheme://host[:port], or null): {exc} "
                         "(DNS-rebinding protection)")
        if origins is None:
            if self.any_origin or self.null_origin:
                return None
            return 403, ("Origin 'null' (a sandboxed frame or a file: page) is not allowed (DNS-rebinding "
                         "protection); add \"null\" to http.allowed_origins to permit it")
        for origin in origins:
            if not (self.any_origin or origin.authority.host in LOOPBACK or origin.key() in self.origins):
                shown = f"{origin.scheme}://{origin.authority}"
                return 403, (f"Origin {show(shown)} is not allowed (DNS-rebinding protection); add it to "
                             "http.allowed_origins to permit it")
        return None

    # ---- Accept and Content-Type (MCP endpoints) ------------------------------------------------

    def post_refusal(self, request: Request) -> Refusal | None:
        """406 for an Accept without JSON and SSE, 415 for a body not declared UTF-8 JSON."""
        accept = ctype = None
        for name, value in request.headers:
            if name == "accept":
                accept = value if accept is None else f"{accept}, {value}"
            elif name == "content-type":   # two are joined, and a list is not a media type: refused
                ctype = value if ctype is None else f"{ctype}, {value}"
        key = (accept, ctype)
        verdict = self._media_verdicts.get(key, _UNSEEN)
        if verdict is _UNSEEN:
            problem = accept_problem(accept, POST_ACCEPT)
            if problem is not None:
                verdict = 406, problem
            else:
                problem = json_content_type_problem(ctype)
                verdict = None if problem is None else (415, problem)
            if len(self._media_verdicts) < MAX_VERDICTS:
                self._media_verdicts[key] = verdict
        return verdict   # type: ignore[return-value]

    def get_refusal(self, request: Request) -> Refusal | None:
        """406 for a GET (an SSE stream) whose Accept does not allow text/event-stream."""
        accept = request.header_all("accept")
        problem = accept_problem(", ".join(accept) if accept else None, GET_ACCEPT)
        return None if problem is None else (406, problem)
