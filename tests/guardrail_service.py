"""A fake guardrail provider for the tests: both shapes of wire_gateway.guardrails.remote, over real HTTP.

Usage: python tests/guardrail_service.py --port-file PATH [--port 0] [--api-key KEY] [--delay SECONDS]

A tiny ASGI app served by hypercorn's trio worker on 127.0.0.1 (the port is written to
--port-file once listening). It stands in for the Enkrypt AI API, which cannot be reached
from the tests, and for a user's own webhook. What it says depends on markers in the text:

  INJECT          injection_attack (enkrypt summary 1)
  SECRET-PII      pii (enkrypt summary 1)
  TOXIC           toxicity (enkrypt summary: a list of categories)
  KEYWORD         keyword_detector (enkrypt summary key `keyword_detected`, as the real API spells it)
  SLEEP=<s>       answer after s seconds (--delay applies to every request)
  FAIL-500        HTTP 500 with a plain-text body
  FAIL-ERROR      200 with {"error": "..."}
  FAIL-ECHO       200 with {"error": "..."} quoting the whole text (a service that echoes its input)
  FAIL-MALFORMED  200 with a body that is not JSON
  FAIL-SHAPE      200 with JSON of the wrong shape
  FAIL-HUGE       200 with a 2 MiB JSON answer
  DRIP            the answer one byte every 0.2 s (each read is quick, the whole is slow)

Routes: `POST /guardrails/policy/detect` (enkrypt: the `apikey` header must be --api-key, else
401 with {"error"}; `X-Enkrypt-Policy` must be present, else 400), `POST /webhook` (webhook:
`Authorization: Bearer <--api-key>`, else 401), `GET /requests` (what was received:
{"count": N, "last": {"path", "headers", "body", "client_port"}}, the body parsed). SIGTERM: exit 0.

`Service` starts it as a subprocess and reads the record, for the tests.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

ENKRYPT_DETECTORS = ("injection_attack", "pii", "toxicity", "nsfw", "bias", "sponge_attack",
                     "keyword_detected", "topic_detector", "policy_violation")
MARKERS = {"INJECT": "injection_attack", "SECRET-PII": "pii", "TOXIC": "toxicity", "KEYWORD": "keyword_detector"}
_SLEEP = re.compile(r"SLEEP=([0-9.]+)")


class Record:
    def __init__(self) -> None:
        self.count = 0
        self.last: dict[str, Any] | None = None


def found(text: str) -> list[str]:
    return [name for marker, name in MARKERS.items() if marker in text]


def enkrypt_answer(text: str) -> dict[str, Any]:
    hits = found(text)
    summary: dict[str, Any] = dict.fromkeys(ENKRYPT_DETECTORS, 0)
    details: dict[str, Any] = {}
    for name in hits:
        if name == "toxicity":
            summary["toxicity"] = ["toxicity", "insult"]
        elif name == "keyword_detector":
            summary["keyword_detected"] = 1
            details["keyword_detector"] = {"detected_keywords": ["KEYWORD"]}
        else:
            summary[name] = 1
    return {"summary": summary, "details": details}


def webhook_answer(text: str) -> dict[str, Any]:
    return {"violations": [{"detector": name, "reason": f"marker for {name}"} for name in found(text)]}


def make_app(opts: argparse.Namespace, record: Record) -> Any:
    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return

        async def respond(status: int, body: Any, ctype: bytes = b"application/json") -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", ctype), (b"content-length", b"%d" % len(data))]})
            await send({"type": "http.response.body", "body": data})

        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/requests":
            return await respond(200, {"count": record.count, "last": record.last})
        if method != "POST" or path not in ("/guardrails/policy/detect", "/webhook"):
            return await respond(404, {"error": f"no route {method} {path}"})
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = json.loads(b"".join(chunks))
        except ValueError:
            body = None
        record.count += 1
        record.last = {"path": path, "headers": headers, "body": body, "client_port": scope["client"][1]}
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str):
            return await respond(422, {"error": "the body must be an object with a text string"})
        delay = opts.delay + sum(float(s) for s in _SLEEP.findall(text))
        if delay:
            await trio.sleep(delay)
        enkrypt = path == "/guardrails/policy/detect"
        if enkrypt and headers.get("apikey") != opts.api_key:
            return await respond(401, {"error": "invalid api key"})
        if not enkrypt and headers.get("authorization") != f"Bearer {opts.api_key}":
            return await respond(401, {"error": "invalid bearer token"})
        if enkrypt and not headers.get("x-enkrypt-policy"):
            return await respond(400, {"error": "the X-Enkrypt-Policy header is missing"})
        if "FAIL-500" in text:
            return await respond(500, b"Internal Server Error", b"text/plain")
        if "FAIL-ERROR" in text:
            return await respond(200, {"error": "model overloaded, try later"})
        if "FAIL-ECHO" in text:
            return await respond(200, {"error": f"cannot judge: {text}"})
        if "FAIL-MALFORMED" in text:
            return await respond(200, b'{"summary": {"pii": 1', b"application/json")
        if "FAIL-SHAPE" in text:
            return await respond(200, {"summary": "all good"} if enkrypt else {"violations": [{"why": "?"}]})
        if "FAIL-HUGE" in text:
            return await respond(200, {"summary": {}, "details": {"padding": "x" * (2 << 20)}})
        if "DRIP" in text:
            start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
            await send(start)
            for byte in json.dumps(webhook_answer(text)).encode():
                await send({"type": "http.response.body", "body": bytes([byte]), "more_body": True})
                await trio.sleep(0.2)
            return await send({"type": "http.response.body", "body": b""})
        await respond(200, enkrypt_answer(text) if enkrypt else webhook_answer(text))

    return app


async def run(opts: argparse.Namespace) -> None:
    config = Config()
    config.bind = [f"127.0.0.1:{opts.port}"]
    config.accesslog = None
    config.include_server_header = False
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve, make_app(opts, Record()), config))
        tmp = opts.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(binds[0].rsplit(":", 1)[1] + "\n")
        os.replace(tmp, opts.port_file)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--api-key", default="test-key-0123456789")
    parser.add_argument("--delay", type=float, default=0.0)
    opts = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    trio.run(run, opts)


class Service:
    """The service as a subprocess of the test process: `url`, `requests()`, `stop()`."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        port_file = tmp_path / "guardrail.port"
        self._log = open(tmp_path / "guardrail.log", "wb")   # noqa: SIM115 - the child's output, closed in stop()
        self.proc = subprocess.Popen([sys.executable, __file__, "--port-file", str(port_file), *args],
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + 20
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the guardrail service did not start:\n"
                                   + (tmp_path / "guardrail.log").read_text(errors="replace"))
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{int(port_file.read_text())}"

    def requests(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/requests", timeout=5) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


if __name__ == "__main__":
    main()
