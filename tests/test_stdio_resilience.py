"""Crashes, crash loops, bad input, vanished clients: clear errors, no hang, no orphan."""
import json
import os
import signal
import subprocess
import textwrap
import time

from gateway import PY, LineClient, alive, fixture, gateway, kill_if_alive, text_of, wait_gone, write_config

FAST_RESTART = {"initial_delay": 0.05, "max_delay": 0.5, "jitter": 0.1}


def test_crash_mid_call_gives_an_error_and_the_next_call_works_on_a_new_process(tmp_path):
    server = {**fixture("crashing"), "restart": FAST_RESTART}
    gw = gateway(write_config(tmp_path, {"crashy": server}), "crashy", tmp_path)
    try:
        gw.initialize()
        first_pid = int(text_of(gw.call("pid")))
        answer = gw.call("crash")
        err = answer["error"]
        assert err["code"] == -31001
        assert "crashy" in err["message"] and "exit status 3" in err["message"]
        assert err["data"]["server"] == "crashy" and err["data"]["lastExit"] == "exit status 3"
        # same client session, no new initialize from the client: the gateway replayed it
        second_pid = int(text_of(gw.call("pid")))
        assert second_pid != first_pid
        assert not alive(first_pid)
        assert text_of(gw.call("echo", {"text": "still here"})) == "still here"
    finally:
        assert gw.close() == 0
    assert wait_gone(second_pid)
    assert "replayed the session's initialize" in gw.log_text()
    assert "speaks the legacy era" in gw.log_text()


def test_every_request_in_flight_to_a_dead_server_gets_exactly_one_error(tmp_path):
    server = {**fixture("crashing", "--crash-after", "4"), "restart": FAST_RESTART}
    gw = gateway(write_config(tmp_path, {"c": server}), "c", tmp_path)
    try:
        gw.initialize()
        for i in range(1, 4):  # three calls answered, then the 4th kills the process with 3 more behind it
            gw.send({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                     "params": {"name": "echo", "arguments": {"text": str(i)}}})
        answers = {}
        for i in range(4, 8):
            gw.send({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                     "params": {"name": "echo", "arguments": {"text": str(i)}}})
        while len(answers) < 7:
            frame = gw.recv()
            assert frame["id"] not in answers
            answers[frame["id"]] = frame
        assert all("result" in answers[i] for i in (1, 2, 3))
        assert answers[4]["error"]["code"] == -31001
        # 5..7 were either written to the dead process (error) or answered by its successor
        for i in (5, 6, 7):
            assert "result" in answers[i] or answers[i]["error"]["code"] == -31001
        assert text_of(gw.call("echo", {"text": "ok"})) == "ok"
    finally:
        gw.close()


def test_crash_loop_is_reported_not_spun_and_recovers(tmp_path):
    flag = tmp_path / "broken"
    flag.write_text("yes")
    server = {**fixture("crashing", "--crash-on-start-file", str(flag)),
              "restart": {**FAST_RESTART, "crash_loop_exits": 3, "crash_loop_window": 30, "crash_loop_cooldown": 1.5}}
    gw = gateway(write_config(tmp_path, {"loop": server}), "loop", tmp_path)
    try:
        answer = gw.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                           "clientInfo": {"name": "t", "version": "0"}}, timeout=15)
        # written to a process that died at once (-31001), or refused once the loop was seen (-31002)
        assert answer["error"]["code"] in (-31001, -31002)
        time.sleep(0.5)  # three quick exits: the loop is detected
        fast = time.monotonic()
        err = gw.request("ping")["error"]
        assert time.monotonic() - fast < 1.0   # fails fast during the cool-down
        assert err["code"] == -31002 and "crash-looping" in err["message"]
        assert err["data"]["stderrTail"]  # what the server said before dying
        flag.unlink()
        time.sleep(2.0)
        assert "result" in gw.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                                     "clientInfo": {"name": "t", "version": "0"}}, timeout=15)
    finally:
        gw.close()
    log = gw.log_text()
    assert "crash-looping" in log
    assert log.count("started pid") <= 6  # paced, not spun


def test_a_server_that_cannot_start_gets_a_clear_error(tmp_path):
    server = {"command": "/nonexistent/mcp-server", "restart": {**FAST_RESTART, "crash_loop_exits": 2}}
    gw = gateway(write_config(tmp_path, {"ghost": server}), "ghost", tmp_path)
    try:
        err = gw.request("ping", timeout=15)["error"]
        assert err["code"] == -31002
        assert "could not start '/nonexistent/mcp-server'" in err["data"]["lastExit"]
    finally:
        assert gw.close() == 0


