"""The replay engine of ``load run``: a fixture as many virtual sessions, every answer checked.

A fixture becomes a ``Script`` (the handshake, then the body: the client's requests and notifications
in recorded order, each request with its recorded answer); each session replays the body in rounds
until the budget is spent, its ids rewritten (``ID_STRIDE``), its echo-like arguments tagged, every
answer judged (``judge``). docs/load.md says how and why. One file, over the usual size: the script,
the sessions, their transports and the fast lane share one hot path and its state.
"""
from __future__ import annotations

import json
import select
import subprocess
import time
from array import array
from dataclasses import dataclass, field
from functools import partial

import orjson
import outcome
import trio

from wire_gateway.dump.fixture import read_fixture
from wire_gateway.wire.era import META_PROTOCOL_VERSION
from wire_gateway.wire.headers import NAME_SOURCES, HeaderError, encode_header_value, param_headers_for

from .http_client import (
    _CONTENT_LENGTH,
    _NEEDS_FULL_PARSE,
    Disconnected,
    HttpConn,
    HttpStatus,
    request_head,
    sse_messages,
)
from .procfs import signal_group
from .stats import Counts
from .targets import Url

ID_STRIDE = 10 ** 9
_ID_SENTINEL = 918273645506172839
_TAG_SENTINEL = "~~load-run-tag~~"
RECONNECT_TIMEOUT = 10.0
HANDSHAKE_METHODS = ("initialize", "server/discover")
#: Keys dropped at any depth before --check compares an answer with the recording:
#: they name a moment, a process or a session, not what was answered.
VOLATILE_KEYS = frozenset({"_meta", "sessionId", "pid", "timestamp", "time", "date", "created", "createdAt",
                           "updatedAt", "expiresAt", "requestId"})


class ReplayError(Exception):
    """The fixture cannot be replayed, or a session cannot start (the handshake failed)."""


@dataclass
class Call:
    """One recorded client request and what answered it."""
    t: float
    msg: dict
    method: str
    expected: dict | None = None     # the recorded answer (None: none was recorded)
    tag_key: str | None = None       # echo-like: the string argument that is tagged
    name: str | None = None          # Mcp-Name value (tools/call name, resources/read uri, ...)

    template: bytes | None = None    # the body with %d placeholders: see ``render``
    order: tuple = ()
    tag_orig: str = ""               # the tagged argument's recorded value
    param_headers: tuple = ()        # Mcp-Param-* (modern HTTP), from the recorded tools/list's x-mcp-header
    cancel: dict | None = None       # the client cancelled it: its recorded notifications/cancelled

    label: str = ""                  # what latencies are reported under: the method, and a tool's name

    def __post_init__(self) -> None:
        self.label = f"{self.method} {self.name}" if self.method == "tools/call" and self.name else self.method

    def prepare(self) -> None:
        """Serialize once with sentinels, keep a bytes template: ``render`` is then one ``%``."""
        _msg, body, _ = tagged_call(self, _ID_SENTINEL, _TAG_SENTINEL)
        id_bytes, tag_bytes = b"%d" % _ID_SENTINEL, _TAG_SENTINEL.encode()
        if body.count(id_bytes) != 1 or body.count(tag_bytes) != (1 if self.tag_key else 0):
            return   # a sentinel collides with the data: render the slow way
        order = ("id", "tag") if not self.tag_key or body.index(id_bytes) < body.index(tag_bytes) else ("tag", "id")
        self.template = body.replace(b"%", b"%%").replace(id_bytes, b"%d").replace(tag_bytes, b"_v%d_%d")
        self.order = order if self.tag_key else ("id",)
        self.tag_orig = self.msg["params"]["arguments"][self.tag_key] if self.tag_key else ""

    def render(self, live_id: int, index: int, seq: int):
        """(body bytes, tagged string or None) for one live request."""
        if self.template is None:
            _, body, tagged = tagged_call(self, live_id, "_v%d_%d" % (index, seq))
            return body, tagged
        if not self.tag_key:
            return self.template % live_id, None
        tagged = "%s_v%d_%d" % (self.tag_orig, index, seq)
        if self.order[0] == "id":
            return self.template % (live_id, index, seq), tagged
        return self.template % (index, seq, live_id), tagged


@dataclass
class Script:
    era: str
    protocol_version: str
    handshake: list                  # [Call | dict]: initialize (a Call), initialized (a notification)
    body: list                       # [Call | dict]: requests and notifications, in order
    replies: dict                    # server request method -> [recorded client reply, ...]
    name: str = ""

    @property
    def calls_per_round(self) -> int:
        return sum(1 for step in self.body if isinstance(step, Call))


def contains_string(obj, text: str) -> bool:
    """True if the string ``text`` is a value somewhere inside ``obj``."""
    if isinstance(obj, str):
        return obj == text
    if isinstance(obj, dict):
        return any(contains_string(v, text) for v in obj.values())
    if isinstance(obj, list):
        return any(contains_string(v, text) for v in obj)
    return False


