"""A small Streamable HTTP client for the gateway's remote upstreams (mechanics, no policy).

What it does: POST one JSON-RPC message (the bytes exactly as received, never
re-serialised) and hand back either the JSON body, a stream of SSE events, or
"accepted"; GET the legacy era's server stream (with `Last-Event-ID` to resume);
DELETE a legacy session. What to send, which headers an era needs, and what an
answer means are the caller's business (`upstream.http_upstream`).

Timeouts. httpx's own read timeout is off (`read=None`) everywhere, because a
quiet SSE stream must not time out; instead the wait for the response head (and
for a JSON body) is bounded with a trio deadline of `timeout` seconds. Connecting
is bounded by httpx (`connect=timeout`).

Pools. Long-lived GET streams run on a client of their own, so they can never
occupy the connections that POSTs need (four open streams in a pool of four made
the fifth request fail in a measurement). POSTs share a pool without a
connection limit: the caller bounds how many requests are in flight.

A JSON answer is one message: a body that turns out to hold several (or a message that
is not an answer) is refused as soon as that shows, not when the body ends, which a
server streaming messages in it may never do.

Errors are mapped to the exceptions below; their text names the URL (without
userinfo or query string) and never a header: configured header values, and what the
process-wide masker masks (telemetry.masking), are masked in anything quoted from the peer.
"""
from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import trio

from wire_gateway.telemetry.masking import SecretValues, mask
from wire_gateway.wire import jsonfast, scan
from wire_gateway.wire.sse import Event, SSEDecoder, SSEError

ACCEPT_POST = "application/json, text/event-stream"
ACCEPT_SSE = "text/event-stream"
JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream"
ERROR_BODY_LIMIT = 64 * 1024      # bytes of a non-2xx body kept for the error message
EXCERPT_CHARS = 200
READ_CHUNK = 65536
ONE_MESSAGE_CHECK_BYTES = 65536   # how much of an unbounded JSON body is looked at for a second message
ONE_MESSAGE_CHECKS = 16           # and how many times at most
SEVERAL_MESSAGES = ("sent several JSON messages in one application/json body, which holds one: the answer "
                    "(messages before the answer belong in a text/event-stream response)")


# ---- errors ---------------------------------------------------------------------------


class HttpClientError(Exception):
    """Something kept a request from getting a usable answer. `str()` is a phrase about the
    upstream ("is unreachable (connection refused)"), ready to follow the server's name."""

    def __init__(self, phrase: str, url: str) -> None:
        super().__init__(phrase)
        self.phrase = phrase
        self.url = url


class Unreachable(HttpClientError):
    """No connection: refused, DNS failure, connect timeout, bad address."""


class TlsFailure(Unreachable):
    """The TLS handshake failed (certificate not trusted, wrong host name, protocol mismatch)."""


class Timeout(HttpClientError):
    """Connected, but no answer (or no complete JSON body) within the configured timeout."""


class StreamBroken(HttpClientError):
    """The connection dropped before the answer was complete."""


class BadBody(HttpClientError):
    """The peer answered with something that is not Streamable HTTP: wrong content type,
    a JSON body over the size limit, a broken SSE stream, or not even HTTP."""


class HttpStatus(HttpClientError):
    """A non-2xx status. `body` keeps up to 64 KiB of the body (for JSON-RPC error bodies)."""

    def __init__(self, phrase: str, url: str, status: int, reason: str, content_type: str,
                 body: bytes, headers: httpx.Headers) -> None:
        super().__init__(phrase, url)
        self.status = status
        self.reason = reason
        self.content_type = content_type
        self.body = body
        self.headers = headers


# ---- results ----------------------------------------------------------------------------


