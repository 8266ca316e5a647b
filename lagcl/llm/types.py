"""What goes into and comes out of an LLM client: backend-neutral, hashable into a cache key."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["user", "assistant"]


@dataclass(frozen=True)
class LLMRequest:
    """One chat completion. `messages` alternate user/assistant and end with a user turn (a repair
    request carries the bad reply and the parse error as two more turns). `json_schema` asks backends
    that can constrain decoding (vllm guided decoding, OpenAI `json_schema` response format) to do so;
    `operation` names the semantic operation for per-stage accounting and never enters the cache key."""

    system: str
    messages: tuple[tuple[Role, str], ...]
    max_tokens: int = 1024
    temperature: float = 0.0
    json_schema: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    operation: str = field(default="", compare=False)
    # prompt caching: the first `cache_prefix_chars` characters of the first user turn are, with the system
    # text, the same for every request of one user (instructions + user profile). Backends with explicit
    # caching (Anthropic `cache_control`) mark that prefix; it never changes the prompt, so not the cache key.
    cache_prefix_chars: int = field(default=0, compare=False)

    @staticmethod
    def single(system: str, user: str, **kw: Any) -> "LLMRequest":
        return LLMRequest(system=system, messages=(("user", user),), **kw)

    def followup(self, assistant: str, user: str) -> "LLMRequest":
        """The same conversation with the model's reply and our next turn appended (used by repair)."""
        return LLMRequest(self.system, self.messages + (("assistant", assistant), ("user", user)),
                          self.max_tokens, self.temperature, self.json_schema, self.operation,
                          self.cache_prefix_chars)

    def prompt_chars(self) -> int:
        return len(self.system) + sum(len(text) for _, text in self.messages)


def cache_key(backend: str, model: str, request: LLMRequest, extra: dict[str, Any] | None = None) -> str:
    """sha256 over backend, model, generation parameters and the full prompt (issue 4, item 2).

    The key is hex of length 64, which is also a valid Anthropic batch `custom_id`."""
    payload = {
        "backend": backend,
        "model": model,
        "params": {"max_tokens": request.max_tokens, "temperature": request.temperature,
                   "json_schema": request.json_schema, **(extra or {})},
        "system": request.system,
        "messages": [list(m) for m in request.messages],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True)
class Completion:
    """What a backend returns for one request (before caching and accounting). A backend whose server
    sent no token usage passes None; the client then fills in an estimate (chars / 4) and marks it
    `input_estimated` / `output_estimated`, so accounting, budget and cache always see numbers."""

    text: str
    input_tokens: int  # None from a backend whose server sent no usage, until the client estimates it
    output_tokens: int
    finish_reason: str = ""
    input_estimated: bool = False
    output_estimated: bool = False
    # prompt caching: of `input_tokens` (all prompt tokens), how many were read from the provider's prompt
    # cache and how many were written to it (Anthropic `cache_read_input_tokens` / `cache_creation_input_tokens`;
    # OpenAI `usage.prompt_tokens_details.cached_tokens`); priced at their own rates (llm.prices)
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


@dataclass(frozen=True)
class LLMResponse:
    """One answer, in request order. `error` is set (and `text` empty) when the request failed for good
    after retries (a 4xx other than 429, retries exhausted, a local generation error); such requests
    are not cached, so a rerun sends them again."""

    text: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    cached: bool = False
    attempts: int = 0
    error: str | None = None
    finish_reason: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None
