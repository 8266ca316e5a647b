"""A recording HTTP proxy for the real-server tests: everything sent to it on 127.0.0.1 goes on, unchanged, to
an upstream server (llama.cpp's llama-server), and each exchange is logged (path, the JSON request body, the
upstream's status and JSON reply), so a test can compare what the server itself reported (`usage`) and which
requests reached it with what the pipeline recorded. It rewrites nothing."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Exchange:
    path: str
    body: dict[str, Any]
    status: int
    reply: dict[str, Any]
    delivered: bool = True  # False: the client had gone (it timed out) before the reply reached it

    @property
    def usage(self) -> dict[str, Any]:
        return self.reply.get("usage") or {}


class RecordingProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.log: list[Exchange] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                req = urllib.request.Request(proxy.upstream + self.path, data=raw, method="POST",
                                             headers={"content-type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=600) as reply:
                        status, data = reply.status, reply.read()
                except urllib.error.HTTPError as err:
                    status, data = err.code, err.read()
                try:
                    parsed = json.loads(data)
                except ValueError:
                    parsed = {}
                exchange = Exchange(self.path, json.loads(raw or b"{}"), status, parsed)
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    exchange.delivered = False
                with proxy._lock:
                    proxy.log.append(exchange)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def chats(self) -> list[Exchange]:
        with self._lock:
            return [e for e in self.log if e.path.endswith("/chat/completions")]

    def __enter__(self) -> "RecordingProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