def test_bad_input_gets_errors_and_the_connection_survives(tmp_path):
    config = write_config(tmp_path, {"echo": fixture("echo")}, limits={"max_frame_bytes": 4096})
    gw = gateway(config, "echo", tmp_path)
    try:
        gw.initialize()
        gw.send(b"this is not json")
        assert gw.recv()["error"]["code"] == -32700
        gw.send(b'{"jsonrpc":"2.0","id":31,"method":')          # truncated: id recovered
        assert gw.recv()["id"] == 31
        gw.send(b'{"jsonrpc":"1.0","id":32,"method":"ping"}')  # not JSON-RPC 2.0
        reply = gw.recv()
        assert reply["id"] == 32 and reply["error"]["code"] == -32600
        gw.send(b'{"jsonrpc":"2.0","id":33,"method":"tools/call","params":{"text":"' + b"x" * 20000 + b'"}}')
        reply = gw.recv()
        assert reply["id"] == 33 and reply["error"]["code"] == -32600 and "4096" in reply["error"]["message"]
        big = 10 ** 40
        assert gw.request("ping", req_id=big)["result"] == {}
        long_id = "i" * 3000
        assert gw.request("ping", req_id=long_id)["result"] == {}
        # A call that is still running when its id comes again (an echo could be answered first).
        gw.send({"jsonrpc": "2.0", "id": 34, "method": "tools/call",
                 "params": {"name": "wait", "arguments": {"seconds": 0.5}}})
        gw.send({"jsonrpc": "2.0", "id": 34, "method": "ping"})  # duplicate id in flight
        replies = {json.dumps(gw.recv(), sort_keys=True) for _ in range(2)}
        codes = sorted(json.loads(r).get("error", {}).get("code", 0) for r in replies)
        assert codes == [-32600, 0]
        # a server answer over the limit becomes an error for that request, not a dead stream
        reply = gw.call("big", {"size": 6000})
        assert reply["error"]["code"] == -31003 and "4096" in reply["error"]["message"]
        assert text_of(gw.call("echo", {"text": "fine"})) == "fine"
    finally:
        assert gw.close() == 0


def test_in_flight_limit_answers_the_excess_at_once(tmp_path):
    config = write_config(tmp_path, {"slow": fixture("slow")}, limits={"max_in_flight": 2})
    gw = gateway(config, "slow", tmp_path)
    try:
        gw.initialize()
        for i in (1, 2):
            gw.send({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                     "params": {"name": "sleep", "arguments": {"seconds": 0.5}}})
        refused = gw.request("ping", req_id=3)
        assert refused["error"]["code"] == -31004 and "limit 2" in refused["error"]["message"]
        assert sorted(gw.recv()["id"] for _ in range(2)) == [1, 2]
        assert gw.request("ping")["result"] == {}
    finally:
        gw.close()


def test_noisy_server_stdout_junk_is_dropped_and_stderr_is_logged_masked(tmp_path):
    gw = gateway(write_config(tmp_path, {"noisy": fixture("noisy")}), "noisy", tmp_path)
    try:
        gw.initialize()
        assert text_of(gw.call("echo", {"text": "clean"})) == "clean"
        assert gw.other == []   # nothing but our answers reached us
    finally:
        gw.close()
    log = gw.log_text()
    assert "[noisy stderr]" in log and "not a JSON-RPC message" in log
    assert "sk-test-1234567890abcdef" not in log and "Bearer sk-t***" in log


def server_pid(gw):
    gw.initialize()
    return int(text_of(gw.call("pid")))


def test_client_closing_stdin_ends_everything(tmp_path):
    gw = gateway(write_config(tmp_path, {"echo": fixture("echo")}), "echo", tmp_path)
    pid = server_pid(gw)
    assert gw.close(timeout=10) == 0
    assert wait_gone(pid)


