"""Every string of a JSON value, and the same value with some strings replaced.

Detectors judge strings; this is how they reach each one: nested objects and arrays,
text content, `structuredContent`, embedded resources, a modern result's `inputRequests`.
Binary payloads are not text and are skipped (and counted, so the log can say so): the
`data` of an image or audio content item and the `blob` of a resource. Object keys are not
scanned (arguments and results carry their data in values; keys are the schema's names).

`rewrite` returns the very same object when nothing changed, so an answer without a match
keeps its original bytes.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

BINARY_CONTENT = frozenset({"image", "audio"})

# (text, the key it sits under or None)
Found = tuple[str, "str | None"]


def _binary_key(obj: dict[str, Any]) -> str | None:
    """The key of `obj` that holds binary data, if any."""
    if "blob" in obj and isinstance(obj["blob"], str):
        return "blob"
    if obj.get("type") in BINARY_CONTENT and isinstance(obj.get("data"), str):
        return "data"
    return None


def strings(value: Any, skipped: list[str] | None = None, key: str | None = None) -> Iterator[Found]:
    """Every string in `value`, depth first, in document order. `skipped` collects the kind of
    each binary payload left out ("image", "audio", "blob")."""
    if isinstance(value, str):
        yield value, key
    elif isinstance(value, dict):
        binary = _binary_key(value) if ("blob" in value or "data" in value) else None
        for k, v in value.items():
            if k == binary:
                if skipped is not None:
                    skipped.append("blob" if k == "blob" else str(value.get("type")))
                continue
            yield from strings(v, skipped, k)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v, skipped, key)


Replace = Callable[[str, "str | None"], str]


def rewrite(value: Any, replace: Replace, key: str | None = None, skipped: list[str] | None = None) -> Any:
    """`value` with every string s (binary payloads excepted) replaced by replace(s, key);
    the same object wherever nothing changed. `skipped` collects binary payloads, as in `strings`."""
    if isinstance(value, str):
        return replace(value, key)
    if isinstance(value, dict):
        binary = _binary_key(value) if ("blob" in value or "data" in value) else None
        out: dict[str, Any] | None = None
        for k, v in value.items():
            if k == binary:
                if skipped is not None:
                    skipped.append("blob" if k == "blob" else str(value.get("type")))
                continue
            new = rewrite(v, replace, k, skipped)
            if new is not v:
                if out is None:
                    out = dict(value)
                out[k] = new
        return value if out is None else out
    if isinstance(value, list):
        items: list[Any] | None = None
        for i, v in enumerate(value):
            new = rewrite(v, replace, key, skipped)
            if new is not v:
                if items is None:
                    items = list(value)
                items[i] = new
        return value if items is None else items
    return value