def substitute(obj, old: str, new: str):
    """``obj`` with every string equal to ``old`` replaced by ``new``."""
    if isinstance(obj, str):
        return new if obj == old else obj
    if isinstance(obj, dict):
        return {k: substitute(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [substitute(v, old, new) for v in obj]
    return obj


def normalize(obj):
    """``obj`` without VOLATILE_KEYS, at any depth: what --check compares."""
    if isinstance(obj, dict):
        return {k: normalize(v) for k, v in obj.items() if k not in VOLATILE_KEYS}
    if isinstance(obj, list):
        return [normalize(v) for v in obj]
    return obj


def build_script(header, entries) -> Script:
    """Turn fixture entries into a Script; refuses what cannot be replayed."""
    calls_by_id: dict = {}
    server_requests: dict = {}    # recorded server request id -> method
    replies: dict = {}
    steps: list = []
    for _t, direction, msg in entries:
        method = msg.get("method")
        has_id = "id" in msg
        if direction == "send":
            if method is not None and has_id:
                params = msg.get("params") if isinstance(msg.get("params"), dict) else {}
                source = NAME_SOURCES.get(method)
                name = params.get(source) if source else None
                call = Call(_t, msg, method, name=name if isinstance(name, str) else None)
                calls_by_id[_key(msg["id"])] = call
                steps.append(call)
            elif method is not None:
                steps.append(msg)
            elif has_id:   # the client's reply to a server request
                asked = server_requests.get(_key(msg["id"]))
                if asked is not None:
                    replies.setdefault(asked, []).append(msg)
        else:
            if method is not None and has_id:
                server_requests[_key(msg["id"])] = method
            elif method is None and has_id:
                call = calls_by_id.get(_key(msg["id"]))
                if call is not None and call.expected is None:
                    call.expected = msg
    for step in steps:
        if isinstance(step, Call) and step.method == "tools/call" and step.expected and "result" in step.expected:
            args = (step.msg.get("params") or {}).get("arguments")
            if isinstance(args, dict):
                for key, value in args.items():
                    if isinstance(value, str) and value and contains_string(step.expected["result"], value):
                        step.tag_key = key
                        break
    tools: dict = {}
    for _t, direction, msg in entries:   # a recorded tools/list tells which arguments go in headers
        result = msg.get("result") if direction == "recv" else None
        if isinstance(result, dict) and isinstance(result.get("tools"), list):
            for tool in result["tools"]:
                if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                    tools.setdefault(tool["name"], tool)
    for step in steps:
        if isinstance(step, Call) and step.method == "tools/call" and step.name in tools:
            try:
                args = step.msg["params"].get("arguments")
                step.param_headers = tuple(param_headers_for(tools[step.name], args).items())
            except (HeaderError, AttributeError):
                step.param_headers = ()
            schema = tools[step.name].get("inputSchema")
            props = schema.get("properties") if isinstance(schema, dict) else None
            prop = props.get(step.tag_key) if isinstance(props, dict) and step.tag_key else None
            if isinstance(prop, dict) and "x-mcp-header" in prop:
                step.tag_key = None   # a mirrored argument must stay as recorded (its header is cached)
                step.template = None
    for step in list(steps):
        if isinstance(step, dict) and step.get("method") == "notifications/cancelled":
            target = calls_by_id.get(_key((step.get("params") or {}).get("requestId")))
            if target is not None and target.expected is None and target in steps:
                target.cancel = step   # sent right after its request, with the live id
                steps.remove(step)
    handshake: list = []
    if header.era == "legacy":
        if not steps or not isinstance(steps[0], Call) or steps[0].method != "initialize":
            raise ReplayError("a legacy fixture must begin with initialize")
        handshake.append(steps.pop(0))
        if steps and isinstance(steps[0], dict) and steps[0].get("method") == "notifications/initialized":
            handshake.append(steps.pop(0))
        else:
            handshake.append({"jsonrpc": "2.0", "method": "notifications/initialized"})
    for step in steps + handshake:
        if isinstance(step, Call):
            step.prepare()
    if not any(isinstance(step, Call) for step in steps):
        raise ReplayError("the fixture has no request to replay after its handshake")
    return Script(header.era, header.protocolVersion, handshake, steps, replies, header.name)


def _key(value):
    return json.dumps(value, sort_keys=True)


def load_script(path) -> Script:
    try:
        header, entries = read_fixture(path)
    except (OSError, ValueError) as exc:
        raise ReplayError(f"cannot read fixture {path}: {exc}") from None
    return build_script(header, entries)


class Stats:
    """Everything a run measures; merged across worker processes with ``merge``."""

    def __init__(self):
        self.latency: dict = {}          # label -> array('q') of ns
        self.done_at = array("q")        # ns since the run's start (t0_ns), per answered call
        self.done_latency = array("q")   # ns, same order
        self.errors = Counts(300)
        self.mismatches = Counts(400)
        self.calls = 0                   # requests sent (body calls)
        self.answered = 0                # with a correct answer
        self.notifications = 0           # server -> client notifications seen
        self.server_requests = 0         # server -> client requests answered
        self.cancelled = 0               # requests sent and cancelled, as recorded
        self.sessions = 0                # sessions that completed their handshake
        self.session_failures = 0
        self.start = 0.0                 # time.time() at the start (t0_ns is the same moment)
        self.first_call = None           # seconds after start when the first call went out
        self.elapsed = 0.0

    def to_dict(self) -> dict:
        return {**vars(self), "latency": {k: v.tobytes() for k, v in self.latency.items()},
                "done_at": self.done_at.tobytes(), "done_latency": self.done_latency.tobytes()}

    def merge(self, part: dict) -> None:
        """Add a worker's ``to_dict`` (its clock offset applied to the timeline)."""
        for label, raw in part["latency"].items():
            self.latency.setdefault(label, array("q")).frombytes(raw)
        offset = part["start"] - self.start
        shift = int(offset * 1e9)
        self.done_at.extend(t + shift for t in array("q", part["done_at"]))
        self.done_latency.frombytes(part["done_latency"])
        self.errors.merge(part["errors"])
        self.mismatches.merge(part["mismatches"])
        for name in ("calls", "answered", "notifications", "server_requests", "cancelled", "sessions",
                     "session_failures"):
            setattr(self, name, getattr(self, name) + part[name])
        self.elapsed = max(self.elapsed, part["elapsed"] + offset)
        if part["first_call"] is not None:
            first = part["first_call"] + offset
            self.first_call = first if self.first_call is None else min(self.first_call, first)

    def sent_at(self, t0_ns: int) -> int:
        """Now, as a request goes out (the first one of the run is remembered)."""
        sent = time.perf_counter_ns()
        if self.first_call is None:
            self.first_call = (sent - t0_ns) / 1e9
        return sent

    @property
    def window(self) -> float:
        """Seconds from the first call sent to the last answer: what throughput is over."""
        if self.first_call is None or not self.done_at:
            return 0.0
        return max(1e-9, max(self.done_at) / 1e9 - self.first_call)


class Budget:
    """Calls left to send (-n) and/or a deadline (--duration); shared by one process's sessions."""

    def __init__(self, calls: int | None, deadline: float | None):
        self.left = calls
        self.deadline = deadline   # trio.current_time() value

    def take(self) -> bool:
        if self.deadline is not None and trio.current_time() >= self.deadline:
            return False
        if self.left is None:
            return True
        if self.left <= 0:
            return False
        self.left -= 1
        return True


class Pacer:
    """Open-loop pacing (--rate): call k is due at start + k / rate, its latency measured from then
    (no coordinated omission)."""

    def __init__(self, rate: float | None):
        self.interval = 1.0 / rate if rate else 0.0
        self.next = None

    async def slot(self) -> float | None:
        if not self.interval:
            return None
        now = trio.current_time()
        if self.next is None:
            self.next = now
        due = self.next
        self.next += self.interval
        if due > now:
            await trio.sleep_until(due)
        return due


@dataclass
class Options:
    check: bool = False
    pace: str = "none"               # "recorded" | "none"
    timeout: float = 30.0            # per answer
    progress: list = field(default_factory=lambda: [0])   # [calls answered], read by the progress bar


def show(msg) -> str:
    try:
        return orjson.dumps(msg).decode()[:400]
    except TypeError:
        return repr(msg)[:400]


def judge(call: Call, live_id: int, tagged: str | None, answer, check: bool, stats: Stats,
          raw: bytes | None = None) -> bool:
    """Count what is wrong with ``answer`` to ``call`` (sent as ``live_id``); True if it is right."""
    if not isinstance(answer, dict) or ("result" in answer) == ("error" in answer):
        stats.mismatches.add("malformed", show(answer))
        return False
    if answer.get("id") != live_id or type(answer.get("id")) is not int:
        stats.mismatches.add("wrong_id", f"sent id {live_id} ({call.label}), got {show(answer)}")
        return False
    expected = call.expected
    if "error" in answer:
        error = answer["error"] if isinstance(answer["error"], dict) else {}
        code = error.get("code")
        if expected is not None and isinstance(expected.get("error"), dict) and expected["error"].get("code") == code:
            return True   # the recording has the same error: the expected answer
        stats.errors.add(f"rpc_{code}", f"{call.label}: {show(answer)}")
        return False
    result = answer["result"]
    if tagged is not None and not _carries(raw, tagged, call, result):
        stats.mismatches.add("not_this_request", f"sent {call.tag_key}={tagged!r} ({call.label}, id {live_id}), "
                                           f"got {show(answer)}")
        return False
    if check and expected is not None:
        if "result" not in expected:
            stats.mismatches.add("check_differs", f"{call.label}: recorded {show(expected)}, got {show(answer)}")
            return False
        want = expected["result"]
        if tagged is not None:
            want = substitute(want, call.msg["params"]["arguments"][call.tag_key], tagged)
        if call.method in HANDSHAKE_METHODS:
            ok = _handshake_agrees(call.method, want, result)
        else:
            ok = normalize(want) == normalize(result)
        if not ok:
            where = first_difference(normalize(want), normalize(result))
            stats.mismatches.add("check_differs", f"{call.label}: {where}")
            return False
    return True


def first_difference(want, got, path: str = "$") -> str:
    """Where two JSON values first differ, and how: what a check_differs example shows."""
    if isinstance(want, dict) and isinstance(got, dict):
        for key in want:
            if key not in got:
                return f"{path}.{key}: recorded {show(want[key])[:150]}, missing in the answer"
            if want[key] != got[key]:
                return first_difference(want[key], got[key], f"{path}.{key}")
        extra = [k for k in got if k not in want]
        return f"{path}: the answer has keys the recording has not: {extra[:5]}"
    if isinstance(want, list) and isinstance(got, list):
        for i, (a, b) in enumerate(zip(want, got)):
            if a != b:
                return first_difference(a, b, f"{path}[{i}]")
        return f"{path}: recorded {len(want)} items, got {len(got)}"
    return f"{path}: recorded {show(want)[:150]}, got {show(got)[:150]}"


def _carries(raw: bytes | None, tagged: str, call: Call, result) -> bool:
    """The answer carries the request's tag: quickly in its bytes (the tag, then the closing quote),
    else anywhere in its parsed result (a server may escape differently)."""
    tag = tagged[len(call.msg["params"]["arguments"][call.tag_key]):] if call.template is None else \
        tagged[len(call.tag_orig):]
    return (raw is not None and (tag.encode() + b'"') in raw) or contains_string(result, tagged)


def _handshake_agrees(method: str, want, got) -> bool:
    if not isinstance(got, dict) or not isinstance(want, dict):
        return False
    if method == "initialize":
        return got.get("protocolVersion") == want.get("protocolVersion")
    return set(want.get("supportedVersions") or ()) <= set(got.get("supportedVersions") or ())



class Answer:
    """What came back for one request: the answer message, and what came with it."""
    __slots__ = ("msg", "notifications", "server_requests", "raw")

    def __init__(self, msg, raw: bytes, notifications: int = 0, server_requests: int = 0):
        self.msg, self.raw, self.notifications, self.server_requests = msg, raw, notifications, server_requests


class Replier:
    """Answers server->client requests with the client's recorded replies, in order per method."""

    def __init__(self, replies: dict):
        self.replies = replies
        self.used: dict = {}

    def reply_for(self, request: dict) -> dict:
        method = request.get("method")
        recorded = self.replies.get(method) or []
        i = self.used.get(method, 0)
        self.used[method] = i + 1
        if recorded:
            reply = dict(recorded[min(i, len(recorded) - 1)])
            reply["id"] = request["id"]
            return reply
        return {"jsonrpc": "2.0", "id": request["id"],
                "error": {"code": -32601, "message": f"load run: no recorded reply to {method}"}}

    async def from_server(self, msg, counts: list, send) -> bool:
        """True if ``msg`` is the server's own message: a notification (counted in ``counts[0]``) or a
        request (``counts[1]``), answered at once through ``send(reply)``."""
        if not isinstance(msg, dict) or "method" not in msg:
            return False
        if "id" in msg:
            counts[1] += 1
            await send(self.reply_for(msg))
        else:
            counts[0] += 1
        return True


class HttpSession:
    """A virtual session over Streamable HTTP: one keep-alive connection (plus one for replies)."""

    def __init__(self, url: Url, script: Script):
        self.url = url
        self.script = script
        self.conn = HttpConn(url)
        self.side = None            # a second connection, for replies sent while a stream is open
        self.session_id = None
        self.legacy = script.era == "legacy"
        self.version = script.protocol_version
        self.replier = Replier(script.replies)
        self.heads: dict = {}

    def headers_for(self, msg: dict, name: str | None) -> list:
        if self.legacy:
            out = [("MCP-Protocol-Version", self.version)]
            if self.session_id:
                out.append(("Mcp-Session-Id", self.session_id))
            return out
        params = msg.get("params") if isinstance(msg.get("params"), dict) else {}
        meta = params.get("_meta") if isinstance(params.get("_meta"), dict) else {}
        out = [("MCP-Protocol-Version", meta.get(META_PROTOCOL_VERSION, self.version))]
        if "method" in msg:
            out.append(("Mcp-Method", msg["method"]))
        if name is not None:
            out.append(("Mcp-Name", encode_header_value(name)))
        return out

    def frame(self, msg: dict, body: bytes, name: str | None = None, key=None, extra: tuple = ()) -> bytes:
        """The whole POST; heads are cached per step (``key``): only the body changes per round."""
        head = self.heads.get(key) if key is not None else None
        if head is None:
            headers = self.headers_for(msg, name)
            if not self.legacy:
                headers += list(extra)
            head = request_head(self.url, "POST", headers)
            if key is not None:
                self.heads[key] = head
        return head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)

    async def start(self, timeout: float) -> Answer | None:
        await self.conn.connect()
        return None

    async def request(self, call: Call, live_id: int, body: bytes, key=None) -> Answer:
        return await self.receive(call, self.frame(call.msg, body, call.name, key, call.param_headers))

    async def receive(self, call: Call, data: bytes | None = None) -> Answer:
        """Send ``data`` and read its answer; without ``data``, the answer to a request already sent (by
        the fast lane). Server requests in an event stream are answered as they arrive."""
        counts, answer = [0, 0], []

        async def on_event(event: bytes) -> None:
            await self._event(event, counts, answer)

        fast = call.method != "initialize"
        resp = await (self.conn.receive(on_event, fast) if data is None else self.conn.exchange(data, on_event, fast))
        if resp.status != 200:
            raise HttpStatus(resp.status, resp.body)
        ctype = resp.headers.get(b"content-type", b"")
        if ctype.startswith(b"text/event-stream"):
            if not answer:   # the stream came whole: its events were not handed over yet
                for event in sse_messages(resp.body):
                    await self._event(event, counts, answer)
            if not answer:
                raise Disconnected(f"{self.url}: event stream ended without an answer")
            msg_out, raw = answer[0]
        else:
            raw = resp.body
            try:
                msg_out = orjson.loads(raw)
            except orjson.JSONDecodeError:
                msg_out = raw.decode("utf-8", "replace")
        if self.legacy and call.method == "initialize":
            self.session_id = resp.header(b"mcp-session-id")
            self.heads.clear()
        return Answer(msg_out, raw, counts[0], counts[1])

    async def cancelled(self, call: Call, live_id: int, body: bytes, cancel: dict) -> None:
        """A request the client cancelled: POST it on a connection of its own, send the recorded
        cancellation (legacy: notifications/cancelled; modern: closing that connection is the
        cancellation), and drop whatever answer may come."""
        conn = HttpConn(self.url)
        try:
            await conn.connect()
            data = self.frame(call.msg, body, call.name, None, call.param_headers)
            await conn.send(data)
            if self.legacy:
                await self.notify(cancel)
        finally:
            conn.close()

    async def _event(self, data: bytes, counts: list, answer: list) -> None:
        if not data.strip():
            return   # the legacy era's priming event (empty data) carries no message
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError:
            answer.append((data.decode("utf-8", "replace"), data))
            return
        if not await self.replier.from_server(msg, counts, self._reply) and not answer:
            answer.append((msg, data))

    async def _reply(self, reply: dict) -> None:
        if self.side is None:
            self.side = HttpConn(self.url)
        await self.notify(reply, self.side)

    async def notify(self, msg: dict, conn: HttpConn | None = None) -> None:
        """POST a message that gets no answer (a notification, a reply to the server); 200 or 202."""
        resp = await (conn or self.conn).exchange(self.frame(msg, orjson.dumps(msg)))
        if resp.status not in (200, 202):
            raise HttpStatus(resp.status, resp.body)

    async def reconnect(self) -> None:
        await self.conn.connect()

    async def close(self) -> None:
        try:
            if self.legacy and self.session_id and self.conn.sock is not None:
                head = request_head(self.url, "DELETE", (("Mcp-Session-Id", self.session_id),
                                                         ("MCP-Protocol-Version", self.version)))
                with trio.move_on_after(5):
                    await self.conn.exchange(head + b"\r\n")
        except (Disconnected, OSError):
            pass
        finally:
            self.conn.close()
            if self.side is not None:
                self.side.close()


class StdioSession:
    """A virtual session over stdio: its own spawned process, newline-delimited JSON."""

    def __init__(self, argv: list, script: Script):
        self.argv = argv
        self.script = script
        self.proc = None
        self.buf = b""
        self.replier = Replier(script.replies)

    async def start(self, timeout: float) -> None:
        self.proc = await trio.lowlevel.open_process(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                     stderr=subprocess.DEVNULL, start_new_session=True)

    async def _write(self, data: bytes) -> None:
        try:
            await self.proc.stdin.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise Disconnected(f"process {self.proc.pid} stdin closed: {exc}") from None

    async def request(self, call: Call, live_id: int, body: bytes, key=None) -> Answer:
        await self._write(body + b"\n")
        want = live_id
        counts = [0, 0]
        while True:
            line = await self._line()
            try:
                got = orjson.loads(line)
            except orjson.JSONDecodeError:
                return Answer(line.decode("utf-8", "replace"), line, *counts)
            if await self.replier.from_server(got, counts, self.notify):
                continue
            if isinstance(got, dict) and got.get("id") != want and type(got.get("id")) is int and \
                    got.get("id") < want and got.get("id") // ID_STRIDE == want // ID_STRIDE:
                continue   # a late answer to an earlier request of ours that timed out
            return Answer(got, line, *counts)

    async def cancelled(self, call: Call, live_id: int, body: bytes, cancel: dict) -> None:
        """Send the request and its recorded cancellation; a late answer is skipped by ``request``."""
        await self._write(body + b"\n" + orjson.dumps(cancel) + b"\n")

    async def _line(self) -> bytes:
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                line, self.buf = self.buf[:nl], self.buf[nl + 1:]
                if line.strip():
                    return line
                continue
            chunk = await self.proc.stdout.receive_some(65536)
            if not chunk:
                raise Disconnected(f"process {self.proc.pid} exited (stdout closed) before the answer")
            self.buf += chunk

    async def notify(self, msg: dict) -> None:
        await self._write(orjson.dumps(msg) + b"\n")

    async def reconnect(self) -> None:
        raise Disconnected("a stdio session cannot reconnect")

    async def close(self) -> None:
        """Close stdin (the spec's way to end), wait a little, then SIGKILL the group."""
        proc = self.proc
        if proc is None:
            return
        with trio.CancelScope(shield=True):
            try:
                await proc.stdin.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            with trio.move_on_after(3):
                await proc.wait()
            if proc.returncode is None:
                if not signal_group(proc.pid):
                    proc.kill()
                await proc.wait()
            signal_group(proc.pid)   # anything it left in its group
            await proc.stdout.aclose()


def tagged_call(call: Call, live_id: int, tag: str | None):
    """(message, body bytes, tagged string) for one live request."""
    msg = dict(call.msg)
    msg["id"] = live_id
    tagged = None
    if tag is not None and call.tag_key is not None:
        params = dict(msg["params"])
        args = dict(params["arguments"])
        tagged = args[call.tag_key] + tag
        args[call.tag_key] = tagged
        params["arguments"] = args
        msg["params"] = params
    return msg, orjson.dumps(msg), tagged


class Watch:
    """A session's timeout without a cancel scope per call: a watchdog task checks, a few times a
    second, how long the current exchange has been going, and cancels the session's scope past
    ``timeout``; the session counts a timeout and carries on with its next step."""

    def __init__(self, timeout: float):
        self.timeout_ns = int(timeout * 1e9)
        self.since = 0             # perf_counter_ns when the current exchange began, 0 when idle
        self.scope = None

    async def run(self) -> None:
        period = min(0.25, self.timeout_ns / 4e9)
        while True:
            await trio.sleep(period)
            since = self.since
            if since and time.perf_counter_ns() - since > self.timeout_ns and self.scope is not None:
                self.since = 0
                self.scope.cancel()


class StartLine:
    """Sessions start their rounds together, once every session of the process has done its
    handshake (or failed it): spawning 64 processes must not count against the first ones' calls."""

    def __init__(self, count: int, budget: Budget, duration: float | None):
        self.left = count
        self.go = trio.Event()
        self.budget, self.duration = budget, duration

    def arrive(self) -> None:
        self.left -= 1
        if self.left <= 0 and not self.go.is_set():
            if self.duration:   # --duration counts from the start line
                self.budget.deadline = trio.current_time() + self.duration
            self.go.set()


async def run_session(index: int, make, script: Script, budget: Budget, pacer: Pacer, opts: Options,
                      stats: Stats, t0_ns: int, lane: FastLane | None = None, line: StartLine | None = None) -> None:
    """One virtual session with its watchdog; never raises (counts instead)."""
    watch = Watch(opts.timeout)
    session = make()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch.run)
            try:
                ready = await _handshake(index, session, script, opts, stats)
                if line is not None:
                    line.arrive()
                    await line.go.wait()
                if ready:
                    stats.sessions += 1
                    await _replay(index, session, script, budget, pacer, opts, stats, t0_ns, watch, lane)
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(10):
                await session.close()


