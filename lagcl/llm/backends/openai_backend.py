"""Chat Completions through the official `openai` SDK, against any OpenAI-compatible `base_url`
(OpenAI, a vLLM server, llama.cpp server, Ollama's /v1).

Prompt caching is automatic at OpenAI for prompts of 1024+ tokens, on the longest prefix seen before: the
templates put the stable part first (system instructions, then the user profile, then the candidates), and
`usage.prompt_tokens_details.cached_tokens` (part of `prompt_tokens`) is counted as cache-read tokens."""

from __future__ import annotations

import json
from typing import Any

from lagcl.errors import LLMError
from lagcl.llm.backends.base import Backend, TransientError, translate_sdk_error
from lagcl.llm.types import Completion, LLMRequest

RESPONSE_FORMATS = ("json_object", "json_schema", "none")


class OpenAIBackend(Backend):
    name = "openai"

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

    async def complete(self, request: LLMRequest) -> Completion:
        import openai

        try:
            reply = await self._client.chat.completions.create(**self.build(request))
        except openai.APIError as exc:
            raise translate_sdk_error(openai, exc, f"the server at {self.base_url or 'api.openai.com'}",
                                      self._key) from None
        except json.JSONDecodeError as exc:  # a 200 whose body is cut off or not JSON: retried like a 5xx
            raise TransientError(f"the server's reply is not valid JSON ({exc.msg})", reason="invalid_reply") from None
        if not reply.choices:
            raise TransientError("reply without choices", reason="invalid_reply")
        choice = reply.choices[0]
        usage = reply.usage  # some OpenAI-compatible servers send none: None, and the client estimates
        return _completion(choice.message.content or "", usage, choice.finish_reason or "")


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
