"""`python -m load run` replays fixtures against real servers and checks every answer.

Real processes and sockets throughout: the gateway (`wire-gateway serve` and
`wire-gateway stdio` over the bundled echo server), the direct HTTP echo
fixture, and `fixtures/servers/swapping.py`, a server that answers every
fifth echo call with another request's result, which must be caught.
Nothing here asserts speed.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from load import replay, stats, targets

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
LEGACY = str(DATA / "echo_legacy.jsonl")
MODERN = str(DATA / "echo_modern.jsonl")
SAMPLING = str(DATA / "sampling_legacy.jsonl")
PY = sys.executable
ECHO_CMD = f"{PY} {ROOT / 'fixtures' / 'servers' / 'echo.py'}"
SWAPPING = ROOT / "fixtures" / "servers" / "swapping.py"


def load_run(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "load", "run", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def load_json(*args) -> tuple:
    proc = load_run(*args, "--json")
    assert proc.stdout.startswith("{"), proc.stderr[-2000:]
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """`wire-gateway serve` over the stdio echo server; its /mcp/echo URL."""
    target = targets.HttpProcess("gateway", str(tmp_path_factory.mktemp("gw")), timeout=600)
    yield str(target.url)
    target.stop()


@pytest.fixture(scope="module")
def direct(tmp_path_factory):
    """fixtures/servers/http_echo.py; its /mcp URL."""
    target = targets.HttpProcess("direct", str(tmp_path_factory.mktemp("direct")), timeout=600)
    yield str(target.url)
    target.stop()


@pytest.fixture
def swapping_http(tmp_path):
    port_file = tmp_path / "port"
    proc = subprocess.Popen([PY, str(SWAPPING), "--http", "--port-file", str(port_file)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, "swapping server did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{int(port_file.read_text())}/mcp"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def assert_clean(run: dict, calls: int, sessions: int) -> None:
    assert run["mismatches"] == 0, run["mismatch_examples"]
    assert run["errors"] == {}, run["error_examples"]
    assert run["calls"] == calls and run["answered_ok"] == calls
    assert run["sessions"] == sessions and run["session_failures"] == 0


# --------------------------------------------------------------------------
# Clean replays: gateway and direct, both eras, with --check
# --------------------------------------------------------------------------

@pytest.mark.parametrize("fixture", [LEGACY, MODERN], ids=["legacy", "modern"])
def test_gateway_http_replay_is_clean_with_check(gateway, fixture):
    code, doc = load_json("--target", gateway, "--fixture", fixture, "-c", "4", "-n", "60", "--check")
    assert code == 0
    run = doc["runs"][0]
    assert_clean(run, 60, 4)
    assert run["latency"]["all"]["count"] == 60
    assert "tools/call echo" in run["latency"]


BUNDLED = sorted(p.stem for p in (ROOT / "fixtures" / "sessions").glob("*.jsonl"))


@pytest.mark.parametrize("name", BUNDLED)
def test_every_bundled_fixture_replays_clean_through_the_gateway(gateway, name):
    """The library a user replays by name (README, docs/load.md) still matches the bundled echo
    server it was recorded from: re-record it (fixtures/sessions/record.py) when the server changes."""
    code, doc = load_json("--target", gateway, "--fixture", name, "-c", "2", "--check")
    run = doc["runs"][0]
    assert run["mismatches"] == 0, run["mismatch_examples"]
    assert run["errors"] == {}, run["error_examples"]
    assert code == 0 and run["calls"] > 0


@pytest.mark.parametrize("fixture", [LEGACY, MODERN], ids=["legacy", "modern"])
def test_direct_http_replay_is_clean_with_check(direct, fixture):
    code, doc = load_json("--target", direct, "--fixture", fixture, "-c", "3", "-n", "45", "--check")
    assert code == 0
    assert_clean(doc["runs"][0], 45, 3)


def test_stdio_target_gateway_one_process_per_session():
    gateway_cmd = f"{PY} -m wire_gateway stdio"
    code, doc = load_json("--stdio", gateway_cmd, "--fixture", LEGACY, "-c", "2", "-n", "24", "--check")
    assert code == 0
    assert_clean(doc["runs"][0], 24, 2)
    assert doc["runs"][0]["transport"] == "stdio"


def test_server_requests_are_answered_with_the_recorded_reply(gateway):
    """`sample` makes the server ask the client (sampling/createMessage) mid-call: over stdio,
    and over HTTP inside the POST's event stream; the recorded reply must come back as the result."""
    for where in (["--stdio", ECHO_CMD], ["--target", gateway]):
        code, doc = load_json(*where, "--fixture", SAMPLING, "-c", "2", "-n", "8", "--check")
        run = doc["runs"][0]
        assert code == 0, run
        assert_clean(run, 8, 2)
        # one server request per sample call (the shared budget may give one session an extra call)
        samples = run["latency"]["tools/call sample"]["count"]
        assert samples >= 4 and run["server_requests_answered"] == samples


# --------------------------------------------------------------------------
# Wrong answers are caught, counted and shown
# --------------------------------------------------------------------------

