"""The HTTP bench (`python -m load http-bench`) measures, checks answers, cleans up.

A quick real run per era (the direct fixture and the gateway, started by the
bench itself: every figure present, nothing mismatched, nothing left
running; the legacy run also measures a few idle sessions), and a run against
a deliberately wrong HTTP server whose bad answers must be counted exactly,
while its correct answers sent as chunked SSE streams must pass.
"""
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from load import __main__ as load_main, http_bench, http_client, procfs

FIGURES = {
    "calls", "concurrency", "seconds", "calls_per_s", "p50_us", "p90_us", "p99_us", "max_us",
    "target_cpu_us_per_call", "tree_cpu_us_per_call", "driver_cpu_us_per_call", "other_load_cpus",
    "mismatches", "mismatch_kinds", "mismatch_examples", "notifications", "warmup_mismatches",
}

# Call k (counted by the server, from 1) is answered: k % 3 == 0 with someone
# else's id, k % 3 == 1 with the wrong text, k % 3 == 2 correctly but as a
# chunked SSE stream (a progress notification, a comment, then the answer
# split over two chunks).  Plain http.server: speed is not the point.
WRONG_SERVER = textwrap.dedent('''
    import http.server, json, os, sys, threading
    lock, calls = threading.Lock(), [0]

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True   # several small writes per answer

        def log_message(self, *args):
            pass

        def do_POST(self):
            msg = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                calls[0] += 1
                k = calls[0]
            rid, text = msg["id"], msg["params"]["arguments"]["text"]
            if k % 3 == 0:
                rid += 10**9
            elif k % 3 == 1:
                text = "not " + text
            answer = json.dumps({"jsonrpc": "2.0", "id": rid, "result": {
                "content": [{"type": "text", "text": text}], "isError": False, "resultType": "complete"}}).encode()
            self.send_response(200)
            if k % 3 != 2:
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
                return
            note = json.dumps({"jsonrpc": "2.0", "method": "notifications/progress",
                               "params": {"progressToken": 1, "progress": 1}}).encode()
            event = b"event: message\\r\\ndata: " + answer + b"\\r\\n\\r\\n"
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"data: " + note + b"\\n\\n: keep-alive\\n\\n", event[:20], event[20:]):
                self.wfile.write(b"%x\\r\\n%s\\r\\n" % (len(part), part))
            self.wfile.write(b"0\\r\\n\\r\\n")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    server.serve_forever()
''')


def children_of_this_process() -> list:
    return sorted(procfs.descendants(procfs.scan_processes(), os.getpid()))


def run_json(capsys, *argv: str):
    status = load_main.main(["http-bench", "--json", *argv])
    return status, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("era", ["modern", "legacy"])
def test_quick_run_measures_both_targets_without_mismatches(capsys, era):
    before = children_of_this_process()
    extra = ["--idle-sessions", "3"] if era == "legacy" else []
    status, result = run_json(capsys, "--era", era, "-n", "200", "--rounds", "1", "--warmup", "20",
                              "--concurrency", "1,4", "--timeout", "60", *extra)

    assert status == 0, json.dumps(result, indent=1)[:4000]
    assert result["mismatches"] == 0 and result["errors"] == 0
    assert result["config"]["era"] == era and result["config"]["n"] == 200
    assert set(result["summary"]) == {"sequential", "clients_4"}
    (rnd,) = result["rounds"]
    for slot in ("direct", "gateway"):
        run = rnd[slot]
        assert "error" not in run and run["warmup_mismatches"] == 0
        assert run["url"].startswith("http://127.0.0.1:")
        assert run["rss_kib"] > 1000 and run["tree_rss_kib"] >= run["rss_kib"]
        assert run["shutdown"]["stopped_by"] == "SIGTERM" and run["shutdown"]["stragglers"] == []
        for name, m in run["scenarios"].items():
            assert set(m) >= FIGURES, name
            assert m["calls"] == 200 and m["mismatches"] == 0 and m["session_close_failures"] == []
            assert m["p50_us"] > 0 and m["calls_per_s"] > 0 and m["target_cpu_us_per_call"] is not None
    # the gateway's tree holds its upstream process(es): the shared one, plus one per legacy session
    assert rnd["gateway"]["scenarios"]["clients_4"]["tree_processes"] == (2 if era == "modern" else 6)
    assert rnd["direct"]["scenarios"]["clients_4"]["tree_processes"] == 1
    cmp = result["summary"]["sequential"]["gateway_vs_direct"]
    assert cmp["throughput_ratio"] > 0 and cmp["gateway_cpu_us_per_call"] > 0
    if era == "legacy":
        idle = result["idle_sessions"]
        assert "error" not in idle and "stopped_early" not in idle, idle
        assert [p["sessions"] for p in idle["checkpoints"]] == [0, 3, 0]
        assert idle["checkpoints"][1]["processes"] == idle["checkpoints"][0]["processes"] + 3
        assert idle["session_processes_left"] == [] and idle["delete_failures"] == []
        assert "gateway_kib_per_session" in idle
    text = http_bench.render(result)
    assert "== sequential" in text and "== clients_4" in text and "total mismatches: 0" in text
    assert children_of_this_process() == before


