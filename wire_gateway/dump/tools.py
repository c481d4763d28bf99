"""`wire-gateway dump show|stats|fixture`: reading frame dumps back.

The dump is the record; these tools only read it. `show` is for a person following
a conversation, `stats` for a quick profile of a run, `fixture` turns one recorded
session into a replayable load fixture (see fixture.py for that format).

Slightly over the house's 400 lines, kept as one file on purpose: the three commands are thin
(about 60 lines each) over the same reading layer (`iter_records`/`follow_records`, `frame_msg`,
the request/answer pairing) and share one argument parser; split per command, each module
would be a screenful importing the rest back.
"""
from __future__ import annotations

import argparse
import base64
import fnmatch
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from wire_gateway.dump.fixture import RECV, SEND, FixtureHeader, write_fixture
from wire_gateway.dump.tap import C2G, G2C, G2S, S2G

ARROWS = {C2G: "C ─▶ G    ", G2S: "    G ─▶ S", S2G: "    G ◀─ S", G2C: "C ◀─ G    "}
_PARTNER = {G2C: C2G, C2G: G2C, S2G: G2S, G2S: S2G}
_COLOURS = {C2G: "36", G2S: "34", S2G: "35", G2C: "32"}   # cyan, blue, magenta, green
_RED, _YELLOW, _DIM = "31", "33", "2"
MODERN_VERSION_KEY = "io.modelcontextprotocol/protocolVersion"


class DumpError(Exception):
    """A problem the user can act on (printed without a traceback)."""


# ---- reading -------------------------------------------------------------------------------

def iter_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """Every record of one dump file; a torn last line (a dump being written) is skipped."""
    with open(path, "rb") as f:
        for line in f:
            rec = _parse_line(line)
            if rec is not None:
                yield rec


def _parse_line(line: bytes) -> dict[str, Any] | None:
    line = line.strip()
    if not line:
        return None
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


def follow_records(path: str | Path, poll: float = 0.2) -> Iterator[dict[str, Any]]:
    """Tail a live dump: records as they are written, across rotations (PATH -> PATH.1)."""
    path = str(path)
    f = None
    ino = None
    partial = b""
    while True:
        if f is None:
            try:
                f = open(path, "rb")   # noqa: SIM115 - reopened at each rotation, so no `with`
                ino = os.fstat(f.fileno()).st_ino
                partial = b""
            except FileNotFoundError:
                time.sleep(poll)
                continue
        chunk = f.readline()
        if chunk:
            if not chunk.endswith(b"\n"):
                partial += chunk     # the writer is mid-line: wait for the rest
                continue
            line, partial = partial + chunk, b""
            rec = _parse_line(line)
            if rec is not None:
                yield rec
            continue
        # At the end: has the file been rotated or truncated under us?
        try:
            st = os.stat(path)
        except FileNotFoundError:
            time.sleep(poll)
            continue
        if st.st_ino != ino or st.st_size < f.tell():
            rest = f.read()           # whatever the old file got before it was renamed
            for line in (partial + rest).splitlines():
                rec = _parse_line(line)
                if rec is not None:
                    yield rec
            f.close()
            f = None
            continue
        time.sleep(poll)


def frame_text(rec: dict[str, Any]) -> str:
    if "frame" in rec:
        return rec["frame"]
    if "frame_b64" in rec:
        return base64.b64decode(rec["frame_b64"]).decode("utf-8", "replace")
    return ""


def frame_msg(rec: dict[str, Any]) -> Any:
    text = rec.get("frame")
    data: str | bytes
    if text is not None:
        data = text
    elif "frame_b64" in rec:
        data = base64.b64decode(rec["frame_b64"])
    else:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def _key(rec: dict[str, Any], direction: str | None) -> tuple[Any, ...]:
    msg_id = rec.get("id")
    return rec.get("session"), rec.get("server"), direction, type(msg_id).__name__, json.dumps(msg_id)


def _is_error(rec: dict[str, Any]) -> bool:
    if rec.get("kind") == "error":
        return True
    if rec.get("kind") == "response" and '"isError"' in rec.get("frame", ""):
        msg = frame_msg(rec)
        result = msg.get("result") if isinstance(msg, dict) else None
        return isinstance(result, dict) and result.get("isError") is True
    return False


