"""Shared plumbing for the raw stdio MCP fixture servers in this directory.

Stdlib only, no MCP SDK: the fixtures speak the wire format directly, one
JSON-RPC 2.0 message per line on stdin/stdout, and exit 0 when stdin closes.

Every fixture is a dual-era server:

* Modern (2026-07-28): a request whose ``params._meta`` carries
  ``io.modelcontextprotocol/protocolVersion`` is answered statelessly and its
  result gets ``"resultType": "complete"``. A version other than 2026-07-28
  gets UnsupportedProtocolVersionError (-32022).
* Legacy (2024-11-05 .. 2025-11-25): ``initialize`` handshake. Until it has
  been answered, every request except ``initialize``, ``ping`` and
  ``server/discover`` gets -32600 "server not initialized: send initialize
  first". This is strict on purpose: gateway restart tests rely on it.

Common flags: ``--log PATH`` appends one JSON line per received message
(``{"method", "id"}`` plus ``"tool"`` for tools/call and ``"traceparent"`` when
``params._meta`` has one, ``{"cancelled": id}`` when an in-flight request is cancelled);
``--name NAME`` sets serverInfo.name.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from typing import Any

VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"
MODERN_VERSIONS = ["2026-07-28"]
LEGACY_VERSIONS = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"]
SUPPORTED_VERSIONS = MODERN_VERSIONS + LEGACY_VERSIONS
CACHEABLE = frozenset({"prompts/list", "resources/list", "resources/read", "resources/templates/list",
                       "server/discover", "tools/list"})
CAPABILITIES = {"tools": {"listChanged": True}, "resources": {}, "prompts": {}, "logging": {}}

PARSE_ERROR = -32700
INVALID_REQUEST = -32600  # also the "not initialized" code
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
RESOURCE_NOT_FOUND = -32002
UNSUPPORTED_VERSION = -32022
NOT_INITIALIZED = "server not initialized: send initialize first"
PRE_INIT_METHODS = frozenset({"initialize", "ping", "server/discover"})

SUBSCRIPTION_KEY = "io.modelcontextprotocol/subscriptionId"
DEFERRED = object()  # returned by a method handler that replies later (or never)
_encode = json.JSONEncoder(separators=(",", ":")).encode  # ASCII-only output
_decode = json.JSONDecoder().decode


class RpcError(Exception):
    """Raised by a handler: becomes a JSON-RPC error response."""

    def __init__(self, code, message, data=None):
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


class ToolError(Exception):
    """Raised by a tool handler: becomes a tool result with isError true."""


def arg_parser(doc, default_name=None):
    """An argparse parser with the common flags (--name only if default_name)."""
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument("--log", metavar="PATH", help="append one JSON line per received message")
    parser.add_argument("--ttl-ms", type=int, default=0, metavar="MS",
                        help="ttlMs on modern list and read results (default 0: immediately stale)")
    if default_name is not None:
        parser.add_argument("--name", default=default_name, help="serverInfo name")
    return parser


def text_result(text, is_error=False):
    return {"content": [{"type": "text", "text": text}], "isError": is_error}


def need(args, key, types):
    """Fetch a required tool argument of the given type(s), else -32602."""
    value = args.get(key)
    if not isinstance(value, types) or isinstance(value, bool):
        raise RpcError(INVALID_PARAMS, f"invalid arguments: {key!r} is missing or has the wrong type")
    return value


class Request:
    """One incoming request; handlers get it as their first argument."""

    __slots__ = ("server", "id", "method", "params", "modern", "cancelled")

    def __init__(self, server, rid, method, params, modern):
        self.server, self.id, self.method = server, rid, method
        self.params, self.modern = params, modern
        self.cancelled = None  # a threading.Event for threaded tools

    @property
    def meta(self):
        meta = self.params.get("_meta")
        return meta if isinstance(meta, dict) else {}

    def reply(self, result):
        if self.modern:
            result = {**result, "resultType": "complete"}
            if self.method in CACHEABLE:   # 2026-07-28 requires these on cacheable results (the SDK checks)
                result = {"ttlMs": self.server.ttl_ms, "cacheScope": "private", **result}
        self.server.send({"jsonrpc": "2.0", "id": self.id, "result": result})

    def fail(self, code, message, data=None):
        self.server.send_error(self.id, code, message, data)


class Tool:
    __slots__ = ("name", "description", "schema", "handler", "threaded")

    def __init__(self, name, description, schema, handler, threaded):
        self.name, self.description, self.schema = name, description, schema
        self.handler, self.threaded = handler, threaded


class Server:
    def __init__(self, name, log=None, version="1.0.0", ttl_ms=0):
        self.name, self.version = name, version
        self.ttl_ms = ttl_ms   # the cache hint on modern cacheable results
        self.tools: dict[str, Tool] = {}
        self.initialized = False
        self.log_file = open(log, "a", encoding="utf-8") if log else None   # noqa: SIM115 - for the process's life
        self._out = sys.stdout.buffer
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._inflight = {}  # request id -> Request, for threaded (cancellable) tools
        self._pending = {}  # our own request id -> [Event, response message]
        self._subscriptions = {}  # subscriptions/listen request id -> its notification filter
        self._next_id = 0
        self.methods = {
            "initialize": self.on_initialize,
            "server/discover": self.on_discover,
            "ping": lambda req: {},
            "logging/setLevel": lambda req: {},
            "tools/list": lambda req: {"tools": [
                {"name": t.name, "description": t.description, "inputSchema": t.schema}
                for t in self.tools.values()]},
            "tools/call": self.on_tools_call,
            "resources/list": lambda req: {"resources": [{
                "uri": "echo://info", "name": "info", "mimeType": "text/plain",
                "description": "Which fixture server this is."}]},
            "resources/templates/list": lambda req: {"resourceTemplates": []},
            "resources/read": self.on_resources_read,
            "prompts/list": lambda req: {"prompts": [{
                "name": "greet", "description": "Greet someone by name.",
                "arguments": [{"name": "name", "description": "Who to greet", "required": True}]}]},
            "prompts/get": self.on_prompts_get,
            "subscriptions/listen": self.on_listen,
        }

    # ---- registration -------------------------------------------------
    def tool(self, name, description, props=None, required=None, threaded=False):
        """Decorator: register handler(req, args) -> str | result dict.

        props maps argument name -> JSON type; all are required unless
        `required` says otherwise. Threaded tools run in their own thread and
        can be cancelled (req.cancelled is set; their reply is then dropped).
        """
        props = props or {}
        schema = {"type": "object", "properties": {k: {"type": t} for k, t in props.items()}}
        required = list(props) if required is None else required
        if required:
            schema["required"] = required

        def register(handler):
            self.tools[name] = Tool(name, description, schema, handler, threaded)
            return handler
        return register

    # ---- output ---------------------------------------------------------
    def write(self, data):
        with self._write_lock:
            try:
                self._out.write(data)
                self._out.flush()
            except (BrokenPipeError, ValueError):  # the client went away
                os._exit(0)

    def send(self, msg):
        self.write(_encode(msg).encode() + b"\n")

    def send_error(self, rid, code, message, data=None):
        error = {"code": code, "message": message}
        if data is not None:
            error["data"] = data
        self.send({"jsonrpc": "2.0", "id": rid, "error": error})

    def notify(self, method, params):
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def request(self, method, params, timeout=30.0, rid=None):
        """Send a server-to-client request and block until its response
        (call from a threaded tool only). Returns the response message.
        `rid` names the request (its JSON-RPC id) when no open one has that name."""
        slot: list[Any] = [threading.Event(), None]    # the event, then the response
        with self._state_lock:
            self._next_id += 1
            if rid is None or rid in self._pending:
                rid = f"srv-{self._next_id}"
            self._pending[rid] = slot
        self.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        if not slot[0].wait(timeout):
            with self._state_lock:
                self._pending.pop(rid, None)
            raise ToolError(f"no response to {method} within {timeout}s")
        return slot[1]

    def log(self, entry):
        if self.log_file is not None:
            self.log_file.write(json.dumps(entry) + "\n")
            self.log_file.flush()

    # ---- input ----------------------------------------------------------
    def run(self):
        for line in sys.stdin.buffer:
            if line.strip():
                self.handle_line(line)
        raise SystemExit(0)

    def handle_line(self, line):
        try:
            msg = _decode(line.decode())
        except ValueError:  # includes bad UTF-8
            self.log({"parse_error": line[:200].decode("utf-8", "replace")})
            return self.send_error(None, PARSE_ERROR, "parse error")
        if not isinstance(msg, dict):
            return self.send_error(None, INVALID_REQUEST, "invalid request: expected one JSON object per line")
        self.received(msg)
        method = msg.get("method")
        params = msg.get("params")
        if method is None:
            if "id" in msg:
                self.on_response(msg)
        elif "id" not in msg:
            self.on_notification(method, params if isinstance(params, dict) else {})
        else:
            self.on_request(msg["id"], method, {} if params is None else params)

    def received(self, msg):
        """Called for every parsed message; subclasses hook in here."""
        if self.log_file is not None:
            entry = {"method": msg.get("method"), "id": msg.get("id")}
            params = msg.get("params")
            if entry["method"] == "tools/call":
                entry["tool"] = params.get("name") if isinstance(params, dict) else None
            meta = params.get("_meta") if isinstance(params, dict) else None
            if isinstance(meta, dict) and "traceparent" in meta:   # W3C trace context that came along
                entry["traceparent"] = meta["traceparent"]
            self.log(entry)

    def on_response(self, msg):
        with self._state_lock:
            slot = self._pending.pop(msg["id"], None) if isinstance(msg["id"], (str, int)) else None
        if slot is not None:
            slot[1] = msg
            slot[0].set()

    def on_notification(self, method, params):
        if method == "notifications/cancelled":
            rid = params.get("requestId")
            with self._state_lock:
                ended = isinstance(rid, (str, int)) and self._subscriptions.pop(rid, None) is not None
                if ended:   # a subscription ends without a response
                    self.log({"cancelled": rid})
                    return
                req = self._inflight.get(rid) if isinstance(rid, (str, int)) else None
                if req is None:
                    return
                req.cancelled.set()
            self.log({"cancelled": rid})

    def on_request(self, rid, method, params):
        if not isinstance(params, dict):
            return self.send_error(rid, INVALID_PARAMS, "invalid params: expected an object")
        meta = params.get("_meta")
        version = meta.get(VERSION_KEY) if isinstance(meta, dict) else None
        modern = version is not None and method != "initialize"
        if modern:
            if version not in MODERN_VERSIONS:
                return self.send_error(rid, UNSUPPORTED_VERSION, "Unsupported protocol version",
                                       {"supported": SUPPORTED_VERSIONS, "requested": version})
        elif not self.initialized and method not in PRE_INIT_METHODS:
            return self.send_error(rid, INVALID_REQUEST, NOT_INITIALIZED)
        handler = self.methods.get(method)
        if handler is None:
            return self.send_error(rid, METHOD_NOT_FOUND, f"method not found: {method}")
        req = Request(self, rid, method, params, modern)
        try:
            result = handler(req)
        except RpcError as e:
            return req.fail(e.code, e.message, e.data)
        if result is not DEFERRED:
            req.reply(result)

    # ---- method handlers ------------------------------------------------
    def on_initialize(self, req):
        requested = req.params.get("protocolVersion")
        self.initialized = True
        return {
            "protocolVersion": requested if requested in LEGACY_VERSIONS else LEGACY_VERSIONS[0],
            "capabilities": CAPABILITIES,
            "serverInfo": {"name": self.name, "version": self.version},
        }

    def on_listen(self, req):
        """Modern subscriptions/listen: acknowledge (tools list changes only), then stay open."""
        if not req.modern:
            raise RpcError(METHOD_NOT_FOUND, "subscriptions/listen is a modern-era method")
        wanted = req.params.get("notifications") or {}
        agreed = {"toolsListChanged": True} if wanted.get("toolsListChanged") else {}
        with self._state_lock:
            self._subscriptions[req.id] = agreed
        self.notify("notifications/subscriptions/acknowledged",
                    {"_meta": {SUBSCRIPTION_KEY: req.id}, "notifications": agreed})
        return DEFERRED

    def tools_changed(self):
        """Tell every subscription that asked for it that the tool list changed."""
        with self._state_lock:
            ids = [rid for rid, agreed in self._subscriptions.items() if agreed.get("toolsListChanged")]
        for rid in ids:
            self.notify("notifications/tools/list_changed", {"_meta": {SUBSCRIPTION_KEY: rid}})
        return len(ids)

    def on_discover(self, req):
        return {
            "resultType": "complete",
            "supportedVersions": SUPPORTED_VERSIONS,
            "capabilities": CAPABILITIES,
            "_meta": {SERVER_INFO_KEY: {"name": self.name, "version": self.version}},
        }

    def on_resources_read(self, req):
        uri = req.params.get("uri")
        if isinstance(uri, str) and uri.startswith("echo://text/"):
            # Unlisted, and the same on every run: what recorded sessions read (echo://info has a pid).
            return {"contents": [{"uri": uri, "mimeType": "text/plain", "text": uri[len("echo://text/"):]}]}
        if uri != "echo://info":
            raise RpcError(RESOURCE_NOT_FOUND, f"resource not found: {uri}")
        text = f"{self.name} fixture server, pid {os.getpid()}"
        return {"contents": [{"uri": uri, "mimeType": "text/plain", "text": text}]}

    def on_prompts_get(self, req):
        if req.params.get("name") != "greet":
            raise RpcError(INVALID_PARAMS, f"unknown prompt: {req.params.get('name')}")
        who = need(req.params.get("arguments") or {}, "name", str)
        return {"description": "Greet someone by name.",
                "messages": [{"role": "user", "content": {"type": "text", "text": f"Hello, {who}!"}}]}

    def on_tools_call(self, req):
        name = req.params.get("name")
        tool = self.tools.get(name) if isinstance(name, str) else None
        if tool is None:
            raise RpcError(INVALID_PARAMS, f"unknown tool: {name}")
        args = req.params.get("arguments") or {}
        if not isinstance(args, dict):
            raise RpcError(INVALID_PARAMS, "invalid arguments: expected an object")
        if not tool.threaded:
            return self._call(tool, req, args)
        req.cancelled = threading.Event()
        with self._state_lock:
            self._inflight[req.id] = req
        threading.Thread(target=self._call_threaded, args=(tool, req, args), daemon=True).start()
        return DEFERRED

    def _call(self, tool, req, args):
        try:
            out = tool.handler(req, args)
        except ToolError as e:
            return text_result(str(e), is_error=True)
        except RpcError:
            raise
        except Exception as e:  # a fixture bug or bad arguments: answer, don't die
            raise RpcError(INTERNAL_ERROR, f"internal error in tool {tool.name}: {e!r}") from None
        return text_result(out) if isinstance(out, str) else out

    def _call_threaded(self, tool, req, args):
        try:
            result, error = self._call(tool, req, args), None
        except RpcError as e:
            result, error = None, e
        with self._state_lock:
            self._inflight.pop(req.id, None)
            if req.cancelled.is_set():
                return  # cancelled: never answer
        if error is None:
            req.reply(result)
        else:
            req.fail(error.code, error.message, error.data)


def add_echo_and_pid(server):
    """The `echo` {text} and `pid` {} tools every fixture has."""

    @server.tool("echo", "Return the text argument unchanged.", {"text": "string"})
    def echo(req, args):
        return need(args, "text", str)

    @server.tool("pid", "Return this server process's pid (to observe restarts).")
    def pid(req, args):
        return str(os.getpid())