@pytest.fixture
def wrong_server(tmp_path):
    script = tmp_path / "wrong_server.py"
    script.write_text(WRONG_SERVER)
    port_file = tmp_path / "port"
    proc = subprocess.Popen([sys.executable, str(script), str(port_file)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not port_file.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "wrong server did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port_file.read_text()}/mcp"
    finally:
        proc.kill()
        proc.wait(10)


def test_wrong_answers_are_counted_and_reported(capsys, wrong_server):
    n = 90
    status, result = run_json(capsys, "--direct", wrong_server, "--gateway", wrong_server, "-n", str(n),
                              "--rounds", "1", "--warmup", "0", "--concurrency", "1,3", "--timeout", "30")

    assert status == 1   # mismatches, no errors
    assert result["errors"] == 0
    total = 2 * 2 * n    # two slots, two scenarios, every call measured
    kinds, notifications = {}, 0
    for slot in ("direct", "gateway"):
        run = result["rounds"][0][slot]
        assert run["shutdown"]["stopped_by"] == "external (left running)"
        for m in run["scenarios"].values():
            for kind, count in m["mismatch_kinds"].items():
                kinds[kind] = kinds.get(kind, 0) + count
            notifications += m["notifications"]
            assert m["mismatches"] == sum(m["mismatch_kinds"].values())
            assert len(m["mismatch_examples"]) == 5
    assert kinds == {"wrong_id": total // 3, "wrong_content": total // 3}
    assert result["mismatches"] == 2 * total // 3
    assert notifications == total // 3   # every SSE answer passed, its notification counted
    text = http_bench.render(result)
    assert "wrong_id: " in text and "wrong_content: " in text
    assert f"total mismatches: {2 * total // 3}" in text


def test_response_parser_framings():
    parse = http_client.parse_response
    whole = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: 1\r\n\r\nhiHTTP/1.1"
    resp, used = parse(whole)
    assert (resp.status, resp.body, resp.close, whole[used:]) == (200, b"hi", False, b"HTTP/1.1")
    assert parse(whole[:-11]) is None   # body incomplete
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: 1\r\n\r\n"
    for cut in range(len(chunked)):
        assert parse(chunked[:cut]) is None
    assert parse(chunked)[0].body == b"abcde"
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
    resp, used = parse(interim)
    assert (resp.status, resp.close, used) == (202, True, len(interim))
    until_eof = b"HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n{}"
    assert parse(until_eof) is None and parse(until_eof, eof=True)[0].body == b"{}"
    with pytest.raises(http_client.ProtocolError):
        parse(b"SSH-2.0-OpenSSH\r\n\r\n")
    assert http_client.sse_messages(b": c\r\n\r\nevent: m\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n") == [b'{"a":\n1}']
