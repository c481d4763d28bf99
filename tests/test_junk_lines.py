"""Junk from a server (issue 13, defect 3): a flood of lines that are not JSON-RPC must neither
flood the log nor delay the answers behind it.

Before the fix, every junk line was parsed twice (orjson, then the stdlib), had an id hunted for
in its text, and was logged in full: 100 MB of junk lines took 48 s to get through (the server
wrote them in well under a second) and left 100,017 log lines (40 MB). Now a burst's first lines
are logged in full and the rest only counted, in a summary at most once a second (and when the
stream ends), and a line that cannot start a JSON-RPC message is skipped without parsing it.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from gateway import MODERN_META, fixture, fixture_module, gateway, write_config
from test_http_upstream import remote_config, stdio_gateway

from wire_gateway.telemetry.throttle import Throttle, ThrottledLog

FULL = "dropped a line on stdout that is not a JSON-RPC message"
SUMMARY = re.compile(r"dropped (\d+) more lines on stdout that are not JSON-RPC messages over the last")
HTTP_FULL = "that is not JSON-RPC ("
HTTP_SUMMARY = re.compile(r"at \S+: dropped (\d+) more messages that are not JSON-RPC over the last")


def text_of(answer: dict[str, Any]) -> str:
    return answer["result"]["content"][0]["text"]


# ---- the throttle (sans-IO) -------------------------------------------------------------------------


def test_throttle_shows_a_burst_then_counts_then_summarises_once_per_interval() -> None:
    t = Throttle(burst=3, interval=1.0)
    shown, summaries = 0, []
    for i in range(150):                             # a flood: one event every 10 ms for 1.5 s
        now = 10.0 + i * 0.01
        shown += t.event(now)
        if (due := t.due(now)) is not None:
            summaries.append(due)
    assert shown == 3 and len(summaries) == 1        # one summary a second, not one per event
    assert summaries[0][1] >= 1.0 and t.suppressed > 0
    left = t.take(11.5)                              # end of stream: whatever is left
    assert left is not None and summaries[0][0] + left[0] == 147
    assert t.suppressed == 0 and t.take(11.6) is None and t.due(20.0) is None


def test_throttle_gives_a_fresh_burst_after_a_quiet_interval() -> None:
    t = Throttle(burst=2, interval=1.0)
    assert [t.event(0.0), t.event(0.1), t.event(0.2)] == [True, True, False]
    assert t.event(5.0) is False                    # an unreported count holds the burst back ...
    assert t.take(5.0) == (2, pytest.approx(4.8))
    assert t.event(6.5) is True and t.event(6.6) is True and t.event(6.7) is False   # ... then a fresh one


def test_throttled_log_writes_its_summary_before_the_next_burst(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("wire_gateway.test_throttle")
    junk = ThrottledLog(logger, "%s: %d more over %.1fs", "src", burst=1)
    with caplog.at_level(logging.WARNING, logger=logger.name):
        for now in (0.0, 0.1, 0.2):
            if junk.event(now):
                logger.warning("in full at %.1f", now)
        junk.tick(0.5)                    # not due yet
        assert junk.event(3.0) is True    # due: the summary first, then a fresh burst
        logger.warning("in full at 3.0")
        junk.event(3.1)
        junk.close(3.5)
    assert [r.getMessage() for r in caplog.records] == [
        "in full at 0.0", "src: 2 more over 2.9s", "in full at 3.0", "src: 1 more over 0.4s"]


@pytest.mark.parametrize("line, rid", [
    (b'{"jsonrpc":"2.0","method":"x","params":{"a":[1,2]},"id":7,"extra":', 7),   # cut short: still found
    (b'noisy: {"jsonrpc":"2.0","id":5}', None),          # no top-level object: no top-level id
    (b'{not json ' + b"x" * 4000, None),                  # text, not JSON: the walk stops at once
    (b'{"method":"x","params":{oops},"id":9}', None),    # anything after text that is not JSON is doubtful
])
def test_id_recovery_walks_json_tokens_only(line: bytes, rid: Any) -> None:
    from wire_gateway.wire import scan

    assert scan.recover_id(line) == rid


# ---- a stdio server's junk ---------------------------------------------------------------------------


def junk_in_log(log: str, full: str, summary: re.Pattern[str]) -> tuple[int, int, int]:
    """(lines logged in full, summary lines, junk counted by the summaries)"""
    lines = log.splitlines()
    counts = [int(m.group(1)) for line in lines if (m := summary.search(line))]
    return sum(full in line for line in lines), len(counts), sum(counts)


def test_a_junk_flood_is_summarised_and_does_not_delay_the_answer(tmp_path: Path) -> None:
    megabytes = 40
    lines_written, _ = fixture_module("noisy").flood_lines(megabytes)
    gw = gateway(write_config(tmp_path, {"noisy": fixture("noisy")}), "noisy", tmp_path)
    try:
        gw.initialize()
        started = time.monotonic()
        answer = gw.call("flood", {"megabytes": megabytes}, timeout=120)
        took = time.monotonic() - started
        assert text_of(answer) == f"flooded {lines_written}"
        assert text_of(gw.call("echo", {"text": "after"})) == "after"
    finally:
        gw.close()
    # 40 MB took 8-15 s before (0.2-0.4 s/MB); reading it takes about 0.1 s. Generous for a busy CI box.
    assert took < 5.0, f"the answer behind {megabytes} MB of junk took {took:.1f}s"
    log = gw.log_text()
    full, summaries, counted = junk_in_log(log, FULL, SUMMARY)
    # Every junk line is accounted for: 3 banner lines, one before each of the 3 answers, the flood.
    assert full + counted == 3 + 3 + lines_written
    assert 1 <= full <= 15 and 1 <= summaries <= 15, log[-3000:]
    assert len(log.splitlines()) < 80, f"{len(log.splitlines())} log lines"


def test_a_stray_junk_line_after_a_quiet_second_is_logged_in_full(tmp_path: Path) -> None:
    gw = gateway(write_config(tmp_path, {"noisy": fixture("noisy")}), "noisy", tmp_path)
    try:
        gw.initialize()
        gw.call("flood", {"megabytes": 0.1})         # a burst: the rest of it only counted
        time.sleep(1.2)
        gw.call("echo", {"text": "x"})               # one junk line before the answer: summary, then in full
    finally:
        gw.close()
    log = gw.log_text()
    assert "noisy: about to answer id=1003" in log, log[-2000:]
    full, _, counted = junk_in_log(log, FULL, SUMMARY)
    assert full + counted == 3 + 3 + 100


def test_lines_that_look_like_json_are_still_parsed(tmp_path: Path) -> None:
    """The skip-without-parsing shortcut is only for lines that cannot start a JSON-RPC message:
    an answer written with leading whitespace is still delivered."""
    server = tmp_path / "indented.py"
    server.write_text(
        "import sys, json\n"
        "print('banner: hello', flush=True)\n"
        "for line in sys.stdin:\n"
        "    msg = json.loads(line)\n"
        "    if 'id' in msg:\n"
        "        print(' \\t' + json.dumps({'jsonrpc': '2.0', 'id': msg['id'], 'result': {'ok': True}}), flush=True)\n")
    gw = gateway(write_config(tmp_path, {"ind": {"command": "python3", "args": [str(server)]}}), "ind", tmp_path)
    try:
        assert gw.request("ping", req_id="p")["result"] == {"ok": True}
    finally:
        gw.close()
    assert "banner: hello" in gw.log_text()


# ---- an HTTP upstream's junk ---------------------------------------------------------------------------

JUNK_EVENTS = 3000


class JunkServer(ThreadingHTTPServer):
    """Answers every request with an SSE stream of JUNK_EVENTS events that are not JSON-RPC,
    then the answer."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), JunkHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/mcp"


class JunkHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        msg = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
        if "id" not in msg:
            self.send_response(202)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        junk = b"".join(b"data: junk event %d, not json\n\n" % i for i in range(JUNK_EVENTS))
        answer = {"jsonrpc": "2.0", "id": msg["id"], "result": {"resultType": "complete", "tools": []}}
        self.wfile.write(junk + b"data: " + json.dumps(answer).encode() + b"\n\n")
        self.wfile.flush()
        self.close_connection = True

    def do_GET(self) -> None:
        self.send_response(405)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def junk_server():
    server = JunkServer()
    yield server
    server.shutdown()
    server.server_close()


def test_an_http_upstreams_junk_messages_are_summarised(junk_server: JunkServer, tmp_path: Path) -> None:
    # pinned modern: its server/discover answer lists no versions, which the era probe would read as legacy
    gw = stdio_gateway(remote_config(tmp_path, junk_server.url(), era="modern"), tmp_path)
    try:
        answer = gw.request("tools/list", {"_meta": MODERN_META}, req_id="l", timeout=30)
        assert answer["result"]["tools"] == []
    finally:
        gw.close()
    log = gw.log_text()
    full, summaries, counted = junk_in_log(log, HTTP_FULL, HTTP_SUMMARY)
    assert full + counted == JUNK_EVENTS, log[-3000:]
    assert 1 <= full <= 15 and 1 <= summaries <= 15