def test_client_vanishing_mid_call_ends_everything(tmp_path):
    """The client is a real process that dies (SIGKILL) with a call in flight."""
    config = write_config(tmp_path, {"slow": fixture("slow")})
    client = tmp_path / "client.py"
    client.write_text(textwrap.dedent(f"""
        import json, subprocess, sys, time
        gw = subprocess.Popen([{PY!r}, "-m", "wire_gateway", "stdio", "--config", {str(config)!r}],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        def send(msg):
            gw.stdin.write(json.dumps(msg).encode() + b"\\n"); gw.stdin.flush()
        send({{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {{"protocolVersion": "2025-11-25",
              "capabilities": {{}}, "clientInfo": {{"name": "c", "version": "0"}}}}}})
        gw.stdout.readline()
        send({{"jsonrpc": "2.0", "method": "notifications/initialized"}})
        send({{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {{"name": "pid", "arguments": {{}}}}}})
        server_pid = json.loads(gw.stdout.readline())["result"]["content"][0]["text"]
        send({{"jsonrpc": "2.0", "id": 3, "method": "tools/call",
              "params": {{"name": "sleep", "arguments": {{"seconds": 60}}}}}})
        print(gw.pid, server_pid, flush=True)
        time.sleep(600)
    """))
    proc = subprocess.Popen([PY, str(client)], stdout=subprocess.PIPE, text=True)
    try:
        gateway_pid, pid = map(int, proc.stdout.readline().split())
        time.sleep(0.2)
        proc.kill()
        proc.wait(5)
        assert wait_gone(gateway_pid, 15), "the gateway outlived its client"
        assert wait_gone(pid, 15), "the server outlived the gateway"
    finally:
        proc.kill()


def test_sigterm_to_the_gateway_ends_the_server(tmp_path):
    gw = gateway(write_config(tmp_path, {"echo": fixture("echo")}), "echo", tmp_path)
    pid = server_pid(gw)
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(timeout=15) == 0
    assert wait_gone(pid)


def test_stubborn_server_and_its_children_are_killed_within_bounds(tmp_path):
    """A server that ignores stdin EOF and SIGTERM, and has a child of its own."""
    stubborn = tmp_path / "stubborn.py"
    pids = tmp_path / "pids"
    stubborn.write_text(textwrap.dedent(f"""
        import json, os, signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c",
                                  "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
        open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{child.pid}}")
        for line in sys.stdin:
            msg = json.loads(line)
            sys.stdout.write(json.dumps({{"jsonrpc": "2.0", "id": msg["id"], "result": {{}}}}) + "\\n")
            sys.stdout.flush()
        time.sleep(600)   # ignores EOF too
    """))
    server = {"command": PY, "args": [str(stubborn)], "shutdown": {"stdin_close_timeout": 0.3, "sigterm_timeout": 0.3}}
    gw = gateway(write_config(tmp_path, {"stubborn": server}), "stubborn", tmp_path)
    try:
        assert gw.request("ping")["result"] == {}
        leader, child = map(int, pids.read_text().split())
        started = time.monotonic()
        assert gw.close(timeout=15) == 0
        assert time.monotonic() - started < 5
        assert wait_gone(leader, 5) and wait_gone(child, 5)
    finally:
        for pid in map(int, pids.read_text().split()) if pids.exists() else ():
            kill_if_alive(pid)
    assert "SIGKILL" in gw.log_text()


def test_logs_never_reach_stdout_and_go_to_a_file_when_asked(tmp_path):
    config = write_config(tmp_path, {"echo": fixture("echo")})
    log_file = tmp_path / "gw.log"
    gw = LineClient([PY, "-m", "wire_gateway", "stdio", "--config", str(config), "--log-file", str(log_file),
                     "--log-level", "debug"])
    try:
        gw.other = []
        gw.initialize()
        gw.call("echo", {"text": "x"})
    finally:
        gw.close()
    assert "started pid" in log_file.read_text()


def test_unknown_server_name_is_a_clear_error(tmp_path):
    config = write_config(tmp_path, {"echo": fixture("echo"), "other": fixture("echo")})
    result = LineClient([PY, "-m", "wire_gateway", "stdio", "--config", str(config), "--server", "nope"],
                        log_path=tmp_path / "err.log")
    assert result.close() == 2
    assert "no server named 'nope'" in result.log_text() and "echo, other" in result.log_text()