# ---- show -------------------------------------------------------------------------------------

class Filter:
    """--session/--server/--method/--errors; answers follow their request's method."""

    def __init__(self, session: str | None, server: str | None, method: str | None, errors: bool) -> None:
        self.session, self.server, self.method, self.errors = session, server, method, errors
        self._asked: dict[tuple[Any, ...], str | None] = {}

    def __call__(self, rec: dict[str, Any]) -> bool:
        if "dropped" in rec:
            return True
        if self.session and not str(rec.get("session", "")).startswith(self.session):
            return False
        if self.server and rec.get("server") != self.server:
            return False
        direction = rec.get("dir")
        method = rec.get("method")
        if rec.get("kind") == "request":
            if len(self._asked) > 100_000:
                self._asked.clear()
            self._asked[_key(rec, direction)] = method
        elif rec.get("kind") in ("response", "error") and direction in _PARTNER:
            method = self._asked.get(_key(rec, _PARTNER[direction]), method)
        if self.method and not fnmatch.fnmatchcase(method or "", self.method):
            return False
        return not (self.errors and not _is_error(rec))


def _paint(text: str, code: str | None, colour: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if colour and code else text


def _preview(rec: dict[str, Any], width: int = 80) -> str:
    msg = frame_msg(rec)
    if isinstance(msg, dict):
        for part in ("params", "result", "error"):
            if part in msg:
                text = json.dumps(msg[part], separators=(",", ":"), ensure_ascii=False)
                break
        else:
            text = ""
    else:
        text = frame_text(rec)
    return text if len(text) <= width else text[:width - 1] + "…"


def format_record(rec: dict[str, Any], start: float, colour: bool, full: bool) -> str:
    if "dropped" in rec:
        return _paint(f"{rec['mono'] - start:+11.6f}  !! {rec['dropped']} frame(s) dropped "
                      f"(the dump queue was full; {rec.get('dropped_total', rec['dropped'])} in all)", _YELLOW, colour)
    direction = rec.get("dir", "?")
    offset = f"{rec.get('mono', start) - start:+11.6f}"
    session = str(rec.get("session", ""))[:12]
    kind = rec.get("kind", "?")
    label = rec.get("method") or ""
    if rec.get("id") is not None:
        label = f"{label} #{json.dumps(rec['id'])}".strip()
    extras = []
    if "latency_ms" in rec:
        extras.append(f"{rec['latency_ms']:.3f}ms")
    if rec.get("policy"):
        extras.append(f"[{rec['policy']}]")
    extras.append(f"{rec.get('bytes', 0)}B")
    body = frame_text(rec) if full else _preview(rec)
    kind_colour = _RED if _is_error(rec) else None
    return "  ".join([
        _paint(offset, _DIM, colour),
        _paint(ARROWS.get(direction, direction), _COLOURS.get(direction), colour),
        f"{session:<12} {rec.get('server', ''):<10}",
        _paint(f"{kind:<12}", kind_colour, colour),
        f"{label:<28}",
        " ".join(extras),
        body])


def show(records: Iterable[dict[str, Any]], out: TextIO, flt: Filter, colour: bool, full: bool) -> int:
    start: float | None = None
    shown = 0
    for rec in records:
        if not flt(rec):
            continue
        if start is None:
            start = rec.get("mono", 0.0)
        out.write(format_record(rec, start, colour, full) + "\n")
        out.flush()
        shown += 1
    return shown


# ---- stats -----------------------------------------------------------------------------------

def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (a value that occurred, no interpolation)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def stats(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per method, seen from the client (client->gateway requests and notifications, and the
    answers the gateway gave): counts, errors, bytes in/out, latency; per hop: frames and bytes."""
    methods: dict[str, dict[str, Any]] = defaultdict(lambda: {
        "count": 0, "errors": 0, "bytes_in": 0, "bytes_out": 0, "latencies": []})
    asked: dict[tuple, str] = {}
    hops: dict[str, dict[str, int]] = {d: {"frames": 0, "bytes": 0} for d in (C2G, G2S, S2G, G2C)}
    sessions: set = set()
    dropped = 0
    for rec in records:
        if "dropped" in rec:
            dropped += int(rec["dropped"])
            continue
        direction = rec.get("dir")
        if direction in hops:
            hops[direction]["frames"] += 1
            hops[direction]["bytes"] += int(rec.get("bytes", 0))
        sessions.add(rec.get("session"))
        kind = rec.get("kind")
        if direction == C2G and kind in ("request", "notification"):
            row = methods[rec.get("method") or "?"]
            row["count"] += 1
            row["bytes_in"] += int(rec.get("bytes", 0))
            if kind == "request":
                asked[_key(rec, C2G)] = rec.get("method") or "?"
        elif direction == G2C and kind in ("response", "error"):
            method = asked.pop(_key(rec, C2G), None)
            if method is None:
                continue
            row = methods[method]
            row["bytes_out"] += int(rec.get("bytes", 0))
            if _is_error(rec):
                row["errors"] += 1
            if "latency_ms" in rec:
                row["latencies"].append(float(rec["latency_ms"]))
    out_methods = {}
    for name in sorted(methods):
        row = methods[name]
        lat = row.pop("latencies")
        row["latency_ms"] = ({"p50": percentile(lat, 50), "p90": percentile(lat, 90), "p99": percentile(lat, 99),
                              "max": max(lat), "n": len(lat)} if lat else None)
        out_methods[name] = row
    return {"sessions": len(sessions), "dropped": dropped, "hops": hops, "methods": out_methods}


def render_stats(result: dict[str, Any]) -> str:
    lines = [f"{'method':<32} {'count':>7} {'errors':>7} {'bytes in':>10} {'bytes out':>10} "
             f"{'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'max ms':>9}"]
    for name, row in result["methods"].items():
        lat = row["latency_ms"]
        cells = [f"{lat[k]:>9.3f}" for k in ("p50", "p90", "p99", "max")] if lat else [f"{'-':>9}"] * 4
        lines.append(f"{name:<32} {row['count']:>7} {row['errors']:>7} {row['bytes_in']:>10} "
                     f"{row['bytes_out']:>10} " + " ".join(cells))
    lines.append("")
    for direction, hop in result["hops"].items():
        lines.append(f"{direction:<18} {hop['frames']:>7} frames {hop['bytes']:>11} bytes")
    lines.append(f"sessions: {result['sessions']}   dropped by the dump: {result['dropped']}")
    return "\n".join(lines)


# ---- fixture ---------------------------------------------------------------------------------

def sessions_in(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for rec in records:
        if "session" not in rec:
            continue
        entry = found.setdefault(rec["session"], {"server": rec.get("server"), "era": rec.get("era"),
                                                  "transport": rec.get("transport"), "frames": 0})
        entry["frames"] += 1
        if entry["era"] is None:
            entry["era"] = rec.get("era")
    return found


def make_fixture(records: list[dict[str, Any]], session: str | None, name: str,
                 description: str = "") -> tuple[FixtureHeader, list[tuple[float, str, dict]]]:
    found = sessions_in(records)
    if not found:
        raise DumpError("the dump holds no frames")
    if session is None:
        if len(found) > 1:
            listing = "\n".join(f"  {sid}  server={v['server']} era={v['era']} transport={v['transport']} "
                                f"frames={v['frames']}" for sid, v in found.items())
            raise DumpError(f"the dump holds {len(found)} sessions; choose one with --session:\n{listing}")
        session = next(iter(found))
    matches = [sid for sid in found if sid == session] or [sid for sid in found if sid.startswith(session)]
    if len(matches) != 1:
        raise DumpError(f"--session {session!r} matches {len(matches)} sessions; known: {', '.join(found)}")
    session = matches[0]
    info = found[session]
    mine = [r for r in records if r.get("session") == session and r.get("dir") in (C2G, G2C)]
    entries: list[tuple[float, str, dict]] = []
    start: float | None = None
    version = None
    for rec in mine:
        msg = frame_msg(rec)
        if not isinstance(msg, dict):
            continue     # a frame the gateway could not parse either; the load tool cannot send it
        if start is None:
            start = float(rec["mono"])
        entries.append((round(max(0.0, float(rec["mono"]) - start), 6), SEND if rec["dir"] == C2G else RECV, msg))
        version = version or _protocol_version(msg)
    if not entries:
        raise DumpError(f"session {session} has no client-side frames")
    era = info["era"] or ("modern" if _modern(entries) else "legacy")
    first = next(r for r in mine if "ts" in r)
    header = FixtureHeader(name=name, era=era, protocolVersion=version or "", transport=info["transport"] or "stdio",
                           server=info["server"] or "", recorded=first["ts"], description=description)
    return header, entries


def _protocol_version(msg: dict[str, Any]) -> str | None:
    """The negotiated version: an initialize result's, else a modern request's _meta."""
    result = msg.get("result")
    if isinstance(result, dict) and isinstance(result.get("protocolVersion"), str) and "serverInfo" in result:
        return result["protocolVersion"]
    params = msg.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    if isinstance(meta, dict) and isinstance(meta.get(MODERN_VERSION_KEY), str):
        return meta[MODERN_VERSION_KEY]
    return None


def _modern(entries: list[tuple[float, str, dict]]) -> bool:
    return not any(msg.get("method") == "initialize" for _, _, msg in entries)


# ---- the command -------------------------------------------------------------------------------

def add_dump_parser(sub: Any) -> None:
    p = sub.add_parser("dump", help="read frame dumps: show a conversation, stats, make a load fixture")
    tools = p.add_subparsers(dest="dump_command", required=True, metavar="TOOL")
    s = tools.add_parser("show", help="print a conversation, one line per frame")
    s.add_argument("file")
    s.add_argument("--full", action="store_true", help="print whole frames instead of a preview")
    s.add_argument("--session", help="only this session (an id prefix)")
    s.add_argument("--server", help="only this server")
    s.add_argument("--method", help="only this method (glob, e.g. 'tools/*'); answers follow their request")
    s.add_argument("--errors", action="store_true", help="only errors (JSON-RPC errors and isError results)")
    s.add_argument("--follow", "-f", action="store_true", help="keep reading a live dump (survives rotation)")
    s.add_argument("--no-color", action="store_true", help="never colour (default: colour on a terminal)")
    s = tools.add_parser("stats", help="per-method counts, errors, bytes and latency percentiles")
    s.add_argument("file")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s = tools.add_parser("fixture", help="turn one dumped session into a load fixture (docs/fixtures.md)")
    s.add_argument("file")
    s.add_argument("--session", help="which session (required when the dump has several)")
    s.add_argument("--out", required=True, metavar="PATH",
                   help="the fixture to write, e.g. fixtures/sessions/NAME.jsonl")
    s.add_argument("--name", help="fixture name (default: the file name without .jsonl)")
    s.add_argument("--description", default="", help="what the session exercises")


def run_dump_command(args: argparse.Namespace) -> int:
    try:
        if not Path(args.file).exists() and not (args.dump_command == "show" and args.follow):
            raise DumpError(f"{args.file}: no such file")
        if args.dump_command == "show":
            colour = sys.stdout.isatty() and not args.no_color and "NO_COLOR" not in os.environ
            flt = Filter(args.session, args.server, args.method, args.errors)
            records = follow_records(args.file) if args.follow else iter_records(args.file)
            try:
                show(records, sys.stdout, flt, colour, args.full)
            except KeyboardInterrupt:
                pass
            return 0
        if args.dump_command == "stats":
            result = stats(iter_records(args.file))
            print(json.dumps(result, indent=2) if args.json else render_stats(result))
            return 0
        recorded = list(iter_records(args.file))
        name = args.name or Path(args.out).name.removesuffix(".jsonl")
        header, entries = make_fixture(recorded, args.session, name, args.description)
        write_fixture(args.out, header, entries)
        print(f"wrote {args.out}: {len(entries)} frames of session from {args.file} "
              f"({header.era}, {header.transport}, server {header.server})")
        return 0
    except DumpError as exc:
        print(f"wire-gateway dump {args.dump_command}: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
