"""Find, read, validate and normalise the gateway's JSON config.

Validation is done by jsonschema against the schema shipped beside this file;
every error names the JSON path of the bad field and what was expected, because
the person reading it is usually editing a desktop client's config at the time.

Over 400 lines because each section's reading (servers, http, policy, auth, telemetry, store) is a
few checks the schema cannot state, beside the dataclasses they fill; one file keeps them in the
order of the schema.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from wire_gateway.config.auth import AuthSettings, OAuthClient, auth_problems, oauth_problems, parse_auth
from wire_gateway.config.guardrails import GuardrailPolicy, guardrail_problems, parse_guardrails, server_policies
from wire_gateway.telemetry.masking import SECRETS
from wire_gateway.wire.authority import AuthorityError, parse_host, parse_origins
from wire_gateway.wire.forwarded import parse_networks
from wire_gateway.wire.namespacing import server_name_problem

ENV_VAR = "WIRE_GATEWAY_CONFIG"
DEFAULT_URL_TIMEOUT = 30.0        # a url server: connecting, and each answer
DEFAULT_COMMAND_TIMEOUT = 60.0    # a command server: no answer or progress for this long (the TS SDK's default)

# What a server inherits from the gateway's environment (README, "Configuration"); everything
# else must be given in its "env", so secrets in the gateway's environment do not leak
# by default. What a server needs to behave like one started from a shell: where
# programs are, who and where it is (npx keeps its cache under HOME), its terminal type,
# the locale (every POSIX and glibc category, named: a prefix match on LC_ would pass on
# any variable so named, and ssh forwards LC_* from remote clients), its temp directory
# and time zone, and PYTHONUNBUFFERED (set in the container image so that a Python
# server's prints reach the pipe at once). SYSTEMROOT is for Windows, where the gateway
# does not run (process groups).
LOCALE_ENV = ("LANG", "LANGUAGE", "LC_ALL", "LC_ADDRESS", "LC_COLLATE", "LC_CTYPE", "LC_IDENTIFICATION",
              "LC_MEASUREMENT", "LC_MESSAGES", "LC_MONETARY", "LC_NAME", "LC_NUMERIC", "LC_PAPER",
              "LC_TELEPHONE", "LC_TIME")
INHERITED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", *LOCALE_ENV, "TMPDIR", "TZ",
                 "PYTHONUNBUFFERED")


class ConfigError(Exception):
    """The config cannot be used; the message says where and why."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        self.source = source
        super().__init__(f"{source}: " + "; ".join(problems))

    def report(self) -> str:
        lines = [f"{self.source}: {len(self.problems)} problem(s)"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


@dataclass(frozen=True)
class RestartPolicy:
    initial_delay: float = 0.1
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2
    reset_after: float = 30.0
    crash_loop_exits: int = 5
    crash_loop_window: float = 60.0
    crash_loop_cooldown: float = 60.0


@dataclass(frozen=True)
class PolicySpec:
    """The policy chain a server asked for. `enabled` is False when the server names none of
    the policy keys (tools, pinning, schema, cache): it then gets the plain passthrough, at no cost."""
    enabled: bool = False
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    pinning: str = "enforce"          # once enabled: a guarded server is protected against rug pulls
    schema: bool = True
    tools_list_ttl: float = 60.0
    results: bool = False
    results_ttl: float = 60.0
    guardrails: tuple[str, ...] = ()  # the guardrail policies it runs, by name (config.guardrails)

    @property
    def filtering(self) -> bool:
        return bool(self.allow or self.deny)

    def interceptors(self) -> list[str]:
        """Names of the interceptors this server runs, in chain order."""
        if not self.enabled:
            return []
        names = ["filter"] if self.filtering else []
        if self.pinning != "off":
            names.append("pinning")
        if self.schema:
            names.append("schema")
        if self.guardrails:
            names.append("guardrails")
        if self.tools_list_ttl > 0:
            names.append("list_cache")
        if self.results:
            names.append("result_cache")
        return names


POLICY_KEYS = ("tools", "pinning", "schema", "cache", "guardrails")


def parse_policy(name: str, s: dict[str, Any]) -> PolicySpec:
    if not any(k in s for k in POLICY_KEYS):
        return PolicySpec()
    tools = s.get("tools", {})
    cache = s.get("cache", {})
    return PolicySpec(enabled=True, allow=tuple(tools.get("allow", ())), deny=tuple(tools.get("deny", ())),
                      pinning=s.get("pinning", "enforce"), schema=s.get("schema", True),
                      tools_list_ttl=cache.get("tools_list_ttl", 60.0), results=cache.get("results", False),
                      results_ttl=cache.get("results_ttl", 60.0),
                      guardrails=server_policies(name, s.get("guardrails")))


@dataclass(frozen=True)
class StoreSettings:
    backend: str = "memory"
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "wire-gateway:"
    pins_file: str | None = None


@dataclass(frozen=True)
class ServerSpec:
    name: str
    command: str = ""                      # a process to spawn, or ...
    url: str | None = None                 # ... a remote server over Streamable HTTP
    headers: dict[str, str] = field(default_factory=dict)
    oauth: OAuthClient | None = None
    # url: bounds connecting and each answer. command: seconds a request may go without an answer
    # or a progress notification (None: no limit). parse_config picks the default by kind.
    timeout: float | None = 30.0
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    restart: RestartPolicy = RestartPolicy()
    stdin_close_timeout: float = 2.0
    sigterm_timeout: float = 2.0
    handshake_timeout: float = 10.0
    policy: PolicySpec = PolicySpec()
    pool_size: int = 1                     # copies of a command server for modern requests (upstream.pool)
    era: str = "auto"                      # what the single-server routes assume: auto (probe), legacy, modern
    bridge_sessions: int = 16              # legacy sessions of its own for modern calls that may be asked (0: none)

    def argv(self) -> list[str]:
        return [self.command, *self.args]

    def resolved(self, environ: dict[str, str] | None = None) -> ServerSpec:
        """Expand ${VAR} in command, args, env and cwd, and merge env over the inherited minimum."""
        environ = dict(os.environ if environ is None else environ)
        where = f"servers.{self.name}"
        merged = {k: environ[k] for k in INHERITED_ENV if k in environ}
        for key, value in self.env.items():
            merged[key] = expand(value, environ, f"{where}.env.{key}")
        return ServerSpec(
            name=self.name,
            command=expand(self.command, environ, f"{where}.command"),
            url=expand(self.url, environ, f"{where}.url") if self.url else None,
            headers={k: expand(v, environ, f"{where}.headers.{k}") for k, v in self.headers.items()},
            oauth=None if self.oauth is None else dataclasses.replace(
                self.oauth, token_url=expand(self.oauth.token_url, environ, f"{where}.oauth.token_url"),
                client_secret=None if self.oauth.client_secret is None else
                expand(self.oauth.client_secret, environ, f"{where}.oauth.client_secret")),
            timeout=self.timeout,
            args=tuple(expand(a, environ, f"{where}.args[{i}]") for i, a in enumerate(self.args)),
            env=merged,
            cwd=expand(self.cwd, environ, f"{where}.cwd") if self.cwd else None,
            restart=self.restart,
            stdin_close_timeout=self.stdin_close_timeout,
            sigterm_timeout=self.sigterm_timeout,
            handshake_timeout=self.handshake_timeout,
            policy=self.policy,
            pool_size=self.pool_size,
            era=self.era,
            bridge_sessions=self.bridge_sessions,
        )


@dataclass(frozen=True)
class Limits:
    max_frame_bytes: int = 16 * 1024 * 1024
    max_in_flight: int = 4096
    max_queued_frames: int = 4096


@dataclass(frozen=True)
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    session_idle_timeout: float = 1800.0
    max_sessions: int = 10000
    max_body_bytes: int = 4 * 1024 * 1024
    drain_timeout: float = 10.0
    drain_grace: float = 0.0
    stream_buffer_frames: int = 1000
    admin_port: int | None = None
    admin_host: str = "127.0.0.1"
    keepalive_interval: float = 15.0


@dataclass(frozen=True)
class TelemetrySettings:
    """The `telemetry` section (docs/observability.md)."""
    metrics: bool = True
    otlp_metrics: bool = False
    tracing: bool = False
    trace_passthrough: float = 0.0


@dataclass(frozen=True)
class AggregateSettings:
    separator: str = "__"
    page_size: int | None = None


@dataclass(frozen=True)
class Config:
    servers: dict[str, ServerSpec]
    limits: Limits = Limits()
    http: HttpSettings = HttpSettings()
    aggregate: AggregateSettings = AggregateSettings()
    log_level: str = "info"
    log_file: str | None = None
    mask_patterns: tuple[str, ...] = ()
    log_format: str = "text"
    telemetry: TelemetrySettings = TelemetrySettings()
    store: StoreSettings = StoreSettings()
    auth: AuthSettings = field(default_factory=AuthSettings)
    guardrails: dict[str, GuardrailPolicy] = field(default_factory=dict)   # every policy by name
    source: str = "<built-in default>"
    document: dict[str, Any] = field(default_factory=dict)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand(value: str, environ: dict[str, str], where: str) -> str:
    """Replace ${VAR} and ${VAR:-default}; an unset variable without a default is an error."""
    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        raise ConfigError([f"$.{where}: references ${{{name}}}, which is not set in the environment"])
    return _VAR.sub(sub, value)


def store_url(url: str, environ: dict[str, str]) -> str:
    """`store.url` with its ${VAR}s expanded, which must then be a Redis URL."""
    expanded = expand(url, environ, "store.url")
    if not expanded.startswith(("redis://", "rediss://")):
        raise ConfigError([f"$.store.url: {url!r} expands to a URL that is not redis:// or rediss://"])
    return expanded


def register_secrets(specs: Iterable[ServerSpec], environ: dict[str, str] | None = None) -> None:
    """Resolve each server (raising ConfigError as `resolved` does) and put the values of its
    configured secrets in the process-wide registry, which masks them in everything the gateway
    writes (logs, its error answers, /status, dumps): every value an `env` entry took from a
    `${VAR}` (not a `:-default`, which is written in the config for all to read), and every
    `headers` value. Literal `env` values and other fields (`args`, `cwd`) are not registered:
    `${HOME}` in a path is not a secret, and masking it would hide every path in the log."""
    environ = dict(os.environ if environ is None else environ)
    for spec in specs:
        resolved = spec.resolved(environ)
        for value in spec.env.values():
            for m in _VAR.finditer(value):
                if m.group(1) in environ:
                    SECRETS.add(environ[m.group(1)])
        for value in resolved.headers.values():
            SECRETS.add_credential(value)
        if resolved.oauth is not None and resolved.oauth.client_secret:
            SECRETS.add(resolved.oauth.client_secret)


def schema_path() -> Path:
    return Path(str(resources.files("wire_gateway.config").joinpath("schema.json")))


def schema() -> dict[str, Any]:
    return json.loads(schema_path().read_text(encoding="utf-8"))


def default_document() -> dict[str, Any]:
    """The built-in default: the bundled echo server, nothing external."""
    return {"servers": {"echo": {"command": sys.executable, "args": ["-m", "wire_gateway.demo.echo"]}}}


def validation_errors(doc: Any) -> list[str]:
    """Every schema violation as 'JSONPATH: what was expected', in document order."""
    validator = jsonschema.Draft202012Validator(schema(), format_checker=jsonschema.FormatChecker())
    problems = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path]):
        err = _within(err)
        problems.append(f"{err.json_path}: {_describe(err)}")
    return problems


