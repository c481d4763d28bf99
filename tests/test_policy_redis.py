"""The Redis store with a real redis-server: two gateway processes share the cache, its
invalidation and the pins; killing Redis mid-test degrades to memory without failing a
request, and the gateway reconnects by itself.

redis-server must be installed (CI's .ci/run installs it): without it these tests FAIL.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from gateway import fixture, gateway, text_of, write_config
from test_policy_e2e import cancel_and_shutdown_scenario, cli, notified, received, start, wait_for

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisProcess:
    def __init__(self, port: int | None = None) -> None:
        if not os.path.exists(REDIS_SERVER):
            pytest.fail("redis-server is not installed; install it (e.g. `apt-get install redis-server`, "
                        "as .ci/run does) to run the Redis store tests")
        self.port = port or free_port()
        self.proc = subprocess.Popen([REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.kill()
                    pytest.fail(f"redis-server did not start on port {self.port}")
                time.sleep(0.05)
        client.close()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def store(server: RedisProcess, prefix: str) -> dict[str, Any]:
    return {"backend": "redis", "url": server.url, "prefix": prefix}


def config_in(folder: Path, servers: dict[str, Any], **top: Any) -> Path:
    folder.mkdir(exist_ok=True)
    return write_config(folder, servers, **top)


def test_two_gateways_share_the_cache_and_its_invalidation(redis_server: RedisProcess, tmp_path: Path) -> None:
    prefix = f"wg-test-{uuid.uuid4().hex[:8]}:"
    logs = {name: tmp_path / f"echo-{name}.log" for name in "ab"}
    configs = {name: config_in(tmp_path / name, {"echo": {**fixture("echo", "--log", str(logs[name])),
                                                          "cache": {"tools_list_ttl": 300}}},
                               store=store(redis_server, prefix)) for name in "ab"}
    a = gateway(configs["a"], "echo", tmp_path / "a")
    b = gateway(configs["b"], "echo", tmp_path / "b")
    try:
        start(a)
        start(b)
        listed = a.request("tools/list", req_id="a1")
        assert len(received(logs["a"], "tools/list")) == 1
        shared = b.request("tools/list", req_id="b1")
        assert shared["id"] == "b1" and shared["result"] == listed["result"]
        assert received(logs["b"], "tools/list") == []            # B answered from A's entry in Redis

        status = cli(configs["a"], "cache", "status")
        assert status.returncode == 0, status.stderr
        assert "reachable: yes" in status.stdout
        assert status.stdout.splitlines()[-1].split() == ["echo", "1", "0"]

        assert text_of(a.call("touch_tools")) == "notified 1"     # the server says its list changed
        assert notified(a, "notifications/tools/list_changed")
        b.request("tools/list", req_id="b2")
        assert len(received(logs["b"], "tools/list")) == 1         # invalidated for B too

        b.request("tools/list", req_id="b3")
        assert len(received(logs["b"], "tools/list")) == 1
        cleared = cli(configs["a"], "cache", "clear", "--server", "echo")
        assert cleared.returncode == 0 and "echo: dropped 1 cached entry" in cleared.stdout
        a.request("tools/list", req_id="a2")
        assert len(received(logs["a"], "tools/list")) == 2

        # Redis goes away: requests keep being answered from memory, with one warning.
        redis_server.kill()
        for i in range(3):
            answer = a.request("tools/list", req_id=f"down-{i}")
            assert answer["result"] == listed["result"]
            assert text_of(a.call("echo", {"text": f"still {i}"})) == f"still {i}"
        assert a.log_text().count("is unreachable") == 1, a.log_text()
        assert "redis://127.0.0.1" in a.log_text()

        # ... and comes back: the gateway notices by itself.
        back = RedisProcess(redis_server.port)
        redis_server.proc = back.proc
        assert wait_for(lambda: "reachable again" in a.log_text(), 15), a.log_text()
        a.request("tools/list", req_id="after")
        b.request("tools/list", req_id="after")
        assert redis.Redis(port=back.port).keys(prefix + "cache:list:echo:*"), a.log_text()   # shared again
    finally:
        assert a.close() == 0, a.log_text()
        assert b.close() == 0, b.log_text()


def test_approval_reaches_a_running_gateway_through_pubsub(redis_server: RedisProcess, tmp_path: Path) -> None:
    prefix = f"wg-test-{uuid.uuid4().hex[:8]}:"
    log = tmp_path / "policy.log"
    config = write_config(tmp_path, {"p": {**fixture("policy", "--log", str(log), "--change-after", "1"),
                                           "cache": {"tools_list_ttl": 0}}},
                          store={**store(redis_server, prefix), "url": f"redis://:s3cret-pw@127.0.0.1:{redis_server.port}/0"})
    redis.Redis(port=redis_server.port).config_set("requirepass", "s3cret-pw")
    g = gateway(config, "p", tmp_path)
    try:
        start(g)
        assert "echo" in [t["name"] for t in g.request("tools/list")["result"]["tools"]]
        assert "echo" not in [t["name"] for t in g.request("tools/list")["result"]["tools"]]
        assert g.call("echo", {"text": "x"})["error"]["code"] == -31006   # remembered in the process
        pins = cli(config, "tools", "pins", "--server", "p")
        assert pins.returncode == 0 and "QUARANTINED echo" in pins.stdout
        approved = cli(config, "tools", "approve", "p", "echo")
        assert approved.returncode == 0, approved.stderr
        assert wait_for(lambda: "error" not in g.call("echo", {"text": "x"}), 5)   # pub/sub cleared the memo
        assert "echo" in [t["name"] for t in g.request("tools/list")["result"]["tools"]]
        assert received(log, "tools/call", "echo")
    finally:
        assert g.close() == 0, g.log_text()
    assert "s3cret-pw" not in g.log_text() and "redis://:***@127.0.0.1" in g.log_text()


def test_cancellation_and_shutdown_with_the_chain_in_tasks(redis_server: RedisProcess, tmp_path: Path) -> None:
    """With Redis the chain runs in the runner's tasks: still one answer per request, none for
    the cancelled one."""
    cancel_and_shutdown_scenario(tmp_path, store=store(redis_server, f"wg-test-{uuid.uuid4().hex[:8]}:"))
