"""The guardrails engine, sans IO: policies compiled into flat detector lists, one pass over a
value that finds, blocks, redacts or logs, and the answers a block turns into.

One pass: every string of the value (guardrails.walk) goes through every detector of every
rule. A `block` match ends the pass at once (nothing else matters, and nothing of the value
is used); `redact` matches are replaced in a copy (input: a numbered placeholder per distinct
value, which the same call's output turns back into the original; output: a mask); `log`
matches are counted. Counts are by (policy, detector, action), never by matched text: what
a log line, a dump note or an answer says about a match is which rule found it, never what
it found.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wire_gateway.config.guardrails import GuardrailPolicy, GuardrailRule, ScanSettings
from wire_gateway.guardrails.detectors import DETECTORS, Detect, Span, resolve
from wire_gateway.guardrails.remote import RemoteSettings, parse_remote
from wire_gateway.guardrails.walk import rewrite, strings

META_KEY = "dev.wire-gateway/guardrails"
PLACEHOLDER = "[REDACTED_"          # every placeholder and mask starts so: one `in` test before restoring

# (policy label, action, detector name, detect)
Flat = tuple[tuple[str, str, str, Detect], ...]


def label(policy: str) -> str:
    """How answers and logs name a policy: a server's in-place policy by its place in the config."""
    return f"servers.{policy[1:]}.guardrails" if policy.startswith(":") else policy


def _custom(rule: GuardrailRule) -> list[tuple[str, Detect]]:
    if not (rule.keywords or rule.patterns):
        return []
    from wire_gateway.guardrails.detectors import custom

    out = []
    if rule.keywords:
        d = custom.keywords(rule.name or "keywords", list(rule.keywords), rule.case_sensitive)
        out.append((d.name, d.detect))
    if rule.patterns:
        d = custom.patterns(rule.name or "patterns", list(rule.patterns))
        out.append((d.name, d.detect))
    return out


def flatten(policy: str, rules: tuple[GuardrailRule, ...]) -> Flat:
    out: list[tuple[str, str, str, Detect]] = []
    for rule in rules:
        detectors = [(n, DETECTORS[n].detect) for n in resolve(rule.detectors)] + _custom(rule)
        out += [(label(policy), rule.action, n, d) for n, d in detectors]
    return tuple(out)


def flatten_scan(policy: str, scan: ScanSettings) -> Flat:
    return tuple((label(policy), scan.action, n, DETECTORS[n].detect) for n in resolve(scan.detectors))


# A remote rule: its action ("block" | "log") and its provider's settings
Remote = tuple[str, RemoteSettings]


def remotes(policy: str, side: str, rules: tuple[GuardrailRule, ...]) -> tuple[Remote, ...]:
    """The side's remote rules, their settings read now: a bad URL or an unset ${VAR} is a
    config error at start-up, and the key joins the masked secrets before anything runs."""
    where = f"servers.{policy[1:]}.guardrails" if policy.startswith(":") else f"guardrails.{policy}"
    return tuple((r.action, parse_remote(r.remote, where=f"{where}.{side}[{i}].remote"))
                 for i, r in enumerate(rules) if r.remote is not None)


@dataclass(frozen=True)
class Compiled:
    """One policy, ready to run."""

    policy: GuardrailPolicy
    input: Flat
    output: Flat
    scan_tools: Flat
    scan_server_info: Flat
    remote_input: tuple[Remote, ...] = ()
    remote_output: tuple[Remote, ...] = ()

    @classmethod
    def of(cls, policy: GuardrailPolicy) -> Compiled:
        return cls(policy, flatten(policy.name, policy.input), flatten(policy.name, policy.output),
                   flatten_scan(policy.name, policy.scan_tools), flatten_scan(policy.name, policy.scan_server_info),
                   remotes(policy.name, "input", policy.input), remotes(policy.name, "output", policy.output))

    @property
    def label(self) -> str:
        return label(self.policy.name)


@dataclass(frozen=True, slots=True)
class Hit:
    policy: str
    detector: str
    action: str


class Blocked(Exception):
    def __init__(self, hit: Hit) -> None:
        super().__init__(hit)
        self.hit = hit


