"""The chain's guardrails slot: detectors over what reaches the server and what comes back.

Down (tools/call): the arguments (and a modern retry's `inputResponses`) are judged by the
input rules of the server's policies and of the caller's project: a block answers for the
server, which never sees the call; a redaction rewrites the request and keeps the mapping in
the call's state, so the output of the same call gets the originals back. Remote providers
are asked after the local detectors (about the redacted text), or, with `parallel` and a
read-only tool, while the call is out.
Up: tools/call results are checked against the tool's outputSchema, judged by the output
rules, then the input placeholders are restored; tools/list pages lose tools whose own words
(name, description, schemas) a `scan_tools` detector blocks; initialize and server/discover
results lose instructions a `scan_server_info` detector flags.

Runs after the schema guard (arguments already well-formed) and before the caches, so a cache
hit is judged like a fresh answer and the restore mapping of each call stays with its call.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from wire_gateway.guardrails.engine import (
    Compiled,
    Flat,
    Hit,
    Verdict,
    blocked_result,
    first_hit,
    judge,
    label,
    restore,
    text_of,
)
from wire_gateway.guardrails.remote import Provider, RemoteSettings, RemoteVerdict, make_provider
from wire_gateway.policy.chain import DEFER, Call, Interceptor, Reply
from wire_gateway.policy.output_schema import OutputSchemas
from wire_gateway.policy.schema import canonical
from wire_gateway.policy.tools import ToolIndex
from wire_gateway.wire import jsonfast
from wire_gateway.wire.frame import Frame, Kind

log = logging.getLogger("wire_gateway.guardrails")

INFO_METHODS = frozenset({"initialize", "server/discover"})
MODERN_SERVER_INFO = "io.modelcontextprotocol/serverInfo"
MAX_VERDICTS = 4096


def _modern(call: Call) -> bool:
    return not call.version.startswith("legacy-") and call.version != "unknown"


OFF_LOOP_BYTES = 64 * 1024
"""Frames this large are judged in a worker thread (about 1 ms of detection and more)."""


class Guardrails(Interceptor):
    name = "guardrails"
    request_methods = frozenset({"tools/call"})

    def __init__(self, server: str, index: ToolIndex, own: list[Compiled], named: dict[str, Compiled],
                 nursery: Callable[[], trio.Nursery | None] = lambda: None) -> None:
        self.server = server
        self.index = index
        self.own = tuple(own)                 # the server's own policies
        self.named = named                    # every named policy, for projects to add
        self.schemas = OutputSchemas(server, index)
        self.project_only = not own           # acts only for callers whose project adds a policy
        everything = [*own, *named.values()]
        self.remote = any(c.remote_input or c.remote_output for c in everything)
        info = any(c.scan_server_info for c in everything)
        self.response_methods = frozenset({"tools/call", "tools/list"} | (INFO_METHODS if info else set()))
        # The input side never waits, unless a provider is asked (then the chain runs in a task).
        self.check = None if self.remote else self._check_input
        self._nursery = nursery               # where parallel checks run (Services' nursery, once running)
        self._sets: dict[tuple[str, ...], tuple[Compiled, ...]] = {}
        self._flats: dict[tuple[int, str], Flat] = {}
        self._tool_verdicts: dict[bytes, Hit | None] = {}
        self.poisoned: dict[str, Hit] = {}   # tools a blocking scan_tools removed, by name
        self._said: set[tuple[str, ...]] = set()
        self._providers: dict[int, Provider] = {}   # by id of the settings: one client per remote rule

    # ---- which policies apply --------------------------------------------------------------------

    def policies(self, call: Call) -> tuple[Compiled, ...]:
        extra = call.caller.project.guardrails if call.caller is not None else ()
        if not extra:
            return self.own
        found = self._sets.get(extra)
        if found is None:
            found = self._sets[extra] = self.own + tuple(self.named[n] for n in extra if n in self.named)
        return found

    def _missing(self, call: Call) -> str | None:
        """A project policy this gateway does not define: the project meant to tighten, so refuse."""
        extra = call.caller.project.guardrails if call.caller is not None else ()
        return next((n for n in extra if n not in self.named), None)

    def _flat(self, policies: tuple[Compiled, ...], side: str) -> Flat:
        key = (id(policies), side)
        flat = self._flats.get(key)
        if flat is None:
            flat = self._flats[key] = tuple(x for c in policies for x in getattr(c, side))
        return flat

    # ---- down --------------------------------------------------------------------------------------

    def _check_input(self, call: Call) -> Reply | None:
        """`check`: on_request's local part, which never waits; a large frame is judged in a
        worker thread (DEFER: the chain runs as coroutines, and on_request does)."""
        if len(call.frame.raw) >= OFF_LOOP_BYTES and self._judges(call):
            return DEFER
        return self._input(call)

    def _judges(self, call: Call) -> bool:
        """Whether the input side has anything to do for this caller (a caller without policies
        on a server whose guardrails only projects add: a large frame needs no thread then)."""
        return bool(self.policies(call)) or self._missing(call) is not None

    def _input(self, call: Call) -> Reply | None:
        tool = call.tool
        missing = self._missing(call)       # first: a project whose only policy is missing has none to run
        if missing is not None:
            return self._block(call, Hit(missing, "undefined-policy", "block"), "input",
                               f"the caller's project names guardrail policy '{missing}', which this gateway "
                               "does not define, so the call is refused")
        policies = self.policies(call)
        if not policies:
            return None
        if tool is not None and tool in self.poisoned:
            hit = self.poisoned[tool]
            return self._block(call, hit, "input", f"the tool's own description or schema matched detector "
                               f"'{hit.detector}' at discovery, so the tool is withheld; calling it")
        flat = self._flat(policies, "input")
        if not flat:
            return None
        params = call.params
        sent = {k: params[k] for k in ("arguments", "inputResponses") if k in params}
        verdict = judge(sent, flat, placeholders=True)
        self._log(call, "input", verdict)
        if verdict.block is not None:
            return self._block(call, verdict.block, "input")
        if verdict.value is not sent:
            # the id the upstream is to see (a front may have remapped it in the raw bytes alone)
            msg = {**call.frame.msg, "id": call.frame.id, "params": {**params, **verdict.value}}
            call.frame = Frame(jsonfast.dumps(msg), Kind.REQUEST, msg, call.frame.method, call.frame.id, verdict.note)
            call.state["restore"] = verdict.restore
        return None

    async def on_request(self, call: Call) -> Reply | None:
        reply = await self._off_loop(call.frame.raw if self._judges(call) else None, self._input, call) \
            if call.method == "tools/call" else None
        if reply is not None or not self.remote or call.method != "tools/call":
            return reply
        params = call.params      # as the local rules left them: a provider never sees what they redacted
        text: str | None = None
        for policy in self.policies(call):
            for action, settings in policy.remote_input:
                text = text if text is not None else text_of(
                    {k: params[k] for k in ("arguments", "inputResponses") if k in params})
                provider = self._provider(settings)
                nursery = self._nursery()
                if settings.parallel and nursery is not None and \
                        self.index.annotations(call.tool or "").get("readOnlyHint") is True:
                    pending = _Pending()
                    call.state.setdefault("parallel", []).append((policy, action, settings, pending))
                    nursery.start_soon(pending.run, provider, text, "input", self.server, call.tool)
                    continue
                answer = await provider.check(text, direction="input", server=self.server, tool=call.tool)
                reply = self._remote_verdict(call, policy, action, settings, answer, "input")
                if reply is not None:
                    return reply
        return None

    def _provider(self, settings: RemoteSettings) -> Provider:
        provider = self._providers.get(id(settings))
        if provider is None:
            provider = self._providers[id(settings)] = make_provider(settings)
        return provider

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()
        self._providers.clear()

    def _remote_verdict(self, call: Call, policy: Compiled, action: str, settings: RemoteSettings,
                        answer: RemoteVerdict, direction: str) -> Reply | None:
        name = f"remote:{settings.provider}"
        if answer.error is not None:
            fail_closed = settings.on_error == "block"
            log.warning("guardrails: server %s tool %s %s: provider %s failed (%s); %s", self.server, call.tool,
                        direction, settings.provider, answer.error,
                        "blocking (on_error: block)" if fail_closed else "passing (on_error: allow)")
            if fail_closed:
                return self._block(call, Hit(policy.label, name, "block"), direction,
                                   "the remote guardrail provider could not judge the text (it failed or timed "
                                   "out) and this policy fails closed, so the "
                                   + ("arguments" if direction == "input" else "result"))
            return None
        if not answer.violations:
            return None
        hit = Hit(policy.label, f"{name}/{answer.violations[0]}", action)
        log.warning("guardrails: server %s tool %s %s: policy %s detector %s, action %s", self.server, call.tool,
                    direction, hit.policy, hit.detector, action)
        return self._block(call, hit, direction) if action == "block" else None

    def _block(self, call: Call, hit: Hit, direction: str, why: str | None = None) -> Reply:
        note = f"guardrails:block:{hit.policy}/{hit.detector}"
        return Reply.result(call, blocked_result(hit, direction, call.tool, _modern(call), why), note)

    # ---- up ----------------------------------------------------------------------------------------

    async def on_response(self, call: Call, reply: Reply) -> Reply:
        method = call.method
        if method == "tools/call":
            for policy, action, settings, pending in call.state.get("parallel", ()):
                answer = await pending.wait()
                blocked = self._remote_verdict(call, policy, action, settings, answer, "input")
                if blocked is not None:
                    return blocked
            judged = self.policies(call) or call.state.get("restore")
            reply = await self._off_loop(reply.raw if judged else None, self._result, call, reply)
            return await self._remote_output(call, reply) if self.remote else reply
        if method == "tools/list":
            return self._tools(call, reply)
        if method in INFO_METHODS:
            return self._server_info(call, reply)
        return reply

    @staticmethod
    async def _off_loop(raw: bytes | None, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)`, in a worker thread when the frame is large: judging 1 MiB takes tens to
        hundreds of milliseconds, which the event loop (every other client) must not wait for.
        The first await is a plain checkpoint, so that `chain.drive`, which runs the chain
        inline and gives up at its first suspension, stops there and not inside the thread
        hand-off; the runner then runs the chain again in a task. The detectors' memos are
        safe across threads (each is one tuple, read once)."""
        if raw is None or len(raw) < OFF_LOOP_BYTES:
            return fn(*args)
        await trio.lowlevel.checkpoint()
        return await trio.to_thread.run_sync(fn, *args)

    def _result(self, call: Call, reply: Reply) -> Reply:
        mapping = call.state.get("restore")
        if reply.gateway or (reply.note is not None and reply.note.startswith("guardrails:block")):
            return reply                     # the gateway's own error, or our own block of the input
        policies = self.policies(call)
        result = reply.result_dict
        if result is not None:
            for policy in policies:
                mode = policy.policy.output_schema
                if mode == "off":
                    continue
                problem = self.schemas.problem(call.tool, result)
                if problem is not None:
                    log.warning("guardrails: server %s tool %s: result does not match its outputSchema: %s (%s)",
                                self.server, call.tool, problem, "blocked" if mode == "block" else "logged")
                    if mode == "block":
                        return self._block(call, Hit(policy.label, "output_schema", "block"), "output",
                                           f"the result does not match the tool's outputSchema ({problem})")
                break
        flat = self._flat(policies, "output") if policies else ()
        if not flat and not mapping:
            return reply
        side = "result" if "result" in reply.msg else "error"
        value = reply.msg.get(side)
        verdict = judge(value, flat, placeholders=False)
        self._log(call, "output", verdict)
        if verdict.block is not None:
            return self._block(call, verdict.block, "output")
        new = restore(verdict.value, mapping) if mapping else verdict.value
        if new is value:
            return reply
        return Reply({**reply.msg, side: new}, None, note=verdict.note or reply.note or "guardrails:restore")

    async def _remote_output(self, call: Call, reply: Reply) -> Reply:
        """Remote output rules, on the result as the local rules left it (masks in, placeholders
        of the input restored: the client's own data, which the answer is about to carry anyway)."""
        if reply.gateway or (reply.note is not None and reply.note.startswith("guardrails:block")):
            return reply
        text: str | None = None
        for policy in self.policies(call):
            for action, settings in policy.remote_output:
                text = text if text is not None else text_of(reply.msg.get("result", reply.msg.get("error")))
                answer = await self._provider(settings).check(text, direction="output", server=self.server,
                                                              tool=call.tool)
                blocked = self._remote_verdict(call, policy, action, settings, answer, "output")
                if blocked is not None:
                    return blocked
        return reply

    def _tools(self, call: Call, reply: Reply) -> Reply:
        result = reply.result_dict
        tools = result.get("tools") if result is not None else None
        policies = self.policies(call)
        flat = self._flat(policies, "scan_tools") if policies else ()
        if not flat or not isinstance(tools, list):
            return reply
        kept = []
        for tool in tools:
            hit = self._tool_verdict(tool, flat) if isinstance(tool, dict) else None
            if hit is None:
                kept.append(tool)
                continue
            name = tool.get("name")
            self._once(("tool", str(name), hit.policy, hit.detector, hit.action), logging.WARNING,
                       "guardrails: server %s: tool %r: its description or schema matched detector %s of policy %s; %s",
                       self.server, name, hit.detector, hit.policy,
                       "removed from tools/list" if hit.action == "block" else "logged only")
            if hit.action == "block" and isinstance(name, str):
                if len(self.poisoned) < MAX_VERDICTS:
                    self.poisoned[name] = hit
                continue
            kept.append(tool)
        if len(kept) == len(tools):
            return reply
        assert result is not None
        return reply.with_result({**result, "tools": kept}, "guardrails:scan_tools")

    def _tool_verdict(self, tool: dict[str, Any], flat: Flat) -> Hit | None:
        key = (canonical(tool) or b"") + id(flat).to_bytes(8, "little")
        if key in self._tool_verdicts:
            return self._tool_verdicts[key]
        words = {k: tool.get(k) for k in ("name", "title", "description", "inputSchema", "outputSchema",
                                          "annotations")}
        hit = first_hit(words, flat)
        if len(self._tool_verdicts) >= MAX_VERDICTS:
            self._tool_verdicts.clear()
        self._tool_verdicts[key] = hit
        return hit

    def _server_info(self, call: Call, reply: Reply) -> Reply:
        result = reply.result_dict
        policies = self.policies(call)
        flat = self._flat(policies, "scan_server_info") if policies else ()
        if result is None or not flat:
            return reply
        out = dict(result)
        hit = first_hit(result.get("instructions"), flat)
        if hit is not None:
            self._once(("info", hit.policy, hit.detector), logging.WARNING,
                       "guardrails: server %s: its instructions matched detector %s of policy %s; %s",
                       self.server, hit.detector, hit.policy,
                       "they are withheld from clients" if hit.action == "redact" else "logged only")
            if hit.action == "redact":
                del out["instructions"]
        # legacy: result.serverInfo; modern (server/discover): result._meta["io.modelcontextprotocol/serverInfo"]
        meta = result.get("_meta") if isinstance(result.get("_meta"), dict) else None
        for holder in (out, meta):
            key = "serverInfo" if holder is out else MODERN_SERVER_INFO
            info = holder.get(key) if holder is not None else None
            if not isinstance(info, dict):
                continue
            words = {k: info[k] for k in ("name", "title", "description") if k in info}
            verdict = judge(words, tuple((p, "redact" if a == "redact" else "log", n, d) for p, a, n, d in flat),
                            placeholders=False)
            if verdict.hits:
                found = sorted({h.detector for h in verdict.hits})
                self._once(("info-name", *found), logging.WARNING,
                           "guardrails: server %s: its serverInfo matched detector(s) %s", self.server,
                           ", ".join(found))
            if verdict.value is not words:
                if holder is out:
                    out["serverInfo"] = {**info, **verdict.value}
                elif meta is not None:
                    out["_meta"] = {**meta, key: {**info, **verdict.value}}
        if out == result:
            return reply
        return reply.with_result(out, "guardrails:scan_server_info")

    # ---- logs ----------------------------------------------------------------------------------------

    def _log(self, call: Call, direction: str, verdict: Verdict) -> None:
        if verdict.block is not None:
            hit = verdict.block
            log.warning("guardrails: server %s tool %s %s: policy %s detector %s, action block", self.server, call.tool,
                        direction, hit.policy, hit.detector)
        for hit, n in verdict.hits.items():
            log.info("guardrails: server %s tool %s %s: policy %s detector %s, action %s (%d match%s)", self.server,
                     call.tool, direction, hit.policy, hit.detector, hit.action, n, "" if n == 1 else "es")
        for kind in set(verdict.skipped):
            self._once(("binary", str(call.tool), direction, kind), logging.INFO,
                       "guardrails: server %s tool %s %s: %s content is binary and not scanned", self.server,
                       call.tool, direction, kind)

    def _once(self, key: tuple[str, ...], level: int, msg: str, *args: Any) -> None:
        if key in self._said:
            return
        if len(self._said) < MAX_VERDICTS:
            self._said.add(key)
        log.log(level, msg, *args)


class _Pending:
    """A remote input check running while the call is out (`parallel`)."""

    def __init__(self) -> None:
        self.event = trio.Event()
        self.answer = RemoteVerdict(error="the check did not finish")

    async def run(self, provider: Provider, text: str, direction: str, server: str, tool: str | None) -> None:
        try:
            self.answer = await provider.check(text, direction=direction, server=server, tool=tool)
        finally:
            self.event.set()

    async def wait(self) -> RemoteVerdict:
        await self.event.wait()
        return self.answer


__all__ = ["Guardrails", "label"]
