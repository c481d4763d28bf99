"""The request a handler gets: read whole (body included) before the handler runs.

Apart from the cycle that produces it so that handlers, the edge checks and tests can
name it without the parser behind it. Sans-IO.
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

__all__ = ["Request", "make_request"]


@dataclass(slots=True)
class Request:
    method: str                         # "GET", "POST", ...
    target: str                         # raw path + query, e.g. "/mcp/echo?x=1"
    path: str                           # path only, percent-decoded
    headers: list[tuple[str, str]]      # names lowercased, values as received (latin-1 decoded)
    body: bytes
    client: tuple[str, int] | None

    def header(self, name: str) -> str | None:
        """First value of a header, name case-insensitive."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key == name]


def make_request(method: str, target: str, headers: list[tuple[str, str]], body: bytes,
                 client: tuple[str, int] | None) -> Request:
    """A Request from a parsed head; `path` is the target's path, percent-decoded."""
    if target.startswith("/"):
        path = target.partition("?")[0]
    else:   # absolute-form, or "*"
        path = urlsplit(target).path if "://" in target else target
    if "%" in path:
        path = unquote(path)
    return Request(method, target, path, headers, body, client)
