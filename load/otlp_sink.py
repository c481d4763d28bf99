"""A tiny OTLP/HTTP receiver for benchmarks: takes `POST /v1/traces` and answers 200, counting what
arrived (requests and bytes) without decoding it, so a gateway with tracing on exports for real (the
SDK's batch processor, protobuf encoding, the HTTP POST) and the receiver costs the gateway nothing.
Runs in a thread of the load tool; `policy-bench`'s `tracing` pair points the gateways at it with
`OTEL_EXPORTER_OTLP_ENDPOINT`."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# An empty ExportTraceServiceResponse is an empty protobuf message: no bytes.
_EMPTY = b""


class OtlpSink:
    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"     # keep-alive: the exporter's session reuses its connection

            def do_POST(self) -> None:
                size = int(self.headers.get("content-length", "0"))
                self.rfile.read(size)
                sink.requests += 1
                sink.bytes += size
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(_EMPTY)))
                self.end_headers()
                self.wfile.write(_EMPTY)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