async def _handshake(index, session, script, opts, stats) -> bool:
    base = index * ID_STRIDE
    try:
        with trio.fail_after(opts.timeout):
            await session.start(opts.timeout)
            for seq, step in enumerate(script.handshake, start=1):
                if isinstance(step, Call):
                    body, _ = step.render(base + seq, index, seq)
                    answer = await session.request(step, base + seq, body)
                    if not judge(step, base + seq, None, answer.msg, opts.check, stats):
                        raise ReplayError(f"{step.method} failed: {show(answer.msg)}")
                else:
                    await session.notify(step)
        return True
    except (ReplayError, Disconnected, HttpStatus, OSError, trio.TooSlowError) as exc:
        stats.session_failures += 1
        stats.errors.add("handshake" if isinstance(exc, ReplayError) else _kind(exc),
                    f"session {index} handshake: {exc or type(exc).__name__}")
        return False


def _kind(exc) -> str:
    """What a failed exchange is counted as."""
    return "timeout" if isinstance(exc, trio.TooSlowError) else \
        f"http_{exc.status}" if isinstance(exc, HttpStatus) else "disconnect"


class _Place:
    """Where a session is in its replay, kept across a timeout's cancellation."""
    __slots__ = ("pos", "seq", "round_start", "label")

    def __init__(self, seq: int):
        self.pos, self.seq, self.round_start, self.label = 0, seq, None, "?"

    def step(self, body: list):
        """The step at ``pos``; past the body's end (or at the start) a new round begins."""
        if self.pos >= len(body) or self.round_start is None:
            self.pos = 0
            self.round_start = trio.current_time()
        return body[self.pos]

    def next_call(self, step: Call, index: int, stats: Stats) -> tuple:
        """Number the next live request of session ``index`` and count it: (live id, body, tagged string)."""
        self.seq = seq = self.seq + 1
        self.label = step.label
        live_id = index * ID_STRIDE + seq
        data, tagged = step.render(live_id, index, seq)
        stats.calls += 1
        return live_id, data, tagged


