"""A local, scripted LLM server (the tests, `make chaos`, the benchmarks; a way to try an engine's wiring offline): speaks the OpenAI Chat Completions and the Anthropic
Messages + Message Batches wire protocols on a free 127.0.0.1 port, so the real `openai` and
`anthropic` SDKs talk to it through `base_url`. The OpenAI Batch API (a JSONL file upload, a batch on it,
its status, its output and error files) is spoken too.

Each test scripts it: `server.script` is a queue of actions consumed one per model request
(`Reply(text)`, `Status(code, retry_after)`, `Sleep(seconds)`); when the queue is empty the
`responder(prompt_text) -> reply text` answers. Every request received is logged in `server.log`
(method, path, JSON body, headers, and how it was answered: status, tokens, what kind of answer, when the
answer was written) so tests can count what reached the wire and compare it with the client's accounting.

`pipeline_model` is a responder that answers every prompt of the pipeline (profiles, like/dislike scores,
group partitions, group similarities) validly and deterministically: the same prompt always gets the same
reply. `Chaos` makes the server misbehave, seeded and bounded: 5xx errors, malformed replies (a broken HTTP
body, or a model reply that is not JSON), latency, and 429 storms with Retry-After. It listens on 127.0.0.1
only. scripts/chaos.py imports this module too (one server implementation for tests and harness).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass
class Reply:
    text: str
    input_tokens: int | None = None
    output_tokens: int | None = None
    usage: bool = True  # False: the reply carries no `usage` object at all (some OpenAI-compatible servers)
    # prompt caching, as the providers report it: of the input tokens, how many were read from / written to the
    # prompt cache (Anthropic: `cache_read_input_tokens` / `cache_creation_input_tokens` beside an `input_tokens`
    # that counts only the rest; OpenAI: `prompt_tokens_details.cached_tokens`, part of `prompt_tokens`)
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


@dataclass
class Status:
    """An HTTP error. `retry_after` is sent as `Retry-After: <seconds>`; `headers` adds any others verbatim
    (a `Retry-After` HTTP-date, `retry-after-ms`)."""
    code: int
    retry_after: float | None = None
    body: str = '{"error": {"type": "scripted", "message": "scripted failure"}}'
    headers: dict[str, str] = field(default_factory=dict)


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
    # how the server answered (model calls): "reply", "error" (5xx), "429", "malformed_wire" (a 200 whose
    # body is not valid JSON), "malformed_reply" (a well-formed 200 whose text is not JSON),
    # "incomplete_request" (the client died while sending the body: no answer, body None)
    outcome: str | None = None
    status: int | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    answered_at: float | None = None  # monotonic time the whole answer was written (None: never delivered)


@dataclass
class Chaos:
    """Seeded, bounded misbehaviour. Each model request is, in this order of checks: part of a 429 storm
    (every `storm_every`-th request starts `storm_length` answers 429 with Retry-After), a 5xx error
    (`error_rate`), a malformed answer (`malformed_rate`, half a broken HTTP body, half a reply text that is
    not JSON), or a good answer; every answer waits a random 0..`max_latency_s`. The decision for a request
    depends on the seed, its body and how many times that body was seen, not on arrival order. Bounds: one
    body never gets more than `max_faults_per_body` faults in a row, and at most `max_faults` in all."""

    seed: int = 0
    error_rate: float = 0.2
    malformed_rate: float = 0.1
    max_latency_s: float = 5.0
    storm_every: int = 40
    storm_length: int = 6
    retry_after_s: float = 0.5
    max_faults_per_body: int = 3
    max_faults: int = 10_000
    # state
    _seen: dict[str, int] = field(default_factory=dict, repr=False)
    _faults_in_row: dict[str, int] = field(default_factory=dict, repr=False)
    _n: int = 0
    _storm_left: int = 0
    faults: int = 0

    def decide(self, body: Any) -> tuple[str, float]:
        """(what to answer, latency in seconds). Called under the server lock."""
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        seen = self._seen.get(digest, 0)
        self._seen[digest] = seen + 1
        rng = random.Random(f"{self.seed}:{digest}:{seen}")
        latency = rng.uniform(0, self.max_latency_s)
        self._n += 1
        if self.storm_every and self._n % self.storm_every == 0:
            self._storm_left = self.storm_length
        can_fault = self.faults < self.max_faults and self._faults_in_row.get(digest, 0) < self.max_faults_per_body
        outcome = "reply"
        if can_fault:
            if self._storm_left > 0:
                self._storm_left -= 1
                outcome = "429"
            else:
                x = rng.random()
                if x < self.error_rate:
                    outcome = "error"
                elif x < self.error_rate + self.malformed_rate:
                    outcome = "malformed_wire" if rng.random() < 0.5 else "malformed_reply"
        if outcome == "reply":
            self._faults_in_row[digest] = 0
        else:
            self.faults += 1
            self._faults_in_row[digest] = self._faults_in_row.get(digest, 0) + 1
        return outcome, (0.0 if outcome == "429" else latency)


def prompt_text(body: dict[str, Any]) -> str:
    """The whole conversation as one string (system + every turn), from either protocol's body."""
    parts = [body.get("system") or ""] if isinstance(body.get("system"), str) else []
    for m in body.get("messages", []):
        content = m.get("content")
        if isinstance(content, list) and all(isinstance(b, dict) and b.get("type") == "text" for b in content):
            content = "".join(b["text"] for b in content)  # text blocks (an Anthropic cache_control breakpoint)
        parts.append(content if isinstance(content, str) else json.dumps(content))
    return "\n".join(parts)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client killed or timed out mid-request (the chaos harness, the timeout tests) is expected."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


