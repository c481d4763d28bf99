"""The test helpers themselves: what one test's client saw must not show up in another's."""
import sys
import textwrap

from gateway import LineClient

# A peer that sends a notification before each answer: what `request` keeps in `other`.
NOISY_PEER = textwrap.dedent("""
    import json, sys
    for line in sys.stdin:
        msg = json.loads(line)
        print(json.dumps({"jsonrpc": "2.0", "method": "notifications/message", "params": {}}), flush=True)
        print(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {}}), flush=True)
""")


def test_frames_seen_meanwhile_belong_to_the_client_that_saw_them() -> None:
    noisy = LineClient([sys.executable, "-c", NOISY_PEER])
    quiet = LineClient([sys.executable, "-c", "import sys; sys.stdin.read()"])
    try:
        assert noisy.request("ping")["result"] == {}
        assert [f["method"] for f in noisy.other] == ["notifications/message"]
        assert quiet.other == []
    finally:
        assert noisy.close() == 0 and quiet.close() == 0
