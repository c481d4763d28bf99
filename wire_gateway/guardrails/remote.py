"""Remote guardrail providers: ask an HTTP service whether a text may pass.

The local detectors are fast and always on hand; a remote provider is for what they cannot
judge (toxicity, topics, a vendor's trained injection model). It is slower and may fail, so
every check is bounded by the settings' `timeout` twice over (httpx's own timeouts for each
phase, and a trio deadline around the whole exchange, body included), and a failure is not an
exception but a verdict with an `error`: the engine decides, per policy, whether that blocks
(`on_error: block`, the default: fail closed) or passes (`allow`).

Two shapes of service:

`enkrypt`, the Enkrypt AI guardrails API ("detect with policy"): `POST {url}/guardrails/policy/detect`
with the headers `apikey: <api_key>` and `X-Enkrypt-Policy: <policy>`, body `{"text": "..."}`.
The answer is `{"summary": {"<detector>": 0 | 1 | [...]}, "details": {...}}`, or
`{"error": "..."}`. A detector of the settings' `block` list is violated when its summary value
is 1 (or true) or a non-empty list (toxicity lists its categories). A detector the policy does
not run is absent from the summary, and passes. The summary spells one detector differently
from the policy (`keyword_detected` for `keyword_detector`); both spellings count.

`webhook`, our own, for a service of the user's: `POST {url}` with the configured headers (and
`Authorization: Bearer <api_key>` if a key is set), body

    {"text": "...", "direction": "input" | "output", "server": "<server name>",
     "tool": "<tool name>" | null, "policy": "<policy>" | null}

and the answer

    {"violations": [{"detector": "<name>", "reason": "<free text>"}, ...]}

An empty or missing `violations` list passes; `{"error": "..."}` is a provider error. Names
are 1 to 64 characters of letters, digits and `_ . : -`. A non-empty `block` list keeps only
the violations it names; an empty one keeps them all. `reason` is for the service's own
records: the gateway never shows it, since it may quote the text.

What is never written anywhere, the error messages included: the text checked and the key.
A provider's own error message is quoted only when it shares no run of 12 characters with the
text (a service that echoes its input would otherwise put it in the log), and masked like
everything the gateway writes. URLs must be https except on a loopback host (as for JWKS
URLs: an API key and tool data sent in clear could be read by anyone on the path).
"""
from __future__ import annotations

import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import trio

from wire_gateway.config.loader import ConfigError, expand
from wire_gateway.telemetry.masking import SECRETS, SecretValues, mask
from wire_gateway.transport.http_client import display_url
from wire_gateway.wire.authority import is_loopback_url

PROVIDERS = ("enkrypt", "webhook")
ENKRYPT_PATH = "/guardrails/policy/detect"
ENKRYPT_DETECTORS = ("injection_attack", "pii", "toxicity", "nsfw", "bias", "sponge_attack",
                     "keyword_detector", "topic_detector", "policy_violation")
# Summary keys the API spells differently from the policy's detector names.
ENKRYPT_SUMMARY_ALIASES = {"keyword_detector": ("keyword_detected",)}
DEFAULT_TIMEOUT = 2.0
ANSWER_LIMIT = 1024 * 1024        # bytes of an answer read at most: a verdict is small
QUOTE_CHARS = 160                 # of a provider's error message, at most
ECHO_RUN = 12                     # a quoted message sharing this many characters with the text is withheld
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_NOT_JSON = object()