class LLMServer:
    def __init__(self, responder: Callable[[str], str] | None = None) -> None:
        self.responder = responder or (lambda prompt: '{"ok": true}')
        self.script: list[Reply | Status | Sleep] = []
        self.log: list[Logged] = []
        self.batches: dict[str, dict[str, Any]] = {}
        self.openai_batches: dict[str, dict[str, Any]] = {}  # OpenAI Batch API: batch id -> batch
        self.files: dict[str, bytes] = {}  # OpenAI Files API: file id -> content
        self.batch_polls_before_end = 1  # polls answered "in_progress" before a batch ends
        self.chaos: Chaos | None = None
        self.responder_errors: list[str] = []
        self._lock = threading.Lock()
        self._httpd = _QuietServer(("127.0.0.1", 0), self._handler_class())
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
        with self._lock:
            return [r for r in self.log if r.path.endswith("/chat/completions") or r.path.endswith("/messages")]

    # behaviour ---------------------------------------------------------------------------------
    def _next_action(self, prompt: str) -> Reply | Status | Sleep:
        with self._lock:
            if self.script:
                return self.script.pop(0)
        return self._respond(prompt)

    def _respond(self, prompt: str) -> Reply | Status:
        """The responder's reply; a responder that fails answers 500 and is remembered in `responder_errors`."""
        try:
            return Reply(self.responder(prompt))
        except Exception as exc:  # noqa: BLE001 - a test double: report, don't drop the connection
            with self._lock:
                self.responder_errors.append(f"{type(exc).__name__}: {exc}; prompt ends: {prompt[-300:]!r}")
            return Status(500, body=json.dumps({"error": {"type": "responder_error", "message": str(exc)}}))

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _send(self, code: int, payload: Any, headers: dict[str, str] | None = None,
                      content_type: str = "application/json") -> bool:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                    self.wfile.flush()
                    return True
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    return False

            def _record(self, body: Any) -> Logged:
                entry = Logged(self.command, self.path, body, {k.lower(): v for k, v in self.headers.items()})
                with server._lock:
                    server.log.append(entry)
                return entry

            def _answered(self, entry: Logged, outcome: str, code: int, delivered: bool,
                          tokens: tuple[int, int] = (0, 0)) -> None:
                with server._lock:
                    entry.outcome, entry.status = outcome, code
                    entry.input_tokens, entry.output_tokens = tokens
                    entry.answered_at = time.monotonic() if delivered else None

            def do_GET(self) -> None:  # noqa: N802
                self._record(None)
                parts = self.path.rstrip("/").split("/")
                if len(parts) >= 4 and parts[-3] == "files" and parts[-1] == "content":  # OpenAI file content
                    data = server.files.get(parts[-2])
                    if data is None:
                        return self._send(404, {"error": {"type": "not_found", "message": "no such file"}})
                    return self._send(200, data, content_type="application/octet-stream")
                if len(parts) >= 2 and parts[-2] == "batches" and parts[-1] in server.openai_batches:
                    batch = server.openai_batches[parts[-1]]
                    batch["polls"] += 1
                    return self._send(200, server._openai_batch_json(batch))
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
                raw = self.rfile.read(length)
                if len(raw) < length:  # the client died while sending (a SIGKILL in the chaos harness)
                    self.close_connection = True
                    return self._answered(self._record(None), "incomplete_request", 0, False)
                if self.path.rstrip("/").endswith("/files"):  # OpenAI Files API: a multipart upload
                    self._record(None)
                    return self._send(200, server._upload(self.headers.get("Content-Type", ""), raw))
                body = json.loads(raw or b"{}")
                entry = self._record(body)
                if self.path.endswith("/messages/batches"):
                    return self._send(200, server._create_batch(body))
                if self.path.rstrip("/").endswith("/batches"):  # OpenAI Batch API
                    return self._send(200, server._create_openai_batch(body))
                if not (self.path.endswith("/chat/completions") or self.path.endswith("/messages")):
                    return self._send(404, {"error": "unknown path"})
                anthropic = self.path.endswith("/messages")
                if server.chaos is not None:
                    with server._lock:
                        outcome, latency = server.chaos.decide(body)
                    time.sleep(latency)
                    if outcome == "429":
                        ok = self._send(429, {"error": {"type": "rate_limit_error", "message": "slow down"}},
                                        {"retry-after": str(server.chaos.retry_after_s)})
                        return self._answered(entry, outcome, 429, ok)
                    if outcome == "error":
                        code = (500, 502, 503)[len(server.log) % 3]
                        ok = self._send(code, {"error": {"type": "api_error", "message": "chaos"}})
                        return self._answered(entry, outcome, code, ok)
                    if outcome == "malformed_wire":
                        ok = self._send(200, b'{"id": "chatcmpl-broken", "choices": [{"index": 0, "mess')
                        return self._answered(entry, outcome, 200, ok)
                    action = Reply("I would rate these highly! (no JSON here)") if outcome == "malformed_reply" \
                        else server._respond(prompt_text(body))
                else:
                    outcome = "reply"
                    action = server._next_action(prompt_text(body))
                if isinstance(action, Sleep):
                    time.sleep(action.seconds)
                    action = server._respond(prompt_text(body))
                if isinstance(action, Status):
                    headers = {} if action.retry_after is None else {"retry-after": str(action.retry_after)}
                    headers.update(action.headers)
                    ok = self._send(action.code, json.loads(action.body), headers)
                    return self._answered(entry, "error", action.code, ok)
                payload = server._message(body, action) if anthropic else server._chat(body, action)
                ok = self._send(200, payload)
                self._answered(entry, outcome, 200, ok, server._usage(body, action))

        return Handler

    # wire formats ------------------------------------------------------------------------------
    @staticmethod
    def _usage(body: dict[str, Any], reply: Reply) -> tuple[int, int]:
        tin = reply.input_tokens if reply.input_tokens is not None else max(1, len(prompt_text(body)) // 4)
        tout = reply.output_tokens if reply.output_tokens is not None else max(1, len(reply.text) // 4)
        return tin, tout

    def _chat(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        tin, tout = self._usage(body, reply)
        usage = {"usage": {"prompt_tokens": tin, "completion_tokens": tout, "total_tokens": tin + tout,
                           "prompt_tokens_details": {"cached_tokens": reply.cache_read_tokens}}} if reply.usage else {}
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:8]}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "test"),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": reply.text}}],
                **usage}

    def _message(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        tin, tout = self._usage(body, reply)
        usage = {"usage": {"input_tokens": tin - reply.cache_read_tokens - reply.cache_write_tokens,
                           "output_tokens": tout, "cache_read_input_tokens": reply.cache_read_tokens,
                           "cache_creation_input_tokens": reply.cache_write_tokens}} if reply.usage else {}
        return {"id": f"msg_{uuid.uuid4().hex[:8]}", "type": "message", "role": "assistant",
                "model": body.get("model", "test"), "content": [{"type": "text", "text": reply.text}],
                "stop_reason": "end_turn", "stop_sequence": None, **usage}

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

    # the OpenAI Files and Batch APIs ---------------------------------------------------------------
    def _upload(self, content_type: str, raw: bytes) -> dict[str, Any]:
        from email.parser import BytesParser
        from email.policy import default

        message = BytesParser(policy=default).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
        fields = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
                  for part in message.iter_parts()}
        file_id = f"file-{uuid.uuid4().hex[:12]}"
        self.files[file_id] = fields["file"]
        return {"id": file_id, "object": "file", "bytes": len(fields["file"]), "created_at": int(time.time()),
                "filename": "batch.jsonl", "purpose": (fields.get("purpose") or b"batch").decode(),
                "status": "processed"}

    def _create_openai_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        batch_id = f"batch_{uuid.uuid4().hex[:12]}"
        output, errors = [], []
        for line in self.files[body["input_file_id"]].decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            action = self._next_action(prompt_text(item["body"]))
            if isinstance(action, Status):
                errors.append({"id": f"batch_req_{uuid.uuid4().hex[:8]}", "custom_id": item["custom_id"],
                               "response": {"status_code": action.code, "request_id": "r",
                                            "body": json.loads(action.body)}, "error": None})
                continue
            reply = action if isinstance(action, Reply) else Reply(self.responder(prompt_text(item["body"])))
            output.append({"id": f"batch_req_{uuid.uuid4().hex[:8]}", "custom_id": item["custom_id"],
                           "response": {"status_code": 200, "request_id": "r", "body": self._chat(item["body"], reply)},
                           "error": None})
        files = {}
        for kind, lines in (("output", output), ("error", errors)):
            if lines:
                files[kind] = f"file-{uuid.uuid4().hex[:12]}"
                self.files[files[kind]] = ("\n".join(json.dumps(x) for x in lines) + "\n").encode()
        batch = {"id": batch_id, "polls": 0, "n": len(output) + len(errors), "failed": len(errors),
                 "input_file_id": body["input_file_id"], "output_file_id": files.get("output"),
                 "error_file_id": files.get("error")}
        self.openai_batches[batch_id] = batch
        return self._openai_batch_json(batch)

    def _openai_batch_json(self, batch: dict[str, Any]) -> dict[str, Any]:
        ended = batch["polls"] > self.batch_polls_before_end
        return {"id": batch["id"], "object": "batch", "endpoint": "/v1/chat/completions", "completion_window": "24h",
                "input_file_id": batch["input_file_id"], "status": "completed" if ended else "in_progress",
                "created_at": int(time.time()), "output_file_id": batch["output_file_id"] if ended else None,
                "error_file_id": batch["error_file_id"] if ended else None,
                "request_counts": {"total": batch["n"], "completed": batch["n"] - batch["failed"] if ended else 0,
                                   "failed": batch["failed"] if ended else 0}}

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