def test_swapping_http_server_is_caught(swapping_http):
    proc = load_run("--target", swapping_http, "--fixture", MODERN, "-c", "4", "-n", "100")
    assert proc.returncode == 1
    assert "mismatches: 20 (not_this_request 20)" in proc.stdout
    assert "mismatch example: not_this_request: sent text=" in proc.stdout


def test_swapping_stdio_server_is_caught_across_rounds():
    code, doc = load_json("--stdio", f"{PY} {SWAPPING}", "--fixture", MODERN, "-c", "1", "-n", "40")
    run = doc["runs"][0]
    assert code == 1
    assert run["mismatch_kinds"] == {"not_this_request": 8}
    assert run["answered_ok"] == 32
    assert len(run["mismatch_examples"]) == stats.MAX_EXAMPLES


def test_check_compares_with_the_recording(tmp_path, direct):
    """A recording whose answer differs from what the server says: only --check notices."""
    lines = Path(MODERN).read_text().splitlines()
    wrong = [lines[0]]
    for line in lines[1:]:
        entry = json.loads(line)
        if entry["dir"] == "recv" and entry["msg"]["id"] == 2:
            entry["msg"]["result"]["content"][0]["text"] = "something else"
        wrong.append(json.dumps(entry))
    path = tmp_path / "wrong.jsonl"
    path.write_text("\n".join(wrong) + "\n")
    code, doc = load_json("--target", direct, "--fixture", str(path), "-c", "1", "-n", "8")
    assert code == 0 and doc["runs"][0]["mismatches"] == 0
    code, doc = load_json("--target", direct, "--fixture", str(path), "-c", "1", "-n", "8", "--check")
    run = doc["runs"][0]
    assert code == 1
    assert run["mismatch_kinds"] == {"check_differs": 2}
    assert "something else" in run["mismatch_examples"][0]


def test_an_error_answer_is_counted_by_code(direct, tmp_path):
    lines = Path(MODERN).read_text().splitlines()
    entry = json.loads(lines[1])
    entry["msg"]["params"]["name"] = "nosuchtool"
    path = tmp_path / "err.jsonl"
    path.write_text("\n".join([lines[0], json.dumps(entry)]) + "\n")
    code, doc = load_json("--target", direct, "--fixture", str(path), "-c", "1", "-n", "3")
    assert code == 1
    assert doc["runs"][0]["errors"] == {"rpc_-32602": 3}


# --------------------------------------------------------------------------
# Budgets, output, workers, compare, plot
# --------------------------------------------------------------------------

def test_n_is_exact_and_duration_bounds_the_run(direct):
    code, doc = load_json("--target", direct, "--fixture", LEGACY, "-c", "3", "-n", "17")
    assert code == 0 and doc["runs"][0]["calls"] == 17
    started = time.monotonic()
    code, doc = load_json("--target", direct, "--fixture", MODERN, "-c", "2", "--duration", "1.5s")
    took = time.monotonic() - started
    run = doc["runs"][0]
    assert code == 0 and run["calls"] > 10 and run["mismatches"] == 0
    assert 1.4 <= run["seconds"] <= 3.0
    assert took < 20


def test_json_schema(direct):
    code, doc = load_json("--target", direct, "--fixture", MODERN, "-c", "2", "-n", "10")
    assert code == 0
    assert doc["tool"] == "load run" and doc["schema"] == 1
    assert set(doc) >= {"config", "runs", "mismatches", "errors"}
    assert doc["config"]["era"] == "modern" and doc["config"]["concurrency"] == 2
    run = doc["runs"][0]
    assert set(run) >= {"target", "transport", "concurrency", "calls", "answered_ok", "seconds", "calls_per_s",
                        "latency", "errors", "error_examples", "mismatches", "mismatch_kinds",
                        "mismatch_examples", "notifications", "server_requests_answered", "sessions",
                        "session_failures", "timeline"}
    assert set(run["latency"]["all"]) == {"count", "p50_ms", "p90_ms", "p99_ms", "max_ms"}
    lat = run["latency"]["all"]
    assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
    assert sum(run["timeline"]["calls_per_s"]) == 10


def test_rate_paces_the_calls(direct):
    started = time.monotonic()
    code, doc = load_json("--target", direct, "--fixture", MODERN, "-c", "2", "-n", "20", "--rate", "20")
    assert code == 0 and doc["runs"][0]["calls"] == 20
    assert time.monotonic() - started >= 0.9   # 20 calls at 20/s: the last is due at 0.95 s


def test_workers_split_sessions_and_merge_results(direct):
    code, doc = load_json("--target", direct, "--fixture", LEGACY, "-c", "4", "-n", "40", "--workers", "2",
                          "--check")
    assert code == 0
    assert_clean(doc["runs"][0], 40, 4)


