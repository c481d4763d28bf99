"""The config's guardrails: named policies (the top-level `guardrails` section) and what each
server uses (a server's `guardrails`: a policy name, a list of names, or a policy written in
place), with the checks the schema cannot make. Detector names are checked by the schema
itself (its enum is the detector registry; tests/test_guardrails_config.py keeps them equal).
docs/guardrails.md says what each key means.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

ACTIONS = ("block", "redact", "log")


@dataclass(frozen=True)
class GuardrailRule:
    """Detectors and what to do when one of them matches."""
    action: str                              # "block" | "redact" | "log"
    detectors: tuple[str, ...] = ()          # detector and group names, as written
    keywords: tuple[str, ...] = ()           # a custom whole-word list
    patterns: tuple[str, ...] = ()           # custom regular expressions
    case_sensitive: bool = False             # for `keywords`
    remote: dict[str, Any] | None = None     # a remote provider's settings (guardrails.remote)
    name: str | None = None                  # what the log calls the custom detectors of this rule


@dataclass(frozen=True)
class ScanSettings:
    """`scan_tools` / `scan_server_info`: which detectors judge the server's own words."""
    detectors: tuple[str, ...] = ()          # () : off
    action: str = "block"


@dataclass(frozen=True)
class GuardrailPolicy:
    name: str
    input: tuple[GuardrailRule, ...] = ()
    output: tuple[GuardrailRule, ...] = ()
    scan_tools: ScanSettings = ScanSettings()
    scan_server_info: ScanSettings = ScanSettings()
    output_schema: str = "log"               # "block" | "log" | "off"

    @property
    def remote(self) -> bool:
        return any(r.remote is not None for r in (*self.input, *self.output))


DEFAULT_SCAN = ("injection",)


def _rule(d: dict[str, Any]) -> GuardrailRule:
    return GuardrailRule(action=d.get("action", "block"), detectors=tuple(d.get("detectors", ())),
                         keywords=tuple(d.get("keywords", ())), patterns=tuple(d.get("patterns", ())),
                         case_sensitive=d.get("case_sensitive", False), remote=d.get("remote"),
                         name=d.get("name"))


def _scan(value: Any, default_action: str) -> ScanSettings:
    if value is False:
        return ScanSettings()
    if value is True or value is None:
        return ScanSettings(DEFAULT_SCAN, default_action)
    return ScanSettings(tuple(value.get("detectors", DEFAULT_SCAN)), value.get("action", default_action))


def parse_guardrail_policy(name: str, d: dict[str, Any]) -> GuardrailPolicy:
    return GuardrailPolicy(
        name=name,
        input=tuple(_rule(r) for r in d.get("input", ())),
        output=tuple(_rule(r) for r in d.get("output", ())),
        scan_tools=_scan(d.get("scan_tools", True), "block"),
        scan_server_info=_scan(d.get("scan_server_info", True), "redact"),
        output_schema=d.get("output_schema", "log"))


def inline_name(server: str) -> str:
    """The name of a policy written in a server's own `guardrails` (`:` cannot start a named one)."""
    return f":{server}"


def server_policies(server: str, value: Any) -> tuple[str, ...]:
    """The policy names a server's `guardrails` key means."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(value)
    return (inline_name(server),)


def guardrail_problems(doc: dict[str, Any]) -> list[str]:
    """What the schema cannot check: names that exist, patterns that compile, actions a
    remote provider can take."""
    named = doc.get("guardrails", {})
    problems = []
    policies = [(f"$.guardrails.{n}", p) for n, p in named.items()]
    for server, s in doc["servers"].items():
        g = s.get("guardrails")
        if isinstance(g, dict):
            policies.append((f"$.servers.{server}.guardrails", g))
        for ref in server_policies(server, g) if not isinstance(g, dict) else ():
            if ref not in named:
                defined = ", ".join(sorted(named)) or "none"
                problems.append(f"$.servers.{server}.guardrails: no guardrail policy named {ref!r} "
                                f"(defined: {defined}; add it under the top-level `guardrails`)")
    for where, p in policies:
        for side in ("input", "output"):
            for i, r in enumerate(p.get(side, ())):
                here = f"{where}.{side}[{i}]"
                if not any(k in r for k in ("detectors", "keywords", "patterns", "remote")):
                    problems.append(f"{here}: names nothing to detect (give detectors, keywords, patterns or remote)")
                if "remote" in r and r.get("action", "block") == "redact":
                    problems.append(f"{here}: a remote provider says whether text violates a policy, not where: "
                                    "its action is block or log, not redact")
                for j, pattern in enumerate(r.get("patterns", ())):
                    try:
                        re.compile(pattern)
                    except re.error as exc:
                        problems.append(f"{here}.patterns[{j}]: not a valid regular expression ({exc})")
    return problems


def parse_guardrails(doc: dict[str, Any]) -> dict[str, GuardrailPolicy]:
    """Every policy by name: the named ones and the ones servers write in place."""
    out = {n: parse_guardrail_policy(n, p) for n, p in doc.get("guardrails", {}).items()}
    for server, s in doc["servers"].items():
        if isinstance(s.get("guardrails"), dict):
            out[inline_name(server)] = parse_guardrail_policy(inline_name(server), s["guardrails"])
    return out