# a model that answers every pipeline prompt validly and deterministically ------------------------------
_PAYLOAD_START = re.compile(r"(?m)^[\[{]")


def _payload(prompt: str) -> Any:
    """The data part of a pipeline prompt: the JSON document that starts on the last line opening with
    `{` or `[` (the templates put the data last, JSON-encoded; their instructions come before it)."""
    starts = [m.start() for m in _PAYLOAD_START.finditer(prompt)]
    for start in reversed(starts):
        try:
            return json.JSONDecoder().raw_decode(prompt, start)[0]
        except json.JSONDecodeError:
            continue
    raise ValueError("no JSON payload in the prompt")


def _unit(*parts: Any) -> float:
    """A deterministic number in [0, 1) from the parts."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def _id_key(row: dict[str, Any]) -> str:
    return next(k for k in row if k.endswith("_id"))


def pipeline_model(prompt: str) -> str:
    """Answers the pipeline's prompts (conf/prompts) the way a well-behaved model would: profiles that
    name the genres they were given, a score for exactly the requested ids, partitions that place every
    id once in groups of the asked size, similarities in [0, 1]. Same prompt, same reply."""
    if '"similarity_score"' in prompt:
        return json.dumps({"similarity_score": round(_unit("sim", _payload(prompt)), 2), "reasoning": "overlap"})
    if '"groups"' in prompt:
        rows = _payload(prompt)
        size = int(re.search(r"groups of about (\d+)", prompt).group(1))
        ids = [str(r[_id_key(r)]) for r in rows]
        groups = [{"group_id": f"group_{k + 1}", "group_name": f"Taste {_unit('name', ids[i]):.3f}",
                   "members": ids[i:i + size], "reasoning": "similar summaries"}
                  for k, i in enumerate(range(0, len(ids), size))]
        return json.dumps({"groups": groups})
    if '"dislike_scores"' in prompt or '"like_scores"' in prompt:  # the compact style: id -> score, no reasons
        key = "dislike_score" if '"dislike_scores"' in prompt else "like_score"
        cards = _payload(prompt)
        user = prompt.split("USER PROFILE:", 1)[1].split("CARDS:", 1)[0]
        return json.dumps({key + "s": {r[_id_key(r)]: round(10 * _unit(key, user, r[_id_key(r)]), 1)
                                       for r in cards}})
    if '"dislike_score"' in prompt or '"like_score"' in prompt:
        key = "dislike_score" if '"dislike_score"' in prompt else "like_score"
        items = _payload(prompt)
        user = prompt.split("USER PROFILE:", 1)[1].split("PROFILES:", 1)[0]
        ratings = [{item_key: r[item_key], key: round(10 * _unit(key, user, r[item_key]), 1), "reasoning": "fit"}
                   for r in items for item_key in [_id_key(r)]]
        return json.dumps({"ratings": ratings})
    query = _payload(prompt)
    key = _id_key(query)
    if key == "user_id":
        info = query.get("user_information", {})
        text = (f"Enjoys {info.get('liked genres') or 'varied titles'}; "
                f"dislikes {info.get('disliked genres') or 'little'}.")
    else:
        text = f"For fans of {query.get('genres') or 'many genres'}: {query.get('title') or 'an untitled item'}."
    return json.dumps({key: query[key], "summarization": text, "reasoning": "from the ratings and metadata"})