async def _replay(index, session, script, budget, pacer, opts, stats, t0_ns, watch, lane) -> None:
    """Rounds of the body until the budget is spent; a timed-out step is counted and skipped."""
    place = _Place(len(script.handshake) + 1)
    while True:
        finished = False
        with trio.CancelScope() as scope:
            watch.scope = scope
            finished = await _steps(index, session, script, budget, pacer, opts, stats, t0_ns, watch, place, lane)
        if not scope.cancelled_caught:
            return
        watch.since = 0
        opts.progress[0] += 1
        place.pos += 1
        if finished or not await _count_failure(session, trio.TooSlowError(), place.label, stats):
            return


def _record(step: Call, live_id: int, tagged, answer: Answer, sent: int, now: int, stats: Stats, check: bool,
            t0_ns: int) -> None:
    """Check one answer and count it (latency only for right answers)."""
    if answer.notifications:
        stats.notifications += answer.notifications
    if answer.server_requests:
        stats.server_requests += answer.server_requests
    if judge(step, live_id, tagged, answer.msg, check, stats, answer.raw):
        stats.answered += 1
        took = now - sent
        values = stats.latency.get(step.label)
        if values is None:
            values = stats.latency[step.label] = array("q")
        values.append(took)
        stats.done_at.append(now - t0_ns)
        stats.done_latency.append(took)


