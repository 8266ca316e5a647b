"""A local, scripted LLM server for the tests: speaks the OpenAI Chat Completions and the Anthropic
Messages + Message Batches wire protocols on a free 127.0.0.1 port, so the real `openai` and
`anthropic` SDKs talk to it through `base_url`.

Each test scripts it: `server.script` is a queue of actions consumed one per model request
(`Reply(text)`, `Status(code, retry_after)`, `Sleep(seconds)`); when the queue is empty the
`responder(prompt_text) -> reply text` answers. Every request received is logged in `server.log`
(method, path, JSON body, headers) so tests can count what reached the wire.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass
class Reply:
    text: str
    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass
class Status:
    code: int
    retry_after: float | None = None
    body: str = '{"error": {"type": "scripted", "message": "scripted failure"}}'


@dataclass
class Sleep:
    """Hold the connection this long before answering (the client should time out first)."""
    seconds: float


@dataclass
class Logged:
    method: str
    path: str
    body: Any
    headers: dict[str, str]


def prompt_text(body: dict[str, Any]) -> str:
    """The whole conversation as one string (system + every turn), from either protocol's body."""
    parts = [body.get("system") or ""] if isinstance(body.get("system"), str) else []
    for m in body.get("messages", []):
        content = m.get("content")
        parts.append(content if isinstance(content, str) else json.dumps(content))
    return "\n".join(parts)


class LLMServer:
    def __init__(self, responder: Callable[[str], str] | None = None) -> None:
        self.responder = responder or (lambda prompt: '{"ok": true}')
        self.script: list[Reply | Status | Sleep] = []
        self.log: list[Logged] = []
        self.batches: dict[str, dict[str, Any]] = {}
        self.batch_polls_before_end = 1  # polls answered "in_progress" before a batch ends
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> "LLMServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # what tests look at ------------------------------------------------------------------------
    def model_calls(self) -> list[Logged]:
        """Requests that asked a model for text (not batch management)."""
        return [r for r in self.log if r.path.endswith("/chat/completions") or r.path.endswith("/messages")]

    # behaviour ---------------------------------------------------------------------------------
    def _next_action(self, prompt: str) -> Reply | Status | Sleep:
        with self._lock:
            if self.script:
                return self.script.pop(0)
        return Reply(self.responder(prompt))

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _send(self, code: int, payload: Any, headers: dict[str, str] | None = None,
                      content_type: str = "application/json") -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

            def _record(self, body: Any) -> None:
                with server._lock:
                    server.log.append(Logged(self.command, self.path, body,
                                             {k.lower(): v for k, v in self.headers.items()}))

            def do_GET(self) -> None:  # noqa: N802
                self._record(None)
                parts = self.path.rstrip("/").split("/")
                if "batches" in parts:
                    batch_id = parts[parts.index("batches") + 1]
                    batch = server.batches.get(batch_id)
                    if batch is None:
                        return self._send(404, {"type": "error", "error": {"type": "not_found_error",
                                                                           "message": "no such batch"}})
                    if parts[-1] == "results":
                        lines = "\n".join(json.dumps(r) for r in batch["results"]) + "\n"
                        return self._send(200, lines.encode(), content_type="application/binary")
                    batch["polls"] += 1
                    return self._send(200, server._batch_json(batch))
                self._send(404, {"error": "unknown path"})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                self._record(body)
                if self.path.endswith("/messages/batches"):
                    return self._send(200, server._create_batch(body))
                if not (self.path.endswith("/chat/completions") or self.path.endswith("/messages")):
                    return self._send(404, {"error": "unknown path"})
                anthropic = self.path.endswith("/messages")
                action = server._next_action(prompt_text(body))
                if isinstance(action, Sleep):
                    time.sleep(action.seconds)
                    action = Reply(server.responder(prompt_text(body)))
                if isinstance(action, Status):
                    headers = {} if action.retry_after is None else {"retry-after": str(action.retry_after)}
                    return self._send(action.code, json.loads(action.body), headers)
                payload = server._message(body, action) if anthropic else server._chat(body, action)
                self._send(200, payload)

        return Handler

    # wire formats ------------------------------------------------------------------------------
    @staticmethod
    def _usage(body: dict[str, Any], reply: Reply) -> tuple[int, int]:
        tin = reply.input_tokens if reply.input_tokens is not None else max(1, len(prompt_text(body)) // 4)
        tout = reply.output_tokens if reply.output_tokens is not None else max(1, len(reply.text) // 4)
        return tin, tout

    def _chat(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        tin, tout = self._usage(body, reply)
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:8]}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "test"),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": reply.text}}],
                "usage": {"prompt_tokens": tin, "completion_tokens": tout, "total_tokens": tin + tout}}

    def _message(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        tin, tout = self._usage(body, reply)
        return {"id": f"msg_{uuid.uuid4().hex[:8]}", "type": "message", "role": "assistant",
                "model": body.get("model", "test"), "content": [{"type": "text", "text": reply.text}],
                "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": tin, "output_tokens": tout}}

    def _create_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        batch_id = f"msgbatch_{uuid.uuid4().hex[:12]}"
        results = []
        for item in body["requests"]:
            action = self._next_action(prompt_text(item["params"]))
            if isinstance(action, Status):
                result = {"type": "errored", "error": {"type": "error", "error": {
                    "type": "api_error", "message": "scripted"}}}
            else:
                reply = action if isinstance(action, Reply) else Reply(self.responder(prompt_text(item["params"])))
                result = {"type": "succeeded", "message": self._message(item["params"], reply)}
            results.append({"custom_id": item["custom_id"], "result": result})
        batch = {"id": batch_id, "results": results, "polls": 0, "n": len(results)}
        self.batches[batch_id] = batch
        return self._batch_json(batch)

    def _batch_json(self, batch: dict[str, Any]) -> dict[str, Any]:
        ended = batch["polls"] > self.batch_polls_before_end
        n = batch["n"]
        return {"id": batch["id"], "type": "message_batch",
                "processing_status": "ended" if ended else "in_progress",
                "request_counts": {"processing": 0 if ended else n, "succeeded": n if ended else 0,
                                   "errored": 0, "canceled": 0, "expired": 0},
                "created_at": "2026-01-01T00:00:00Z", "expires_at": "2026-01-02T00:00:00Z",
                "ended_at": "2026-01-01T00:01:00Z" if ended else None, "archived_at": None,
                "cancel_initiated_at": None,
                "results_url": f"{self.base_url}/v1/messages/batches/{batch['id']}/results" if ended else None}
