"""The recorded-session fixture format: the one writer and reader of it.

A fixture is JSONL: a header line, then one line per frame in the order the client
saw them, `{"t": seconds since the first frame, "dir": "send"|"recv", "msg": {...}}`.
`send` is what the client sent (requests, notifications, its replies to server
requests), `recv` what it got. The load tool replays `send` and checks `recv`, so
this module is shared by `wire-gateway dump fixture` and `load/`: one place knows
the format. See docs/fixtures.md.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
SEND = "send"
RECV = "recv"
ERAS = ("legacy", "modern")
TRANSPORTS = ("stdio", "http")


class FixtureError(ValueError):
    """A file that is not a fixture we can replay (says where and why)."""


@dataclass
class FixtureHeader:
    name: str
    era: str                      # "legacy" | "modern"
    protocolVersion: str
    transport: str                # "stdio" | "http": how it was recorded
    server: str
    recorded: str                 # RFC 3339
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"wire_gateway_fixture": FORMAT_VERSION, **asdict(self)}


Entry = tuple[float, str, dict[str, Any]]   # (t, "send"|"recv", JSON-RPC message)


def _dumps(obj: Any) -> str:
    # ensure_ascii keeps lone surrogates and odd characters exact and the file plain ASCII.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def write_fixture(path: str | Path, header: FixtureHeader, entries: list[Entry]) -> None:
    """Write a fixture; refuses what the reader would refuse, so a bad one is never saved."""
    _check_header(header.to_json(), str(path))
    lines = [_dumps(header.to_json())]
    last = 0.0
    for n, (t, direction, msg) in enumerate(entries, start=2):
        _check_entry(t, direction, msg, last, f"{path}: entry {n}")
        last = t
        lines.append(_dumps({"t": round(float(t), 6), "dir": direction, "msg": msg}))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_fixture(path: str | Path) -> tuple[FixtureHeader, list[Entry]]:
    """Read and check a fixture: header first, then entries in non-decreasing time."""
    where = str(path)
    with open(path, encoding="utf-8") as f:
        lines = [(n, line) for n, line in enumerate(f, start=1) if line.strip()]
    if not lines:
        raise FixtureError(f"{where}: empty file, expected a fixture header line")
    head = _parse(lines[0][1], f"{where}:{lines[0][0]}")
    _check_header(head, f"{where}:{lines[0][0]}")
    header = FixtureHeader(**{k: head[k] for k in ("name", "era", "protocolVersion", "transport", "server",
                                                   "recorded")}, description=head.get("description", ""))
    entries: list[Entry] = []
    last = 0.0
    for n, line in lines[1:]:
        obj = _parse(line, f"{where}:{n}")
        if not isinstance(obj, dict):
            raise FixtureError(f"{where}:{n}: expected an object with t, dir and msg")
        t, direction, msg = obj.get("t"), obj.get("dir"), obj.get("msg")
        _check_entry(t, direction, msg, last, f"{where}:{n}")
        last = float(t)  # type: ignore[arg-type]
        entries.append((float(t), direction, msg))  # type: ignore[arg-type]
    return header, entries


def _parse(line: str, where: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise FixtureError(f"{where}: not JSON: {exc}") from None


def _check_header(head: Any, where: str) -> None:
    if not isinstance(head, dict) or head.get("wire_gateway_fixture") != FORMAT_VERSION:
        raise FixtureError(f"{where}: not a wire-gateway fixture header "
                           f'(expected {{"wire_gateway_fixture": {FORMAT_VERSION}, ...}})')
    for key in ("name", "protocolVersion", "server", "recorded"):
        if not isinstance(head.get(key), str):
            raise FixtureError(f"{where}: header field {key!r} must be a string")
    if head.get("era") not in ERAS:
        raise FixtureError(f"{where}: header era must be one of {ERAS}, not {head.get('era')!r}")
    if head.get("transport") not in TRANSPORTS:
        raise FixtureError(f"{where}: header transport must be one of {TRANSPORTS}, not {head.get('transport')!r}")
    if not isinstance(head.get("description", ""), str):
        raise FixtureError(f"{where}: header field 'description' must be a string")


def _check_entry(t: Any, direction: Any, msg: Any, last: float, where: str) -> None:
    if isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0:
        raise FixtureError(f"{where}: t must be a non-negative number of seconds, not {t!r}")
    if t < last:
        raise FixtureError(f"{where}: t={t} goes back in time (previous {last})")
    if direction not in (SEND, RECV):
        raise FixtureError(f"{where}: dir must be 'send' or 'recv', not {direction!r}")
    if not isinstance(msg, dict):
        raise FixtureError(f"{where}: msg must be a JSON-RPC message object")