def test_compare_alternates_and_prints_ratios(direct, gateway):
    proc = load_run("--target", direct, "--fixture", MODERN, "-c", "2", "-n", "20", "--compare", gateway,
                    "--rounds", "2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "B / A" in proc.stdout
    ratio_rows = [line for line in proc.stdout.splitlines() if line.strip().startswith(("calls_per_s", "p50_ms"))]
    assert len(ratio_rows) == 2 and all(" x" in row for row in ratio_rows)
    _code, doc = load_json("--target", direct, "--fixture", MODERN, "-c", "2", "-n", "20", "--compare", gateway,
                          "--rounds", "2")
    assert [r["target"] for r in doc["runs"]] == [direct, gateway, direct, gateway]
    assert doc["compare"]["calls_per_s"]["ratio_b_to_a"] > 0


def test_plot_writes_a_png(direct, tmp_path):
    png = tmp_path / "run.png"
    proc = load_run("--target", direct, "--fixture", MODERN, "-c", "2", "--duration", "1.2s", "--plot", str(png))
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "\r" not in proc.stderr   # no progress bar when stderr is not a terminal


def test_unreachable_target_counts_failed_sessions():
    code, doc = load_json("--target", "http://127.0.0.1:9/mcp", "--fixture", MODERN, "-c", "2", "-n", "4")
    run = doc["runs"][0]
    assert code == 1
    assert run["session_failures"] == 2 and run["errors"] == {"disconnect": 2}


def test_bad_fixture_is_refused(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"not": "a fixture"}\n')
    proc = load_run("--stdio", ECHO_CMD, "--fixture", str(path))
    assert proc.returncode == 2 and "fixture" in proc.stderr


# --------------------------------------------------------------------------
# The rules, in process
# --------------------------------------------------------------------------

def test_normalize_drops_volatile_fields_only():
    got = {"content": [{"text": "x", "_meta": {"a": 1}}], "pid": 5, "timestamp": "now", "isError": False}
    assert replay.normalize(got) == {"content": [{"text": "x"}], "isError": False}


def test_echo_like_calls_are_tagged_and_others_not():
    script = replay.load_script(LEGACY)
    calls = [step for step in script.body if isinstance(step, replay.Call)]
    assert [c.tag_key for c in calls] == ["text"] * 4 + [None, None]
    body, tagged = calls[3].render(7 * replay.ID_STRIDE + 3, 7, 3)
    assert tagged == "ünïcode ✓_v7_3"
    msg = json.loads(body)
    assert msg["id"] == 7000000003 and msg["params"]["arguments"]["text"] == tagged


def test_silent_server_times_out_per_call_and_the_session_goes_on():
    """A listener that never answers: each call is a timeout, counted, and the session reconnects."""
    import socket
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)   # the kernel accepts connections; nobody reads
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/mcp"
        started = time.monotonic()
        code, doc = load_json("--target", url, "--fixture", MODERN, "-c", "1", "-n", "3", "--timeout", "0.5")
        run = doc["runs"][0]
        assert code == 1
        assert run["errors"] == {"timeout": 3} and run["calls"] == 3 and run["answered_ok"] == 0
        assert time.monotonic() - started < 20
    finally:
        listener.close()


def test_param_headers_progress_and_cancellation(gateway):
    """Modern HTTP: `where` needs Mcp-Param-Region (from the recorded tools/list's x-mcp-header),
    or the gateway answers 400; progress notifications are counted. stdio: a call the client
    cancelled is sent with its cancellation and no answer awaited; the session goes on."""
    # no --check here: the recorded tools/list is this branch's echo server's, and other branches
    # add cache hints (ttlMs) to it; what matters is that `where` is not refused for a missing header
    code, doc = load_json("--target", gateway, "--fixture", str(DATA / "mixed_modern.jsonl"), "-c", "2", "-n", "12")
    run = doc["runs"][0]
    assert code == 0, run
    assert_clean(run, 12, 2)
    progress_calls = run["latency"]["tools/call progress"]["count"]
    assert progress_calls >= 3 and run["notifications"] == 2 * progress_calls
    code, doc = load_json("--stdio", f"{PY} -m wire_gateway stdio", "--fixture", str(DATA / "cancel_legacy.jsonl"),
                          "-c", "2", "-n", "12", "--check")
    run = doc["runs"][0]
    assert code == 0, run
    # two sessions draw on one budget of 12, each alternating cancel/echo: the split depends on
    # which session takes the last call, never the total
    assert run["calls"] == 12 and run["cancelled"] + run["answered_ok"] == 12
    assert 5 <= run["cancelled"] <= 7
    assert run["mismatches"] == 0 and run["errors"] == {}


def test_pace_recorded_keeps_the_recorded_gaps(direct, tmp_path):
    lines = Path(MODERN).read_text().splitlines()
    slow = [lines[0]]
    for line in lines[1:]:
        entry = json.loads(line)
        entry["t"] = entry["t"] * 30   # calls 0.3 s apart
        slow.append(json.dumps(entry))
    path = tmp_path / "slow.jsonl"
    path.write_text("\n".join(slow) + "\n")
    code, doc = load_json("--target", direct, "--fixture", str(path), "-c", "1", "-n", "4", "--pace", "recorded")
    assert code == 0 and doc["runs"][0]["seconds"] >= 0.85   # the 4th call is due 0.9 s after the 1st
    code, doc = load_json("--target", direct, "--fixture", str(path), "-c", "1", "-n", "4")
    assert code == 0 and doc["runs"][0]["seconds"] < 0.5