@dataclass(frozen=True)
class RemoteSettings:
    provider: str                                  # "enkrypt" | "webhook"
    url: str                                       # enkrypt: the API's base URL; webhook: the endpoint
    headers: dict[str, str] = field(default_factory=dict)
    api_key: str | None = None
    policy: str | None = None
    block: tuple[str, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    on_error: str = "block"                        # "block" (fail closed) | "allow" (fail open)
    parallel: bool = False                         # read-only tools: the call goes out while the check runs


@dataclass(frozen=True)
class RemoteVerdict:
    """What the provider said: the detectors violated (none: the text passes), or why it said
    nothing usable (`error`, a message for the log; the violations are then empty)."""

    violations: tuple[str, ...] = ()
    error: str | None = None


def parse_remote(d: Mapping[str, Any], environ: Mapping[str, str] | None = None,
                 where: str = "guardrails.remote") -> RemoteSettings:
    """Settings from one schema-validated config object. `${VAR}` is expanded in the URL, the
    key and header values; the key and header values join the process-wide registry of secret
    values, so nothing the gateway writes can show them. Raises ConfigError for what the schema
    cannot say: a plain-http URL off loopback, an enkrypt provider without key, policy or block
    list, an unset variable. `where` is the object's JSON path, for the messages."""
    env = dict(os.environ if environ is None else environ)
    where = where.removeprefix("$.")
    provider = d.get("provider", "")
    problems: list[str] = []
    url = expand(str(d.get("url", "")), env, f"{where}.url")
    api_key = d.get("api_key")
    if api_key is not None:
        api_key = expand(api_key, env, f"{where}.api_key")
        SECRETS.add(api_key)
    headers = {name: expand(value, env, f"{where}.headers.{name}") for name, value in (d.get("headers") or {}).items()}
    for value in headers.values():
        SECRETS.add_credential(value)
    block = tuple(d.get("block") or ())
    timeout = float(d.get("timeout", DEFAULT_TIMEOUT))
    on_error = d.get("on_error", "block")
    if provider not in PROVIDERS:
        problems.append(f"$.{where}.provider: {provider!r} is not one of {', '.join(PROVIDERS)}")
    if url_problem(url) is not None:
        problems.append(f"$.{where}.url: {url_problem(url)}")
    if provider == "enkrypt":
        if not api_key:
            problems.append(f"$.{where}.api_key: the enkrypt provider needs an API key")
        if not d.get("policy"):
            problems.append(f"$.{where}.policy: the enkrypt provider needs the name of a saved policy")
        if not block:
            problems.append(f"$.{where}.block: lists no detector, so the provider could never block")
    problems += [f"$.{where}.block: {name!r} is not a detector name" for name in block if not _NAME.fullmatch(name)]
    if not timeout > 0:
        problems.append(f"$.{where}.timeout: must be more than 0 seconds")
    if on_error not in ("block", "allow"):
        problems.append(f"$.{where}.on_error: {on_error!r} is not block or allow")
    if problems:
        raise ConfigError(problems)
    return RemoteSettings(provider=provider, url=url, headers=headers, api_key=api_key, policy=d.get("policy"),
                          block=block, timeout=timeout, on_error=on_error, parallel=bool(d.get("parallel", False)))


def url_problem(url: str) -> str | None:
    """Why `url` cannot be a provider's URL, or None."""
    try:
        parts = urlsplit(url)
        parts.port    # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return f"{display_url(url)} is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{display_url(url)} is not an http(s) URL"
    if parts.scheme != "https" and not is_loopback_url(url):
        return f"{display_url(url)} must be https (plain http only on a loopback host)"
    return None


def _encode(doc: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(doc)
    except orjson.JSONEncodeError:   # a lone surrogate in the text: the stdlib writes it escaped
        return json.dumps(doc).encode()


class Provider(ABC):
    """One configured provider, with its own HTTP client (kept open: the connection pool makes
    every check after the first skip the TCP and TLS handshakes). The shapes subclass it."""

    kind = ""

    def __init__(self, settings: RemoteSettings) -> None:
        problem = url_problem(settings.url)
        if problem is not None:
            raise ValueError(problem)
        self.settings = settings
        self.endpoint = self.endpoint_url(settings.url)
        self.shown = f"the {self.kind} guardrail provider at {display_url(self.endpoint)}"
        self._secrets = SecretValues()     # masked in quotes even if the process registry lacks them
        for value in settings.headers.values():
            self._secrets.add_credential(value)
        if settings.api_key:
            self._secrets.add(settings.api_key)
        self._client = httpx.AsyncClient(
            headers={**settings.headers, **self.auth_headers(settings), "content-type": "application/json",
                     "accept": "application/json"},
            timeout=httpx.Timeout(settings.timeout), follow_redirects=False,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=8))

    # ---- what the shapes define ----------------------------------------------------------------

    def endpoint_url(self, url: str) -> str:
        return url

    def auth_headers(self, settings: RemoteSettings) -> dict[str, str]:
        return {}

    @abstractmethod
    def body(self, text: str, direction: str, server: str, tool: str | None) -> dict[str, Any]:
        """The JSON document to POST."""

    @abstractmethod
    def judge(self, answer: dict[str, Any]) -> tuple[str, ...]:
        """The violations in a 2xx answer without an `error`; ValueError if it is not the shape."""

    # ---- the check -----------------------------------------------------------------------------

    async def check(self, text: str, *, direction: str, server: str, tool: str | None) -> RemoteVerdict:
        content = _encode(self.body(text, direction, server, tool))
        status, data = 0, b""
        with trio.move_on_after(self.settings.timeout) as scope:
            try:
                async with self._client.stream("POST", self.endpoint, content=content) as response:
                    status = response.status_code
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > ANSWER_LIMIT:
                            return self._error(f"answered more than {ANSWER_LIMIT} bytes", status)
                        chunks.append(chunk)
                    data = b"".join(chunks)
            except httpx.TimeoutException:
                return self._error(f"did not answer within {self.settings.timeout:g}s")
            except Exception as exc:    # httpx's errors, and what it lets through (ssl, OSError): all a verdict
                return self._error(f"is unreachable ({type(exc).__name__}: {self._quote(str(exc), text)})")
        if scope.cancelled_caught:
            return self._error(f"did not answer within {self.settings.timeout:g}s")
        try:
            answer = orjson.loads(data)
        except orjson.JSONDecodeError:
            answer = _NOT_JSON
        if isinstance(answer, dict) and answer.get("error"):
            return self._error(f"answered an error: {self._quote(str(answer['error']), text)}", status)
        if not 200 <= status < 300:
            return self._error("refused the check", status)
        if answer is _NOT_JSON:
            return self._error(f"answered {len(data)} bytes that are not JSON", status)
        if not isinstance(answer, dict):
            return self._error("answered JSON that is not an object", status)
        try:
            return RemoteVerdict(violations=self.judge(answer))
        except ValueError as exc:
            return self._error(f"answered an unexpected shape ({exc})", status)

    def _error(self, phrase: str, status: int = 0) -> RemoteVerdict:
        return RemoteVerdict(error=f"{self.shown} {phrase}" + (f" (HTTP {status})" if status else ""))

    def _quote(self, message: str, text: str) -> str:
        """A peer's or a library's message, fit for the log: short, masked, and never the text."""
        message = " ".join(message.split())[:QUOTE_CHARS]
        if len(text) >= ECHO_RUN:
            for i in range(len(message) - ECHO_RUN + 1):
                if message[i:i + ECHO_RUN] in text:
                    return "(withheld: it quotes the text checked)"
        elif text.strip() and text in message:
            return "(withheld: it quotes the text checked)"
        return mask(self._secrets.mask(message))

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._client.aclose()


class EnkryptProvider(Provider):
    kind = "enkrypt"

    def endpoint_url(self, url: str) -> str:
        return url.rstrip("/") + ENKRYPT_PATH

    def auth_headers(self, settings: RemoteSettings) -> dict[str, str]:
        return {"apikey": settings.api_key or "", "X-Enkrypt-Policy": settings.policy or ""}

    def body(self, text: str, direction: str, server: str, tool: str | None) -> dict[str, Any]:
        return {"text": text}

    def judge(self, answer: dict[str, Any]) -> tuple[str, ...]:
        summary = answer.get("summary")
        if not isinstance(summary, dict):
            raise ValueError("no summary object")
        return tuple(name for name in self.settings.block
                     if any(_flagged(summary.get(key)) for key in (name, *ENKRYPT_SUMMARY_ALIASES.get(name, ()))))


def _flagged(value: Any) -> bool:
    """An Enkrypt summary value that means "detected": 1, true (any positive count), or a non-empty list."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value > 0
    return isinstance(value, list) and len(value) > 0


class WebhookProvider(Provider):
    kind = "webhook"

    def auth_headers(self, settings: RemoteSettings) -> dict[str, str]:
        return {"authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}

    def body(self, text: str, direction: str, server: str, tool: str | None) -> dict[str, Any]:
        return {"text": text, "direction": direction, "server": server, "tool": tool,
                "policy": self.settings.policy}

    def judge(self, answer: dict[str, Any]) -> tuple[str, ...]:
        found = answer.get("violations")
        if found is None:
            return ()
        if not isinstance(found, list):
            raise ValueError("violations is not a list")
        names: list[str] = []
        for item in found:
            name = item.get("detector") if isinstance(item, dict) else None
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise ValueError("a violation without a valid detector name")
            if name not in names and (not self.settings.block or name in self.settings.block):
                names.append(name)
        return tuple(names)


def make_provider(settings: RemoteSettings) -> Provider:
    if settings.provider == "enkrypt":
        return EnkryptProvider(settings)
    if settings.provider == "webhook":
        return WebhookProvider(settings)
    raise ValueError(f"unknown guardrail provider {settings.provider!r}")
