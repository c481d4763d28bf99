"""A fixture as a replay script, and the rules every answer is judged by (``load run``, ``load bench``).

A fixture becomes a ``Script``: the handshake, then the body (the client's requests and notifications in
recorded order, each request with its recorded answer). A session replays the body in rounds, its ids
rewritten (``ID_STRIDE``) and its echo-like arguments tagged, so that ``judge`` can tell an answer to
another request even under the right id. docs/load.md says how and why; ``sessions`` and ``engine``
run the script.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import orjson

from wire_gateway.dump.fixture import read_fixture
from wire_gateway.wire.headers import NAME_SOURCES, HeaderError, param_headers_for

ID_STRIDE = 10 ** 9
_ID_SENTINEL = 918273645506172839
_TAG_SENTINEL = "~~load-run-tag~~"
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
    id_first: bool = True            # the template's id comes before the tag
    tag_orig: str = ""               # the tagged argument's recorded value
    param_headers: tuple = ()        # Mcp-Param-* (modern HTTP), from the recorded tools/list's x-mcp-header
    cancel: dict | None = None       # the client cancelled it: its recorded notifications/cancelled
    label: str = ""                  # what latencies are reported under: the method, and a tool's name

    def __post_init__(self) -> None:
        self.label = f"{self.method} {self.name}" if self.method == "tools/call" and self.name else self.method

    def prepare(self) -> None:
        """Serialize once with sentinels, keep a bytes template: ``render`` is then one ``%``."""
        self.tag_orig = self.msg["params"]["arguments"][self.tag_key] if self.tag_key else ""
        body, _ = self.tagged(_ID_SENTINEL, _TAG_SENTINEL)
        id_bytes, tag_bytes = b"%d" % _ID_SENTINEL, _TAG_SENTINEL.encode()
        if body.count(id_bytes) != 1 or body.count(tag_bytes) != (1 if self.tag_key else 0):
            return   # a sentinel collides with the data: render the slow way
        self.id_first = not self.tag_key or body.index(id_bytes) < body.index(tag_bytes)
        self.template = body.replace(b"%", b"%%").replace(id_bytes, b"%d").replace(tag_bytes, b"_v%d_%d")

    def render(self, live_id: int, index: int, seq: int) -> tuple[bytes, str | None]:
        """(body bytes, tagged string or None) for one live request."""
        if self.template is None:
            return self.tagged(live_id, "_v%d_%d" % (index, seq))
        if not self.tag_key:
            return self.template % live_id, None
        tagged = "%s_v%d_%d" % (self.tag_orig, index, seq)
        if self.id_first:
            return self.template % (live_id, index, seq), tagged
        return self.template % (index, seq, live_id), tagged

    def tagged(self, live_id: int, tag: str) -> tuple[bytes, str | None]:
        """(body bytes, tagged string or None): the message under ``live_id``, ``tag`` appended to the
        echo-like argument."""
        msg = dict(self.msg, id=live_id)
        if self.tag_key is None:
            return orjson.dumps(msg), None
        args = dict(msg["params"]["arguments"])
        tagged = args[self.tag_key] = args[self.tag_key] + tag
        msg["params"] = dict(msg["params"], arguments=args)
        return orjson.dumps(msg), tagged


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
    if isinstance(obj, dict | list):
        return any(contains_string(v, text) for v in (obj.values() if isinstance(obj, dict) else obj))
    return False


def substitute(obj, old: str, new: str):
    """``obj`` with every string equal to ``old`` replaced by ``new``."""
    if isinstance(obj, dict):
        return {k: substitute(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [substitute(v, old, new) for v in obj]
    return new if obj == old and isinstance(obj, str) else obj


def normalize(obj):
    """``obj`` without VOLATILE_KEYS, at any depth: what --check compares."""
    if isinstance(obj, dict):
        return {k: normalize(v) for k, v in obj.items() if k not in VOLATILE_KEYS}
    if isinstance(obj, list):
        return [normalize(v) for v in obj]
    return obj


def load_script(path) -> Script:
    try:
        header, entries = read_fixture(path)
    except (OSError, ValueError) as exc:
        raise ReplayError(f"cannot read fixture {path}: {exc}") from None
    return build_script(header, entries)


def build_script(header, entries) -> Script:
    """Turn fixture entries into a Script; refuses what cannot be replayed."""
    calls: dict = {}      # recorded request id -> Call
    asked: dict = {}      # recorded server request id -> method
    replies: dict = {}
    tools: dict = {}      # a recorded tools/list's tools by name: which arguments go in headers
    steps: list = []
    for t, direction, msg in entries:
        method, key = msg.get("method"), json.dumps(msg["id"], sort_keys=True) if "id" in msg else None
        if direction == "send":
            if method is not None and key is not None:
                params = msg.get("params") if isinstance(msg.get("params"), dict) else {}
                name = params.get(NAME_SOURCES.get(method))
                calls[key] = Call(t, msg, method, name=name if isinstance(name, str) else None)
                steps.append(calls[key])
            elif method is not None:
                steps.append(msg)
            elif key in asked:   # the client's reply to a server request
                replies.setdefault(asked[key], []).append(msg)
        elif method is not None and key is not None:
            asked[key] = method
        elif method is None and key in calls and calls[key].expected is None:
            calls[key].expected = msg
        result = msg.get("result") if direction == "recv" else None
        if isinstance(result, dict) and isinstance(result.get("tools"), list):
            for tool in result["tools"]:
                if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                    tools.setdefault(tool["name"], tool)
    for call in steps:
        if not isinstance(call, Call) or call.method != "tools/call":
            continue
        args = (call.msg.get("params") or {}).get("arguments")
        if isinstance(args, dict) and call.expected and "result" in call.expected:
            call.tag_key = next((key for key, value in args.items() if isinstance(value, str) and value
                                 and contains_string(call.expected["result"], value)), None)
        tool = tools.get(call.name)
        if tool is not None:
            try:
                call.param_headers = tuple(param_headers_for(tool, args).items())
            except (HeaderError, AttributeError):
                pass
            schema = tool.get("inputSchema")
            props = schema.get("properties") if isinstance(schema, dict) else None
            prop = props.get(call.tag_key) if isinstance(props, dict) and call.tag_key else None
            if isinstance(prop, dict) and "x-mcp-header" in prop:
                call.tag_key = None   # a mirrored argument must stay as recorded (its header is cached)
    for step in list(steps):
        if isinstance(step, dict) and step.get("method") == "notifications/cancelled":
            target = calls.get(json.dumps((step.get("params") or {}).get("requestId"), sort_keys=True))
            if target is not None and target.expected is None and target in steps:
                target.cancel = step   # sent right after its request, with the live id
                steps.remove(step)
    handshake: list = []
    if header.era == "legacy":
        if not steps or not isinstance(steps[0], Call) or steps[0].method != "initialize":
            raise ReplayError("a legacy fixture must begin with initialize")
        handshake.append(steps.pop(0))
        initialized = steps and isinstance(steps[0], dict) and steps[0].get("method") == "notifications/initialized"
        handshake.append(steps.pop(0) if initialized else {"jsonrpc": "2.0", "method": "notifications/initialized"})
    for step in steps + handshake:
        if isinstance(step, Call):
            step.prepare()
    if not any(isinstance(step, Call) for step in steps):
        raise ReplayError("the fixture has no request to replay after its handshake")
    return Script(header.era, header.protocolVersion, handshake, steps, replies, header.name)


def show(msg) -> str:
    try:
        return orjson.dumps(msg).decode()[:400]
    except TypeError:
        return repr(msg)[:400]


def judge(call: Call, live_id: int, tagged: str | None, answer, check: bool, stats, raw: bytes | None = None) -> bool:
    """Count what is wrong with ``answer`` to ``call`` (sent as ``live_id``) in ``stats.mismatches`` or
    ``stats.errors``; True if it is right."""
    errors, mismatches = stats.errors, stats.mismatches
    if not isinstance(answer, dict) or ("result" in answer) == ("error" in answer):
        mismatches.add("malformed", show(answer))
        return False
    if answer.get("id") != live_id or type(answer.get("id")) is not int:
        mismatches.add("wrong_id", f"sent id {live_id} ({call.label}), got {show(answer)}")
        return False
    expected = call.expected
    if "error" in answer:
        code = answer["error"].get("code") if isinstance(answer["error"], dict) else None
        if expected is not None and isinstance(expected.get("error"), dict) and expected["error"].get("code") == code:
            return True   # the recording has the same error: the expected answer
        errors.add(f"rpc_{code}", f"{call.label}: {show(answer)}")
        return False
    result = answer["result"]
    if tagged is not None:
        # Fast: the tag, then the closing quote, in the answer's bytes; else anywhere in the parsed
        # result (a server may escape differently).
        tag = tagged[len(call.tag_orig):]
        if not ((raw is not None and (tag.encode() + b'"') in raw) or contains_string(result, tagged)):
            mismatches.add("not_this_request", f"sent {call.tag_key}={tagged!r} ({call.label}, id {live_id}), "
                                               f"got {show(answer)}")
            return False
    if check and expected is not None:
        if "result" not in expected:
            mismatches.add("check_differs", f"{call.label}: recorded {show(expected)}, got {show(answer)}")
            return False
        want = expected["result"]
        if tagged is not None:
            want = substitute(want, call.tag_orig, tagged)
        if call.method in HANDSHAKE_METHODS:
            ok = isinstance(want, dict) and isinstance(result, dict) and (
                result.get("protocolVersion") == want.get("protocolVersion") if call.method == "initialize" else
                set(want.get("supportedVersions") or ()) <= set(result.get("supportedVersions") or ()))
        else:
            ok = normalize(want) == normalize(result)
        if not ok:
            mismatches.add("check_differs", f"{call.label}: {first_difference(normalize(want), normalize(result))}")
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
        return f"{path}: the answer has keys the recording has not: {[k for k in got if k not in want][:5]}"
    if isinstance(want, list) and isinstance(got, list):
        for i, (a, b) in enumerate(zip(want, got)):
            if a != b:
                return first_difference(a, b, f"{path}[{i}]")
        return f"{path}: recorded {len(want)} items, got {len(got)}"
    return f"{path}: recorded {show(want)[:150]}, got {show(got)[:150]}"
