"""Chat Completions through the official `openai` SDK, against any OpenAI-compatible `base_url`
(OpenAI, a vLLM server, llama.cpp server, Ollama's /v1).

Prompt caching is automatic at OpenAI for prompts of 1024+ tokens, on the longest prefix seen before: the
templates put the stable part first (system instructions, then the user profile, then the candidates), and
`usage.prompt_tokens_details.cached_tokens` (part of `prompt_tokens`) is counted as cache-read tokens.

The Batch API (`engine.batch_api`, half price, results within 24 hours) carries the scoring operations
like the Anthropic Message Batches path: the requests go up as one JSONL file (custom_id = our cache key),
a batch is created on it and its id recorded in the cache db before we wait, so a restarted run polls
it instead of paying twice; the output and error files are read when the batch has ended."""

from __future__ import annotations

import json
from typing import Any, Sequence

from lagcl.errors import LLMError
from lagcl.llm.backends.base import Backend, PermanentError, TransientError, sdk_call
from lagcl.llm.types import Completion, LLMRequest

RESPONSE_FORMATS = ("json_object", "json_schema", "none")


BATCH_ENDED = ("completed", "failed", "expired", "cancelled")


class OpenAIBackend(Backend):
    name = "openai"
    supports_batches = True

    def __init__(self, model: str, api_key: str | None, base_url: str | None = None, timeout_s: float = 120.0,
                 response_format: str = "json_object") -> None:
        try:
            import openai  # noqa: F401
        except ImportError:
            raise LLMError("the openai engine needs the `openai` package: pip install -e '.[llm]'") from None
        if response_format not in RESPONSE_FORMATS:
            raise LLMError(f"engine.extra.response_format must be one of {RESPONSE_FORMATS}, got {response_format!r}")
        self.model = model
        self._key = api_key
        self.base_url = base_url
        self.url = base_url or "https://api.openai.com/v1"
        self.timeout_s = timeout_s
        self.response_format = response_format
        self._client: Any = None

    def cache_params(self) -> dict[str, Any]:
        return {"response_format": self.response_format}

    async def start(self) -> None:
        import openai

        # max_retries=0: our client's retry loop is the only one, so attempts are counted and bounded once.
        # The SDK timeout is a backstop slightly above ours (the client enforces engine.timeout_s).
        self._client = openai.AsyncOpenAI(api_key=self._key or "no-key", base_url=self.base_url,
                                          max_retries=0, timeout=self.timeout_s + 5)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def build(self, request: LLMRequest) -> dict[str, Any]:
        messages = [{"role": "system", "content": request.system}] if request.system else []
        messages += [{"role": role, "content": text} for role, text in request.messages]
        kwargs: dict[str, Any] = {"model": self.model, "messages": messages,
                                  "temperature": request.temperature, "max_tokens": request.max_tokens}
        if self.response_format == "json_schema" and request.json_schema is not None:
            kwargs["response_format"] = {"type": "json_schema", "json_schema": {
                "name": request.operation or "reply", "schema": request.json_schema}}
        elif self.response_format in ("json_object", "json_schema"):
            kwargs["response_format"] = {"type": "json_object"}
        return kwargs

    async def _call(self, coro: Any) -> Any:
        import openai

        try:
            return await sdk_call(openai, coro, f"the server at {self.url}", self._key)
        except PermanentError as exc:
            raise self.rejection(exc) from None

    def rejection(self, exc: PermanentError) -> Exception:
        """A 4xx the server explained: a prompt longer than the model's context fails that request with its own
        reason and the settings that fix it; a reply format the server cannot apply would fail every request
        alike, so it stops the stage (LLMError) naming engine.extra.response_format. Any other: as it came."""
        body = exc.body if isinstance(exc.body, dict) else {}
        kind = f"{body.get('type', '')} {body.get('code', '')}".lower()
        text = str(body.get("message") or exc)
        low = text.lower()
        # llama.cpp: type exceed_context_size_error; OpenAI: code context_length_exceeded; vLLM: "maximum context length"
        if "exceed_context_size" in kind or "context_length_exceeded" in kind or "context size" in low \
                or "context length" in low:
            return PermanentError(
                f"the prompt does not fit the model's context ({text[:200]}): serve it with a longer context "
                f"(llama-server --ctx-size, shared by its --parallel slots: make llm-server LLM_CTX=...; vLLM "
                f"--max-model-len) or send shorter prompts (groups.batch_size, augment.items_per_call)",
                body=exc.body, reason="context_exceeded")
        if self.response_format != "none" and ("response_format" in low or "json schema" in low
                                                or "json_schema" in low or "grammar" in low):
            return LLMError(
                f"the server at {self.url} cannot apply engine.extra.response_format={self.response_format} "
                f"({text[:300]}); set engine.extra.response_format=json_object (JSON without a schema) or none "
                f"(no constraint: replies are parsed and repaired as they come)")
        return exc

    async def complete(self, request: LLMRequest) -> Completion:
        reply = await self._call(self._client.chat.completions.create(**self.build(request)))
        if not reply.choices:
            raise TransientError("reply without choices", reason="invalid_reply")
        choice = reply.choices[0]
        usage = reply.usage  # some OpenAI-compatible servers send none: None, and the client estimates
        return _completion(choice.message.content or "", usage, choice.finish_reason or "")

    # Batch API --------------------------------------------------------------------------------------
    async def batch_submit(self, items: Sequence[tuple[str, LLMRequest]]) -> str:
        lines = [json.dumps({"custom_id": key, "method": "POST", "url": "/v1/chat/completions",
                             "body": self.build(req)}, ensure_ascii=False) for key, req in items]
        upload = await self._call(self._client.files.create(
            file=("lagcl-batch.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch"))
        batch = await self._call(self._client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"))
        return batch.id

    async def batch_status(self, batch_id: str) -> str:
        batch = await self._call(self._client.batches.retrieve(batch_id))
        return "ended" if batch.status in BATCH_ENDED else batch.status

    async def batch_results(self, batch_id: str) -> dict[str, Completion | str]:
        batch = await self._call(self._client.batches.retrieve(batch_id))
        out: dict[str, Completion | str] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = await self._call(self._client.files.content(file_id))
            for line in content.text.splitlines():
                if line.strip():
                    key, result = _batch_line(json.loads(line))
                    out[key] = result
        if batch.status != "completed" and not out:
            return {}  # failed / expired / cancelled with nothing answered: every request goes in the next batch
        return out


def _batch_line(line: dict[str, Any]) -> tuple[str, Completion | str]:
    """One line of a Batch API output or error file -> (custom_id, Completion or why it failed)."""
    response = line.get("response") or {}
    body = response.get("body") or {}
    if line.get("error") or response.get("status_code") != 200 or not body.get("choices"):
        error = line.get("error") or body.get("error") or {"status_code": response.get("status_code")}
        return line["custom_id"], f"errored: {json.dumps(error)[:300]}"
    choice = body["choices"][0]
    return line["custom_id"], _completion((choice.get("message") or {}).get("content") or "", body.get("usage"),
                                          choice.get("finish_reason") or "")


def _completion(text: str, usage: Any, finish_reason: str) -> Completion:
    """A Completion from a chat reply's text and `usage` (an SDK object or a plain dict; None when absent)."""
    def get(obj: Any, name: str) -> Any:
        return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)

    prompt = _count(get(usage, "prompt_tokens"))
    cached = _count(get(get(usage, "prompt_tokens_details"), "cached_tokens")) or 0
    return Completion(text=text, input_tokens=prompt, output_tokens=_count(get(usage, "completion_tokens")),
                      finish_reason=finish_reason, cache_read_tokens=min(cached, prompt or 0))


def _count(value: Any) -> int | None:
    """A token count from a reply's usage, None when it is missing or not a count."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