@dataclass
class Verdict:
    value: Any                                     # the value, rewritten where redacted (else the same object)
    block: Hit | None = None
    hits: dict[Hit, int] = field(default_factory=dict)    # matches per rule that acted
    skipped: list[str] = field(default_factory=list)      # binary payloads left out
    restore: dict[str, str] = field(default_factory=dict)  # placeholder -> original (input redaction)

    @property
    def note(self) -> str | None:
        """What dumps record: the strongest action taken, by which policy and detector."""
        if self.block is not None:
            return f"guardrails:block:{self.block.policy}/{self.block.detector}"
        for action in ("redact", "log"):
            for hit in self.hits:
                if hit.action == action:
                    return f"guardrails:{action}:{hit.policy}/{hit.detector}"
        return None


def _merge(spans: list[tuple[Span, str]]) -> list[tuple[Span, str]]:
    """Overlapping matches (a JWT that is also a high-entropy secret) become the first, longest."""
    spans.sort(key=lambda s: (s[0].start, -s[0].end))
    out: list[tuple[Span, str]] = []
    end = -1
    for span, policy in spans:
        if span.start >= end:
            out.append((span, policy))
            end = span.end
    return out


def judge(value: Any, flat: Flat, placeholders: bool) -> Verdict:
    """One pass of `flat` over `value`. `placeholders`: redact with numbered placeholders that
    `restore` can undo (input), else with masks (output)."""
    verdict = Verdict(value)
    if not flat:
        return verdict
    counters: dict[str, int] = {}
    given: dict[str, str] = {}                     # original -> placeholder

    def replace(text: str, key: str | None) -> str:
        redact: list[tuple[Span, str]] | None = None
        for policy, action, name, detect in flat:
            found = detect(text, key)
            if not found:
                continue
            hit = Hit(policy, name, action)
            if action == "block":
                raise Blocked(hit)
            verdict.hits[hit] = verdict.hits.get(hit, 0) + len(found)
            if action == "redact":
                redact = redact if redact is not None else []
                redact += [(s, policy) for s in found]
        if redact is None:
            return text
        parts, at = [], 0
        for span, _ in _merge(redact):
            parts.append(text[at:span.start])
            if placeholders:
                original = text[span.start:span.end]
                mark = given.get(original)
                if mark is None:
                    n = counters[span.detector] = counters.get(span.detector, 0) + 1
                    mark = given[original] = f"{PLACEHOLDER}{span.detector.upper()}_{n}]"
                    verdict.restore[mark] = original
                parts.append(mark)
            else:
                parts.append(f"{PLACEHOLDER}{span.detector.upper()}]")
            at = span.end
        parts.append(text[at:])
        return "".join(parts)

    try:
        verdict.value = rewrite(value, replace, None, verdict.skipped)
    except Blocked as blocked:
        verdict.block, verdict.value, verdict.restore = blocked.hit, value, {}
    return verdict


def restore(value: Any, mapping: dict[str, str]) -> Any:
    """The same call's placeholders turned back into what the client sent."""
    if not mapping:
        return value

    def back(text: str, key: str | None) -> str:
        if PLACEHOLDER not in text:
            return text
        for mark, original in mapping.items():
            text = text.replace(mark, original)
        return text

    return rewrite(value, back)


def text_of(value: Any) -> str:
    """What a remote provider is shown: every string, one per line (binary left out)."""
    return "\n".join(s for s, _ in strings(value))


def first_hit(value: Any, flat: Flat) -> Hit | None:
    """The first match in `value`, for judging the server's own words (no rewriting)."""
    for text, key in strings(value):
        for policy, action, name, detect in flat:
            if detect(text, key):
                return Hit(policy, name, action)
    return None


def blocked_result(hit: Hit, direction: str, tool: str | None, modern: bool, why: str | None = None) -> dict[str, Any]:
    """The CallToolResult a block answers with: an error result that says which rule acted and
    what to do, never what it matched; the same facts for programs in `_meta`."""
    where = "arguments" if direction == "input" else "result"
    what = why or f"detector '{hit.detector}' found a match in the {where}"
    text = (f"Blocked by the gateway's guardrails (policy '{hit.policy}'): {what} of tool '{tool}'. "
            + ("The call was not sent to the server." if direction == "input" else
               "The server's result was withheld.")
            + " Ask the gateway's operator if this is wrong.")
    result: dict[str, Any] = {
        "content": [{"type": "text", "text": text}], "isError": True,
        "_meta": {META_KEY: {"action": "block", "direction": direction, "policy": hit.policy,
                             "detector": hit.detector, "tool": tool}}}
    if modern:
        result["resultType"] = "complete"
    return result