class InFlight:
    """A request the fast lane sent but hands back to its session (see ``FastLane``)."""
    __slots__ = ("step", "live_id", "tagged", "sent", "key", "tail", "error")

    def __init__(self, step, live_id, tagged, sent, key, tail=b"", error=None):
        self.step, self.live_id, self.tagged, self.sent, self.key = step, live_id, tagged, sent, key
        self.tail, self.error = tail, error


_DONE, _SLOW = "done", "slow"


class _LaneSeat:
    """One session's state while the fast lane drives it."""
    __slots__ = ("session", "index", "place", "watch", "task", "inflight", "result")

    def __init__(self, session, index, place, watch):
        self.session, self.index, self.place, self.watch = session, index, place, watch
        self.task = self.inflight = self.result = None


class FastLane:
    """Drives HTTP sessions' plain request/answer steps (200, Content-Length, JSON) from one epoll: it
    reads, checks and sends the next request itself, no task switch per answer; anything else goes back
    to the session's coroutine. Unpaced runs only; why: docs/notes/load-design.md."""

    def __init__(self, script: Script, budget: Budget, stats: Stats, opts: Options, t0_ns: int):
        self.ep = select.epoll()
        self.seats: dict = {}
        self.script, self.budget, self.stats, self.opts, self.t0_ns = script, budget, stats, opts, t0_ns
        self.body = script.body

    async def run(self) -> None:
        fd = self.ep.fileno()
        poll, readable = self.ep.poll, self._readable
        try:
            while True:
                await trio.lowlevel.wait_readable(fd)
                for _ in range(8):   # answers often land while we handle the last batch: no trio pass for them
                    events = poll(0)
                    if not events:
                        break
                    for sock_fd, _ in events:
                        readable(sock_fd)
        finally:
            self.ep.close()

    async def drive(self, session, index, place, watch):
        """Run the session's steps from ``place`` until something needs its coroutine; returns
        _DONE (budget spent), _SLOW (the step at place.pos is not a plain request) or an InFlight."""
        seat = _LaneSeat(session, index, place, watch)
        if not self._send_next(seat):
            return seat.result
        seat.task = trio.lowlevel.current_task()
        fd = session.conn.sock.fileno()
        self.ep.register(fd, select.EPOLLIN)
        self.seats[fd] = seat

        def abort(_raise_cancel):
            self._detach(fd)
            session.conn.close()   # a request is in flight: the connection is out of step
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)

    def _detach(self, fd: int) -> None:
        self.seats.pop(fd, None)
        try:
            self.ep.unregister(fd)
        except (OSError, ValueError):
            pass

    def _hand_back(self, fd: int, seat: _LaneSeat, result) -> None:
        self._detach(fd)
        trio.lowlevel.reschedule(seat.task, outcome.Value(result))

    def _send_next(self, seat: _LaneSeat) -> bool:
        """Send the step at place.pos if it is a plain request within budget; else set seat.result."""
        place = seat.place
        step = place.step(self.body)
        if type(step) is not Call or step.cancel is not None:
            seat.result = _SLOW
            return False
        if not self.budget.take():
            seat.result = _DONE
            return False
        live_id, data, tagged = place.next_call(step, seat.index, self.stats)
        session = seat.session
        frame = session.frame(step.msg, data, step.name, place.pos, step.param_headers)
        seat.watch.since = sent = self.stats.sent_at(self.t0_ns)
        conn = session.conn
        try:
            n = conn.sock.send(frame)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            conn.close()
            seat.result = InFlight(step, live_id, tagged, sent, place.pos, error=Disconnected(f"{conn.url}: {exc}"))
            return False
        seat.inflight = inflight = InFlight(step, live_id, tagged, sent, place.pos)
        if n < len(frame):
            inflight.tail = frame[n:]
            seat.result = inflight
            return False
        return True

    def _readable(self, fd: int) -> None:
        seat = self.seats.get(fd)
        if seat is None:
            return
        conn = seat.session.conn
        try:
            chunk = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            chunk, error = b"", exc
        else:
            error = None
        inflight = seat.inflight
        if not chunk:
            self._detach(fd)
            conn.close()
            inflight.error = Disconnected(f"{conn.url}: {error or 'connection closed before the answer'}")
            trio.lowlevel.reschedule(seat.task, outcome.Value(inflight))
            return
        buf = conn.buf + chunk if conn.buf else chunk
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            conn.buf = buf
            return
        # the plain answer: 200, Content-Length, JSON, kept alive; anything else goes the full way
        length = _CONTENT_LENGTH.search(buf, 0, end + 2)
        if (length is None or not buf.startswith(b"HTTP/1.1 200 ") or b"application/json" not in buf[:end]
                or _NEEDS_FULL_PARSE.search(buf, 0, end + 2)):
            conn.buf = buf
            self._hand_back(fd, seat, inflight)   # the session reads it with the full parser
            return
        stop = end + 4 + int(length.group(1))
        if len(buf) < stop:
            conn.buf = buf
            return
        raw = buf[end + 4:stop]
        conn.buf = buf[stop:]
        now = time.perf_counter_ns()
        seat.watch.since = 0
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            msg = raw.decode("utf-8", "replace")
        _record(inflight.step, inflight.live_id, inflight.tagged, Answer(msg, raw), inflight.sent, now,
                self.stats, self.opts.check, self.t0_ns)
        self.opts.progress[0] += 1
        seat.place.pos += 1
        if not self._send_next(seat):
            self._hand_back(fd, seat, seat.result)


