"""The caller of the request being handled, for code far from where it was proven.

The HTTP front proves a request's caller and then calls into sessions, pools and the policy
runner synchronously, in the same task; the stdio front has one caller for its whole life.
Threading a principal through every `Upstream.request` would change a contract every kind of
upstream implements for the sake of one reader (the policy chain), so the caller travels in a
context variable instead: set by the front, read where a `Call` is made. trio copies the
context into tasks started from there, so a chain run in a task (Redis store) sees it too.
"""
from __future__ import annotations

from contextvars import ContextVar

from wire_gateway.auth.directory import Principal

CALLER: ContextVar[Principal | None] = ContextVar("wire_gateway_caller", default=None)