class SSEStream:
    """The events of one SSE response body, as they arrive. Empty-data events (the legacy
    era's priming events) are skipped but their ids count: `last_event_id` is what to send
    as `Last-Event-ID` to resume. `retry` is the reconnection delay the server asked for (ms)."""

    def __init__(self, response: httpx.Response, url: str, max_event_bytes: int,
                 redact: Any = None) -> None:
        self._response = response
        self._chunks = response.aiter_bytes()
        self._decoder = SSEDecoder(max_event_bytes)
        self._ready: list[Event] = []
        self._url = url
        self._redact = redact or (lambda s: s)
        self.last_event_id: str | None = None
        self.events = 0          # events delivered (non-empty data)

    @property
    def retry(self) -> int | None:
        return self._decoder.retry

    def __aiter__(self) -> SSEStream:
        return self

    async def __anext__(self) -> Event:
        while True:
            while self._ready:
                event = self._ready.pop(0)
                self.last_event_id = event.id
                if event.data:
                    self.events += 1
                    return event
            self.last_event_id = self._decoder.last_event_id
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                raise StopAsyncIteration from None
            except httpx.TimeoutException as exc:
                raise Timeout(f"stopped sending on its event stream ({_reason(exc)})", self._url) from None
            except httpx.HTTPError as exc:
                raise StreamBroken(f"dropped the connection mid-stream ({self._redact(_reason(exc))})",
                                   self._url) from None
            try:
                self._ready.extend(self._decoder.feed(chunk))
            except SSEError as exc:
                raise BadBody(f"sent an unusable event stream: {exc}", self._url) from None


@dataclass(slots=True)
class PostResponse:
    status: int
    headers: httpx.Headers
    body: bytes | None = None            # a JSON body (application/json)
    events: SSEStream | None = None      # an SSE stream (text/event-stream)

    @property
    def session_id(self) -> str | None:
        return self.headers.get("mcp-session-id")

    @property
    def accepted(self) -> bool:
        """2xx without a body (202 Accepted): the answer to a notification or a response."""
        return self.body is None and self.events is None


# ---- the client ----------------------------------------------------------------------------