async def _steps(index, session, script, budget, pacer, opts, stats, t0_ns, watch, place, lane=None) -> bool:
    """The hot loop: one step after another from ``place``; returns when the budget is spent."""
    clock = time.perf_counter_ns
    recorded = opts.pace == "recorded"
    paced = bool(pacer.interval)
    progress = opts.progress
    body = script.body
    body_t0 = next(step.t for step in body if isinstance(step, Call))
    check = opts.check
    while True:
        step = place.step(body)
        if type(step) is not Call:
            if budget.deadline is not None and trio.current_time() >= budget.deadline:
                return True
            place.label = step.get("method", "?")
            watch.since = clock()
            try:
                await session.notify(step)
            except (Disconnected, HttpStatus, OSError) as exc:
                if not await _count_failure(session, exc, place.label, stats):
                    return True
            watch.since = 0
            place.pos += 1
            continue
        if step.cancel is not None:
            if not budget.take():
                return True
            live_id, data, _ = place.next_call(step, index, stats)
            cancel = dict(step.cancel)
            cancel["params"] = dict(cancel.get("params") or {}, requestId=live_id)
            watch.since = clock()
            try:
                await session.cancelled(step, live_id, data, cancel)
                stats.cancelled += 1
            except (Disconnected, HttpStatus, OSError) as exc:
                if not await _count_failure(session, exc, step.label, stats):
                    return True
            watch.since = 0
            progress[0] += 1
            place.pos += 1
            continue
        try:
            if lane is not None and getattr(session, "conn", None) is not None and session.conn.sock is not None:
                handed = await lane.drive(session, index, place, watch)
                if handed is _DONE:
                    return True
                if handed is _SLOW:
                    continue
                step, live_id, tagged, sent = handed.step, handed.live_id, handed.tagged, handed.sent
                if handed.error is not None:
                    raise handed.error
                if handed.tail:
                    await session.conn.send(handed.tail)
                answer = await session.receive(step)
            else:
                if recorded:
                    await trio.sleep_until(place.round_start + max(0.0, step.t - body_t0))
                if not budget.take():
                    return True
                due = await pacer.slot() if paced else None
                live_id, data, tagged = place.next_call(step, index, stats)
                sent = stats.sent_at(t0_ns)
                if due is not None:   # charge the wait for a late slot to the latency
                    sent -= int(max(0.0, trio.current_time() - due) * 1e9)
                watch.since = sent or 1
                answer = await session.request(step, live_id, data, place.pos)
        except (Disconnected, HttpStatus, OSError) as exc:
            watch.since = 0
            progress[0] += 1
            place.pos += 1
            if not await _count_failure(session, exc, step.label, stats):
                return True
            continue
        now = clock()
        watch.since = 0
        progress[0] += 1
        place.pos += 1
        _record(step, live_id, tagged, answer, sent, now, stats, check, t0_ns)