def _within(err: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """For a value that may take several shapes (a server's `guardrails`: a name, names or a
    policy), the error inside the shape it has, which names the exact place."""
    if err.validator == "oneOf" and err.context and "command" not in (
            err.schema.get("properties", {}) if isinstance(err.schema, Mapping) else {}):
        wrong_shape = {e.relative_schema_path[0] for e in err.context
                       if e.validator == "type" and not e.relative_path}
        inside = [e for e in err.context if e.relative_schema_path[0] not in wrong_shape]
        if inside:
            return _within(max(inside, key=lambda e: len(e.absolute_path)))
    return err


def _describe(err: jsonschema.ValidationError) -> str:
    schema = err.schema if isinstance(err.schema, Mapping) else {}
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = sorted(schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        if allowed:
            return f"unknown key(s) {', '.join(map(repr, extra))}; expected one of: {', '.join(allowed)}"
    if err.validator == "oneOf" and isinstance(err.instance, dict) and "command" in schema.get("properties", {}):
        both = "command" in err.instance and "url" in err.instance
        return ('has both "command" and "url"; a server is either a process to run ("command") or a remote '
                'server ("url"), not both') if both else \
            'needs "command" (a process to run, with "args") or "url" (a remote Streamable HTTP server)'
    if err.validator == "propertyNames" and list(err.absolute_path)[:1] == ["guardrails"]:
        return f"{err.message} (policy names: letters, digits, '_', '.', '-', not starting with a punctuation mark)"
    if err.validator == "propertyNames":
        return f"{err.message} (server names: letters, digits, '_', '.', '-'; at most 64 characters)"
    return err.message


def allow_list_problems(http: dict[str, Any]) -> list[str]:
    """Entries of http.allowed_hosts / allowed_origins that no request could match: each is
    compared with what a request sends after both are parsed (wire/authority.py)."""
    problems = []
    for key, parse, shape in (("allowed_hosts", parse_host, "host[:port]"),
                              ("allowed_origins", parse_origins, "scheme://host[:port] or null")):
        for i, entry in enumerate(http.get(key, ())):
            if entry == "*":
                continue
            try:
                parse(entry)
            except AuthorityError as exc:
                problems.append(f"$.http.{key}[{i}]: {entry!r} is not {shape}: {exc}")
    for i, entry in enumerate(http.get("trusted_proxies", ())):
        try:
            parse_networks([entry])
        except ValueError as exc:
            problems.append(f"$.http.trusted_proxies[{i}]: {exc}")
    return problems


def find_config_path(cli_path: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """--config, else $WIRE_GATEWAY_CONFIG, else None (the built-in default)."""
    if cli_path:
        return cli_path
    env = os.environ if environ is None else environ
    return env.get(ENV_VAR) or None


def load_config(cli_path: str | None = None, environ: dict[str, str] | None = None) -> Config:
    path = find_config_path(cli_path, environ)
    if path is None:
        return parse_config(default_document(), "<built-in default>")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(["file not found (run `wire-gateway init PATH` to write a starter config)"], str(p)) from None
    except OSError as exc:
        raise ConfigError([f"cannot read: {exc.strerror}"], str(p)) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError([f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"], str(p)) from None
    return parse_config(doc, str(p), base_dir=p.resolve().parent)


def parse_config(doc: Any, source: str = "<config>", base_dir: Path | None = None) -> Config:
    problems = validation_errors(doc)
    if problems:
        raise ConfigError(problems, source)
    aggregate = AggregateSettings(**doc.get("aggregate", {}))
    clashes = [f"$.servers.{name}: {why} (aggregate.separator; rename the server or choose another separator)"
               for name in doc["servers"] if (why := server_name_problem(name, aggregate.separator))]
    clashes += [f"$.servers.{name}.timeout: null (no timeout) is only for a command server; a url server needs "
                "a number of seconds" for name, s in doc["servers"].items() if "url" in s and
                "timeout" in s and s["timeout"] is None]
    clashes += [f"$.servers.{name}.pool: a url server is one endpoint, and balancing its copies is its own "
                "business; pool only command servers" for name, s in doc["servers"].items()
                if "url" in s and "pool" in s]
    clashes += [f'$.servers.{name}.pool: copies serve requests that stand alone, which a legacy server\'s do not '
                '(its sessions hold state); drop the pool or the "era": "legacy"' for name, s in doc["servers"].items()
                if "pool" in s and s.get("era") == "legacy"]
    clashes += oauth_problems(doc["servers"]) + auth_problems(doc.get("auth")) + guardrail_problems(doc)
    if clashes:
        raise ConfigError(clashes, source)
    allow_list = allow_list_problems(doc.get("http", {}))
    if allow_list:
        raise ConfigError(allow_list, source)
    servers = {}
    for name, s in doc["servers"].items():
        restart = RestartPolicy(**s.get("restart", {}))
        shutdown = s.get("shutdown", {})
        cwd = s.get("cwd")
        if cwd and base_dir is not None and "${" not in cwd and not os.path.isabs(cwd):
            cwd = str(base_dir / cwd)  # relative to the config file, not to wherever the client started us
        servers[name] = ServerSpec(
            name=name,
            command=s.get("command", ""),
            url=s.get("url"),
            headers=dict(s.get("headers", {})),
            oauth=OAuthClient(**s["oauth"]) if "oauth" in s else None,
            timeout=s.get("timeout", DEFAULT_URL_TIMEOUT if "url" in s else DEFAULT_COMMAND_TIMEOUT),
            args=tuple(s.get("args", ())),
            env=dict(s.get("env", {})),
            cwd=cwd,
            restart=restart,
            stdin_close_timeout=shutdown.get("stdin_close_timeout", 2.0),
            sigterm_timeout=shutdown.get("sigterm_timeout", 2.0),
            handshake_timeout=s.get("handshake_timeout", 10.0),
            policy=parse_policy(name, s),
            pool_size=s.get("pool", {}).get("size", 1),
            era=s.get("era", "auto"),
            bridge_sessions=s.get("bridge_sessions", 16),
        )
    logging_ = doc.get("logging", {})
    http = dict(doc.get("http", {}))
    for key in ("allowed_hosts", "allowed_origins", "trusted_proxies"):
        if key in http:
            http[key] = tuple(http[key])
    store = dict(doc.get("store", {}))
    if store.get("pins_file") and base_dir is not None and not os.path.isabs(store["pins_file"]):
        store["pins_file"] = str(base_dir / store["pins_file"])
    return Config(
        servers=servers,
        store=StoreSettings(**store),
        auth=parse_auth(doc.get("auth"), base_dir),
        guardrails=parse_guardrails(doc),
        limits=Limits(**doc.get("limits", {})),
        http=HttpSettings(**http),
        aggregate=aggregate,
        log_level=logging_.get("level", "info"),
        log_file=logging_.get("file"),
        mask_patterns=tuple(logging_.get("mask_patterns", ())),
        log_format=logging_.get("format", "text"),
        telemetry=TelemetrySettings(**doc.get("telemetry", {})),
        source=source,
        document=doc,
    )
