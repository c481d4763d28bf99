"""Record, convert, replay: the loop an operator runs when sizing a deployment.

A real SDK client session goes through the gateway with `--dump` (secrets included, so the
replay runs on masked frames), `wire-gateway dump fixture` turns it into a fixture, and
`python -m load run --check` replays it through the gateway at concurrency: every answer must
be the request's own and equal to the recorded one.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from http_gateway import HttpGateway
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from test_dump_e2e import ECHO, MODES, ROOT, SECRETS, session

from wire_gateway.dump.fixture import read_fixture
from wire_gateway.dump.tap import C2G, G2C
from wire_gateway.dump.tools import iter_records

PY = sys.executable


def to_fixture(dump: Path, session_id: str, out: Path) -> None:
    # --session=ID: a session id may start with "-", which argparse would take for an option
    proc = subprocess.run([PY, "-m", "wire_gateway", "dump", "fixture", str(dump), f"--session={session_id}",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert not any(s in out.read_text() for s in SECRETS)


def replay(target: list[str], fixture: Path) -> dict:
    proc = subprocess.run([PY, "-m", "load", "run", *target, "--fixture", str(fixture), "-c", "3", "-n", "30",
                           "--check", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.stdout.startswith("{"), proc.stderr[-2000:]
    run = json.loads(proc.stdout)["runs"][0]
    assert proc.returncode == 0, run
    return run


def written_sessions(dump: Path, era: str) -> set[str]:
    """The sessions of `era` in a live dump; the writer batches, so wait for the answers to land."""
    deadline = time.monotonic() + 10
    while True:
        records = [r for r in iter_records(dump) if r.get("era") == era] if dump.exists() else []
        asked = sum(r["dir"] == C2G and r["kind"] == "request" for r in records)
        answered = sum(r["dir"] == G2C and r["kind"] in ("response", "error") for r in records)
        if (asked >= 3 and answered >= asked) or time.monotonic() > deadline:
            return {r["session"] for r in records}
        time.sleep(0.05)


def assert_clean(run: dict) -> None:
    assert run["mismatches"] == 0, run["mismatch_examples"]
    assert run["errors"] == {}, run["error_examples"]
    assert run["calls"] == run["answered_ok"] == 30
    assert run["sessions"] == 3 and run["session_failures"] == 0


@pytest.mark.anyio
@pytest.mark.parametrize("era", list(MODES))
async def test_stdio_dump_replays_through_the_gateway(era: str, tmp_path: Path) -> None:
    config = tmp_path / "gw.json"
    config.write_text(json.dumps({"servers": {"echo": ECHO}}))
    dump = tmp_path / "dump.jsonl"
    params = StdioServerParameters(command=PY, cwd=str(ROOT), args=[
        "-m", "wire_gateway", "stdio", "--config", str(config), "--dump", str(dump)])
    with open(tmp_path / "stderr.log", "w") as errlog:
        await session(stdio_client(params, errlog=errlog), MODES[era])
    (sid,) = {r["session"] for r in iter_records(dump) if "session" in r}
    fixture = tmp_path / "recorded.jsonl"
    to_fixture(dump, sid, fixture)
    header, entries = read_fixture(fixture)
    assert header.era == era and header.transport == "stdio"
    assert [m.get("method") for _, d, m in entries if d == "send"].count("tools/call") == 2
    assert_clean(replay(["--stdio", f"{PY} -m wire_gateway stdio --config {config}"], fixture))


@pytest.mark.anyio
@pytest.mark.parametrize("era", list(MODES))
async def test_http_dump_replays_through_the_gateway(era: str, tmp_path: Path) -> None:
    dump = tmp_path / "dump.jsonl"
    gateway = HttpGateway(tmp_path, {"echo": ECHO}, dump={"path": str(dump)})
    try:
        await session(streamable_http_client(gateway.url("echo")), MODES[era])
        sessions = written_sessions(dump, era)
        assert len(sessions) == 1
        fixture = tmp_path / "recorded.jsonl"
        to_fixture(dump, sessions.pop(), fixture)
        assert read_fixture(fixture)[0].transport == "http"
        # replayed through the same gateway (its dump keeps recording: it must not get in the way)
        assert_clean(replay(["--target", gateway.url("echo")], fixture))
    finally:
        assert gateway.stop() == 0
