"""The stdio front passes frames through byte for byte, in both directions and both eras."""
import json
import textwrap

from gateway import MODERN_META, PY, fixture, fixture_module, gateway, text_of, write_config


def test_server_frames_arrive_byte_for_byte(tmp_path):
    odd = fixture_module("oddformat")
    gw = gateway(write_config(tmp_path, {"odd": fixture("oddformat")}), "odd", tmp_path)
    try:
        for method, rid in [("initialize", 1), ("server/discover", "d-1"), ("tools/list", 2), ("ping", 3),
                            ("no/such", 4), ("initialize", 123456789012345678901234567890)]:
            gw.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": {}})
            assert gw.recv_raw() + b"\n" == odd.render(method, rid), method
        gw.send({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "odd"}})
        assert gw.recv_raw() + b"\n" == odd.NOTIFICATION
        assert gw.recv_raw() + b"\n" == odd.render("tools/call", 5)
    finally:
        assert gw.close() == 0


def test_client_frames_reach_the_server_byte_for_byte(tmp_path):
    """A recording upstream writes every raw line it receives; they must equal what the client sent."""
    recorder = tmp_path / "recorder.py"
    received = tmp_path / "received.bin"
    recorder.write_text(textwrap.dedent(f"""
        import json, sys
        with open({str(received)!r}, "ab") as out:
            for line in sys.stdin.buffer:
                out.write(line); out.flush()
                msg = json.loads(line)
                if isinstance(msg, dict) and "id" in msg and "method" in msg:
                    sys.stdout.buffer.write(b'{{"jsonrpc":"2.0","id":' + json.dumps(msg["id"]).encode()
                                            + b',"result":{{}}}}\\n')
                    sys.stdout.flush()
    """))
    config = write_config(tmp_path, {"rec": {"command": PY, "args": [str(recorder)]}})
    sent = [
        b'{ "id" : 1 ,\t"method" : "tools\\/call", "jsonrpc":"2.0", "params":{"name":"caf\\u00e9",'
        b'"arguments":{"n":1e400,"s":"\\ud800","big":123456789012345678901234567890,"z":-0.0}} }',
        '{"jsonrpc":"2.0","method":"notifications/message","params":{"text":"raw ☃ 𝄞"}}'.encode(),
        b'{"jsonrpc":"2.0","id":"x","result":{"a":[1, 2 ,3]}}  ',
    ]
    gw = gateway(config, "rec", tmp_path)
    try:
        for line in sent:
            gw.send(line)
        assert gw.recv()["id"] == 1
    finally:
        assert gw.close() == 0
    assert received.read_bytes() == b"".join(line + b"\n" for line in sent)


def test_modern_era_passes_through_without_a_handshake(tmp_path):
    gw = gateway(write_config(tmp_path, {"echo": fixture("echo")}), "echo", tmp_path)
    try:
        discover = gw.request("server/discover", {"_meta": MODERN_META})
        assert "2026-07-28" in discover["result"]["supportedVersions"]
        answer = gw.request("tools/call", {"name": "echo", "arguments": {"text": "modern"}, "_meta": MODERN_META})
        assert text_of(answer) == "modern" and answer["result"]["resultType"] == "complete"
    finally:
        gw.close()


def test_server_to_client_request_progress_and_batches(tmp_path):
    gw = gateway(write_config(tmp_path, {"echo": fixture("echo")}), "echo", tmp_path)
    try:
        gw.initialize()
        # a server->client sampling request travels to us while our tools/call is open
        gw.send({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                 "params": {"name": "sample", "arguments": {"prompt": "hi"}}})
        ask = gw.recv()
        assert ask["method"] == "sampling/createMessage"
        gw.send({"jsonrpc": "2.0", "id": ask["id"], "result": {"role": "assistant", "model": "m",
                 "content": {"type": "text", "text": "sampled!"}}})
        assert "sampled!" in text_of(gw.recv())
        # progress notifications arrive before the result
        gw.send({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
                 "params": {"name": "progress", "arguments": {"steps": 3}, "_meta": {"progressToken": "p"}}})
        frames = [gw.recv() for _ in range(4)]
        assert [f.get("method") for f in frames[:3]] == ["notifications/progress"] * 3
        assert frames[3]["id"] == 8
        # a batch is answered as one batch, with errors for its bad members
        gw.send(b'[{"jsonrpc":"2.0","id":"b1","method":"ping"}, {"jsonrpc":"2.0","method":"notifications/x"},'
                b' {"jsonrpc":"2.0","id":"b2","method":"tools/call","params":{"name":"add","arguments":{"a":1,"b":2}}},'
                b' {"id":"b3"}]')
        batch = gw.recv()
        assert isinstance(batch, list) and len(batch) == 3
        by_id = {item["id"]: item for item in batch}
        assert by_id["b1"]["result"] == {} and text_of(by_id["b2"]) == "3"
        assert by_id["b3"]["error"]["code"] == -32600
    finally:
        gw.close()


def test_cancellation_is_forwarded_and_the_session_goes_on(tmp_path):
    log = tmp_path / "slow.log"
    gw = gateway(write_config(tmp_path, {"slow": fixture("slow", "--log", str(log))}), "slow", tmp_path)
    try:
        gw.initialize()
        gw.send({"jsonrpc": "2.0", "id": 50, "method": "tools/call",
                 "params": {"name": "sleep", "arguments": {"seconds": 30}}})
        gw.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 50, "reason": "test"}})
        assert text_of(gw.call("echo", {"text": "after"})) == "after"
    finally:
        gw.close()
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert {"cancelled": 50} in entries


def test_requests_written_just_before_eof_are_still_answered(tmp_path):
    """`printf REQUEST | wire-gateway stdio` must answer, as the server itself would."""
    import subprocess

    requests = b"".join(
        json.dumps({"jsonrpc": "2.0", "id": i, "method": "server/discover", "params": {"_meta": MODERN_META}}).encode()
        + b"\n" for i in range(3))
    result = subprocess.run([PY, "-m", "wire_gateway", "stdio"], input=requests, capture_output=True, timeout=30)
    assert result.returncode == 0
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert [a["id"] for a in answers] == [0, 1, 2]
    assert all("supportedVersions" in a["result"] for a in answers)