def test_a_terminal_is_left_in_blocking_mode(tmp_path):
    """Run interactively (README's first command), the gateway must hand the tty back intact."""
    import pty

    master, slave = pty.openpty()
    try:
        assert os.get_blocking(slave)
        proc = subprocess.Popen([PY, "-m", "wire_gateway", "stdio"], stdin=slave, stdout=slave,
                                stderr=subprocess.DEVNULL)
        os.write(master, b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n')
        seen = b""
        deadline = time.monotonic() + 15
        while b'"result"' not in seen and time.monotonic() < deadline:
            seen += os.read(master, 4096)
        assert b'"id":1,"result":{}' in seen
        os.write(master, b"\x04")  # Ctrl-D: end of input
        assert proc.wait(timeout=15) == 0
        assert os.get_blocking(slave), "the gateway left the terminal non-blocking"
    finally:
        os.close(master)
        os.close(slave)


def test_answer_to_a_dead_process_request_is_not_given_to_its_successor(tmp_path):
    """The server asks the client something (roots/list), then dies; the client's late answer
    must not reach the restarted process, which never asked."""
    received = tmp_path / "received.log"
    script = tmp_path / "ask_and_die.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, sys
        log = open({str(received)!r}, "a")
        for line in sys.stdin:
            log.write(line); log.flush()
            msg = json.loads(line)
            if msg.get("method") == "tools/call":
                sys.stdout.write(json.dumps({{"jsonrpc": "2.0", "id": "s1", "method": "roots/list"}}) + "\\n")
                sys.stdout.flush()
                os._exit(5)
            if "id" in msg and "method" in msg:
                sys.stdout.write(json.dumps({{"jsonrpc": "2.0", "id": msg["id"], "result": {{}}}}) + "\\n")
                sys.stdout.flush()
    """))
    server = {"command": PY, "args": [str(script)], "restart": FAST_RESTART}
    gw = gateway(write_config(tmp_path, {"asker": server}), "asker", tmp_path)
    try:
        gw.initialize()
        gw.send({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "x", "arguments": {}}})
        ask = gw.recv()
        assert ask["method"] == "roots/list"
        assert gw.recv()["error"]["code"] == -31001
        gw.send({"jsonrpc": "2.0", "id": "s1", "result": {"roots": []}})   # too late: its asker is gone
        assert gw.request("ping")["result"] == {}                         # served by the successor
    finally:
        gw.close()
    lines = [json.loads(line) for line in received.read_text().splitlines()]
    assert [m.get("method") for m in lines].count("initialize") == 2       # the replay
    assert not any(m.get("id") == "s1" for m in lines)
    assert "dropping the client's answer" in gw.log_text()


def test_a_restarted_server_reusing_a_request_id_gets_its_own_answer(tmp_path):
    """Both processes ask the client something under the same id "s1"; the dead one's late
    answer must not become the answer to its successor's question."""
    starts = tmp_path / "starts"
    script = tmp_path / "asker.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, sys
        with open({str(starts)!r}, "a") as f:
            f.write("x")
        generation = len(open({str(starts)!r}).read())
        def send(msg):
            sys.stdout.write(json.dumps(msg) + "\\n"); sys.stdout.flush()
        asking = None
        for line in sys.stdin:
            msg = json.loads(line)
            if msg.get("method") == "tools/call":
                send({{"jsonrpc": "2.0", "id": "s1", "method": "roots/list"}})
                if generation == 1:
                    os._exit(5)
                asking = msg["id"]
            elif msg.get("id") == "s1" and "result" in msg:
                send({{"jsonrpc": "2.0", "id": asking, "result": {{"content": [
                    {{"type": "text", "text": json.dumps(msg["result"])}}]}}}})
            elif "method" in msg and "id" in msg:
                send({{"jsonrpc": "2.0", "id": msg["id"], "result": {{}}}})
    """))
    server = {"command": PY, "args": [str(script)], "restart": FAST_RESTART}
    gw = gateway(write_config(tmp_path, {"asker": server}), "asker", tmp_path)
    try:
        gw.initialize()
        gw.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x", "arguments": {}}})
        first = gw.recv()
        assert first["id"] == "s1" and gw.recv()["error"]["code"] == -31001
        gw.send({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "x", "arguments": {}}})
        second = gw.recv()
        assert second["method"] == "roots/list" and second["id"] != "s1"   # the successor's, told apart
        gw.send({"jsonrpc": "2.0", "id": "s1", "result": {"roots": ["late, for the dead process"]}})
        gw.send({"jsonrpc": "2.0", "id": second["id"], "result": {"roots": ["for the successor"]}})
        answer = gw.recv()
        assert answer["id"] == 2
        assert json.loads(answer["result"]["content"][0]["text"]) == {"roots": ["for the successor"]}
    finally:
        gw.close()