def display_url(url: str) -> str:
    """The URL as it may appear in messages and logs: no userinfo, no query, no fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "<invalid url>"


class StreamableHttpClient:
    def __init__(self, url: str, headers: Mapping[str, str] | None = None, timeout: float = 30.0, *,
                 max_body_bytes: int = 16 * 1024 * 1024, verify: bool | ssl.SSLContext = True,
                 auth: httpx.Auth | None = None) -> None:
        self.url = url
        self.shown_url = display_url(url)
        self.timeout = timeout
        self.max_body_bytes = max_body_bytes
        # The process-wide registry has these already when the config was loaded by the CLI; a client
        # built any other way still masks its own headers.
        self._secrets = SecretValues()
        for value in (headers or {}).values():
            self._secrets.add_credential(value)
        http_timeout = httpx.Timeout(timeout, read=None)
        # `auth`: the gateway's own credentials for this server (auth.upstream_oauth), set per request.
        common: dict[str, Any] = dict(headers=dict(headers or {}), timeout=http_timeout, verify=verify,
                                      follow_redirects=False, auth=auth)
        # POSTs: no connection limit (the caller bounds requests in flight); a few kept alive.
        self._posts = httpx.AsyncClient(limits=httpx.Limits(max_connections=None, max_keepalive_connections=16),
                                        **common)
        # Long-lived GET streams: a pool of their own.
        self._streams = httpx.AsyncClient(limits=httpx.Limits(max_connections=8, max_keepalive_connections=0),
                                          **common)

    def redact(self, text: str) -> str:
        """Mask configured header values (tokens), and whatever else the process masks (secret
        values, `password: ...`), in text quoted from the peer or from errors."""
        return mask(self._secrets.mask(text))

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._posts.aclose()
            await self._streams.aclose()

    # ---- requests ---------------------------------------------------------------------------

    @asynccontextmanager
    async def post(self, body: bytes, headers: Mapping[str, str]) -> AsyncIterator[PostResponse]:
        """POST `body` as is. Yields the response: accepted, a JSON body, or an SSE stream to read
        inside the `async with` (leaving it closes the connection, which in the modern era is
        the cancellation). Raises an HttpClientError for anything else."""
        request = self._posts.build_request(
            "POST", self.url, content=body,
            headers={"accept": ACCEPT_POST, "content-type": JSON_TYPE, **headers})
        deadline = trio.current_time() + self.timeout
        response = await self._send(self._posts, request, deadline)
        try:
            await self._check_status(response, deadline)
            ctype = _content_type(response)
            if response.status_code == 202:
                yield PostResponse(response.status_code, response.headers)
            elif ctype == SSE_TYPE:
                yield PostResponse(response.status_code, response.headers,
                                   events=SSEStream(response, self.shown_url, self.max_body_bytes, self.redact))
            elif ctype == JSON_TYPE or ctype.endswith("+json"):
                # Without a Content-Length the body ends when the server says so, which a server
                # streaming messages in it may never do: each part is looked at as it comes.
                data = await self._read_body(response, deadline, self.max_body_bytes, strict=True,
                                             one_message="content-length" not in response.headers)
                if data.strip():
                    yield PostResponse(response.status_code, response.headers, body=data)
                else:
                    yield PostResponse(response.status_code, response.headers)
            else:
                data = await self._read_body(response, deadline, ERROR_BODY_LIMIT, strict=False)
                if not data.strip():     # e.g. 200 with no body to a notification
                    yield PostResponse(response.status_code, response.headers)
                else:
                    raise BadBody(f"answered HTTP {response.status_code} with content type "
                                  f"{ctype or 'none'!r}, not application/json or text/event-stream: "
                                  f"{self._excerpt(data)}", self.shown_url)
        finally:
            with trio.CancelScope(shield=True):
                await response.aclose()

    @asynccontextmanager
    async def get_stream(self, headers: Mapping[str, str],
                         last_event_id: str | None = None) -> AsyncIterator[SSEStream | None]:
        """The legacy era's GET stream; None if the server offers none (405)."""
        extra = {"accept": ACCEPT_SSE, **headers}
        if last_event_id is not None:
            extra["last-event-id"] = last_event_id
        request = self._streams.build_request("GET", self.url, headers=extra)
        deadline = trio.current_time() + self.timeout
        response = await self._send(self._streams, request, deadline)
        try:
            if response.status_code == 405:
                yield None
                return
            await self._check_status(response, deadline)
            ctype = _content_type(response)
            if ctype != SSE_TYPE:
                data = await self._read_body(response, deadline, ERROR_BODY_LIMIT, strict=False)
                raise BadBody(f"answered GET with content type {ctype or 'none'!r}, not text/event-stream: "
                              f"{self._excerpt(data)}", self.shown_url)
            yield SSEStream(response, self.shown_url, self.max_body_bytes, self.redact)
        finally:
            with trio.CancelScope(shield=True):
                await response.aclose()

    async def delete(self, headers: Mapping[str, str]) -> int:
        """DELETE (end a legacy session). Returns the status; 405 means the server keeps sessions."""
        request = self._posts.build_request("DELETE", self.url, headers=dict(headers))
        deadline = trio.current_time() + self.timeout
        response = await self._send(self._posts, request, deadline)
        try:
            await self._read_body(response, deadline, ERROR_BODY_LIMIT, strict=False)
        finally:
            with trio.CancelScope(shield=True):
                await response.aclose()
        return response.status_code

    # ---- mechanics --------------------------------------------------------------------------

    async def _send(self, client: httpx.AsyncClient, request: httpx.Request, deadline: float) -> httpx.Response:
        url = self.shown_url
        response: httpx.Response | None = None
        with trio.move_on_at(deadline):
            try:
                response = await client.send(request, stream=True)
            except httpx.ConnectTimeout:
                raise Unreachable(f"is unreachable (no connection within {self.timeout:g}s)", url) from None
            except httpx.ConnectError as exc:
                if _tls_cause(exc) is not None:
                    raise TlsFailure(f"failed the TLS handshake ({self.redact(_tls_reason(exc))})", url) from None
                raise Unreachable(f"is unreachable ({self.redact(_reason(exc))})", url) from None
            except httpx.TimeoutException as exc:
                raise Timeout(f"did not answer within {self.timeout:g}s ({_reason(exc)})", url) from None
            except httpx.RemoteProtocolError as exc:
                text = self.redact(_reason(exc))
                if "disconnected" in text.lower():
                    raise StreamBroken(f"closed the connection without answering ({text})", url) from None
                raise BadBody(f"did not answer with valid HTTP ({text})", url) from None
            except httpx.UnsupportedProtocol as exc:
                raise Unreachable(f"has a URL the gateway cannot use ({_reason(exc)})", url) from None
            except httpx.HTTPError as exc:
                raise StreamBroken(f"lost the connection ({self.redact(_reason(exc))})", url) from None
        if response is None:
            raise Timeout(f"did not answer within {self.timeout:g}s", url)
        return response

    async def _check_status(self, response: httpx.Response, deadline: float) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        data = await self._read_body(response, deadline, ERROR_BODY_LIMIT, strict=False)
        reason = response.reason_phrase or ""
        where = ""
        if 300 <= status < 400:
            location = response.headers.get("location")
            where = f" to {display_url(location)}" if location else ""
            phrase = f"redirected the request (HTTP {status} {reason}{where}); the gateway does not follow redirects"
        else:
            phrase = f"answered HTTP {status} {reason}".rstrip()
            excerpt = self._excerpt(data)
            if excerpt:
                phrase += f": {excerpt}"
        raise HttpStatus(phrase, self.shown_url, status, reason, _content_type(response), data, response.headers)

    async def _read_body(self, response: httpx.Response, deadline: float, limit: int, *, strict: bool,
                         one_message: bool = False) -> bytes:
        """Up to `limit` bytes of the body before `deadline`. strict: over the limit, a timeout or a
        broken connection raise; otherwise what arrived is returned (it only feeds a message).
        one_message: the body is a JSON answer, so a second message in it, or a message that is not
        an answer (it has a method), raises BadBody as soon as it arrives (checked while what came
        is small: that is where a server streaming messages in a JSON body shows)."""
        parts: list[bytes] = []
        size = checks = 0
        timed_out = True
        with trio.move_on_at(deadline):
            try:
                async for chunk in response.aiter_bytes():
                    parts.append(chunk)
                    size += len(chunk)
                    # Only where a message may have just ended, a bounded number of times: a server
                    # trickling its body a byte at a time must not cost a parse per byte.
                    if (one_message and size <= ONE_MESSAGE_CHECK_BYTES and checks < ONE_MESSAGE_CHECKS
                            and chunk.rstrip()[-1:] in (b"}", b"]")):
                        checks += 1
                        self._check_one_message(b"".join(parts))
                    if size > limit:
                        if strict:
                            raise BadBody(f"sent a JSON body over the gateway's {limit}-byte limit "
                                          "(limits.max_frame_bytes)", self.shown_url)
                        break
            except httpx.HTTPError as exc:
                if strict:
                    raise StreamBroken(f"dropped the connection while sending its answer "
                                       f"({self.redact(_reason(exc))})", self.shown_url) from None
            timed_out = False
        if timed_out and strict:
            raise Timeout(f"did not finish sending its answer within {self.timeout:g}s", self.shown_url)
        return b"".join(parts)[:limit]

    def _check_one_message(self, data: bytes) -> None:
        first = scan.first_value(data)
        if first is None:
            return
        value, rest = first
        if rest:
            raise BadBody(f"{SEVERAL_MESSAGES}: {self._excerpt(data)}", self.shown_url)
        if isinstance(value, dict) and "method" in value:
            raise BadBody(f"answered with a JSON-RPC {'request' if 'id' in value else 'notification'} "
                          f"({self._excerpt(jsonfast.dumps(value.get('method')))}) as its application/json "
                          "body, which must be the answer itself (messages before the answer belong in a "
                          "text/event-stream response)", self.shown_url)

    def _excerpt(self, data: bytes) -> str:
        text = " ".join(data[:4 * EXCERPT_CHARS].decode("utf-8", "replace").split())
        text = self.redact(text)
        return text[:EXCERPT_CHARS] + ("..." if len(text) > EXCERPT_CHARS else "")


def _content_type(response: httpx.Response) -> str:
    return response.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    if text:
        return text
    cause = exc.__cause__ or exc.__context__
    return _reason(cause) if cause is not None and cause is not exc else type(exc).__name__


def _tls_cause(exc: BaseException) -> ssl.SSLError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _tls_reason(exc: BaseException) -> str:
    cause = _tls_cause(exc)
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"certificate not trusted: {cause.verify_message}" if cause.verify_message else str(cause)
    return getattr(cause, "reason", None) or str(cause)