async def _count_failure(session, exc, label: str, stats: Stats) -> bool:
    """Count a failed exchange by kind; True if the session can go on (after a reconnect)."""
    kind = _kind(exc)
    stats.errors.add(kind, f"{label}: {'no answer in time' if kind == 'timeout' else exc or type(exc).__name__}")
    if isinstance(exc, HttpStatus):
        return True   # the connection is fine
    try:
        with trio.fail_after(RECONNECT_TIMEOUT):
            await session.reconnect()
        return True
    except (Disconnected, OSError, trio.TooSlowError):
        return False


async def run_sessions(target, script: Script, first_session: int, count: int, calls: int | None,
                       duration: float | None, rate: float | None, opts: Options) -> Stats:
    """Run ``count`` sessions (numbered from ``first_session``) in this process; their Stats."""
    stats = Stats()
    stats.start = time.time()
    t0 = time.perf_counter_ns()
    budget, pacer = Budget(calls, None), Pacer(rate)
    make = partial(HttpSession, target.url, script) if target.kind == "http" else \
        partial(StdioSession, target.argv, script)
    lane = FastLane(script, budget, stats, opts, t0) if (
        target.kind == "http" and not rate and opts.pace == "none") else None
    async with trio.open_nursery() as outer:
        if lane is not None:
            outer.start_soon(lane.run)
        line = StartLine(count, budget, duration)
        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(run_session, first_session + i, make, script, budget, pacer, opts, stats, t0,
                                   lane, line)
        outer.cancel_scope.cancel()
    stats.elapsed = (time.perf_counter_ns() - t0) / 1e9
    return stats
