"""Config: schema validation with JSON paths, lookup order, ${VAR} expansion, check/init commands."""
import json
import os
import subprocess
import sys

import pytest

from wire_gateway.config import ConfigError, find_config_path, load_config, parse_config

GW = [sys.executable, "-m", "wire_gateway"]


def problems_of(doc):
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    return info.value.problems


def test_errors_name_the_json_path_and_what_was_expected():
    problems = problems_of({"servers": {"gh": {"command": "x", "args": ["ok", 3], "env": {"A": 1}}}})
    assert "$.servers.gh.args[1]: 3 is not of type 'string'" in problems
    assert "$.servers.gh.env.A: 1 is not of type 'string'" in problems


def test_unknown_keys_are_named_with_the_allowed_ones():
    (problem,) = problems_of({"servers": {"a": {"command": "x", "comand": "y"}}})
    assert problem.startswith("$.servers.a: unknown key(s) 'comand'; expected one of: "
                              "args, bridge_sessions, cache, command")


def test_missing_and_empty():
    assert problems_of({}) == ["$: 'servers' is a required property"]
    assert problems_of({"servers": {}})[0].startswith("$.servers:")
    assert problems_of({"servers": {"a": {}}})[0].startswith("$.servers.a: needs \"command\"")


def test_lookup_order(tmp_path):
    assert find_config_path("cli.json", {"WIRE_GATEWAY_CONFIG": "env.json"}) == "cli.json"
    assert find_config_path(None, {"WIRE_GATEWAY_CONFIG": "env.json"}) == "env.json"
    assert find_config_path(None, {}) is None
    default = load_config(None, {})
    assert list(default.servers) == ["echo"]


def test_env_expansion_and_minimal_inheritance():
    config = parse_config({"servers": {"s": {"command": "${TOOL_BIN:-/bin/tool}", "args": ["--t", "${TOKEN}"],
                                              "env": {"API_KEY": "${TOKEN}", "PLAIN": "x"}}}})
    spec = config.servers["s"].resolved({"TOKEN": "abc", "PATH": "/usr/bin", "AWS_SECRET": "leak"})
    assert spec.command == "/bin/tool"
    assert spec.args == ("--t", "abc")
    assert spec.env == {"PATH": "/usr/bin", "API_KEY": "abc", "PLAIN": "x"}


def test_unset_variable_is_a_clear_error():
    config = parse_config({"servers": {"s": {"command": "x", "env": {"K": "${NOPE}"}}}})
    with pytest.raises(ConfigError) as info:
        config.servers["s"].resolved({})
    assert info.value.problems == ["$.servers.s.env.K: references ${NOPE}, which is not set in the environment"]


def test_relative_cwd_is_relative_to_the_config_file(tmp_path):
    path = tmp_path / "gw.json"
    path.write_text(json.dumps({"servers": {"s": {"command": "x", "cwd": "sub"}}}))
    assert load_config(str(path), {}).servers["s"].cwd == str(tmp_path / "sub")


def run(*args, env=None):
    return subprocess.run([*GW, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_check_command_prints_the_json_path(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"servers": {"echo": {"command": "python", "args": "not-a-list"}}}))
    result = run("check", "--config", str(bad))
    assert result.returncode == 1
    assert "$.servers.echo.args: 'not-a-list' is not of type 'array'" in result.stderr
    broken = tmp_path / "broken.json"
    broken.write_text('{"servers": ')
    result = run("check", "--config", str(broken))
    assert result.returncode == 1 and "not valid JSON" in result.stderr and "line 1" in result.stderr
    result = run("check", "--config", str(tmp_path / "missing.json"))
    assert result.returncode == 1 and "file not found" in result.stderr


def test_init_writes_a_config_that_checks(tmp_path):
    path = tmp_path / "gw.json"
    result = run("init", str(path))
    assert result.returncode == 0 and "check" in result.stdout
    doc = json.loads(path.read_text())
    assert doc["$schema"].startswith("file://") and doc["$schema"].endswith("schema.json")
    assert list(doc["servers"]) == ["echo"]
    assert run("check", "--config", str(path)).returncode == 0
    assert run("check", env={"WIRE_GATEWAY_CONFIG": str(path)}).returncode == 0
    assert run("init", str(path)).returncode == 1  # never overwrites silently


def test_a_server_is_a_command_or_a_url():
    assert problems_of({"servers": {"r": {}}}) == [
        '$.servers.r: needs "command" (a process to run, with "args") or "url" (a remote Streamable HTTP server)']
    assert "not both" in problems_of({"servers": {"r": {"url": "https://x", "command": "y"}}})[0]
    assert problems_of({"servers": {"r": {"url": "ftp://x"}}}) == ["$.servers.r.url: 'ftp://x' does not match '^https?://'"]
    spec = parse_config({"servers": {"r": {"url": "https://h/mcp", "headers": {"Authorization": "Bearer ${T}"}}}})
    resolved = spec.servers["r"].resolved({"T": "tok"})
    assert resolved.url == "https://h/mcp" and resolved.headers == {"Authorization": "Bearer tok"}


def test_store_url_may_be_a_variable_and_must_expand_to_redis():
    """`store.url` as `${VAR}` (a deployment's secret URL) is accepted; what it expands to is checked."""
    from wire_gateway.config.loader import store_url

    config = parse_config({"servers": {"a": {"command": "x"}}, "store": {"backend": "redis", "url": "${REDIS_URL}"}})
    assert store_url(config.store.url, {"REDIS_URL": "redis://cache:6379/0"}) == "redis://cache:6379/0"
    with pytest.raises(ConfigError) as info:
        store_url(config.store.url, {"REDIS_URL": "http://cache:6379"})
    assert "not redis:// or rediss://" in info.value.problems[0]
    with pytest.raises(ConfigError) as info:
        store_url(config.store.url, {})
    assert "REDIS_URL" in info.value.problems[0]
    assert problems_of({"servers": {"a": {"command": "x"}}, "store": {"url": "http://cache"}})[0].startswith(
        "$.store.url:")
