"""Claude through the official `anthropic` SDK: the Messages API, and the Message Batches API
(half price, asynchronous) for the big scoring stage when `engine.batch_api` is true.

Prompt caching (`llm.prompt_cache`): a request whose first `cache_prefix_chars` characters of the first user
turn are stable (instructions + user profile) is sent as two content blocks, the first marked
`cache_control: ephemeral`, so the system text and that block form one cached prefix. The provider caches it
only when it is at least the model's minimum length (`llm.cache_min_tokens`); a shorter prefix is sent
uncached at no extra cost. Usage then reports `cache_read_input_tokens` and `cache_creation_input_tokens`
beside `input_tokens` (the uncached rest); the Completion counts all three as input, the first two apart."""

from __future__ import annotations

from typing import Any, Sequence

from lagcl.errors import LLMError
from lagcl.llm.backends.base import Backend, redact, sdk_call
from lagcl.llm.types import Completion, LLMRequest


def _sdk_takes_temperature() -> bool:
    try:
        import inspect

        from anthropic.resources.messages.messages import AsyncMessages

        return "temperature" in inspect.signature(AsyncMessages.create).parameters
    except Exception:  # package missing: the backend raises a clear LLMError on construction
        return False


_SDK_TAKES_TEMPERATURE = _sdk_takes_temperature()


class AnthropicBackend(Backend):
    name = "anthropic"
    supports_batches = True

    def __init__(self, model: str, api_key: str, base_url: str | None = None, timeout_s: float = 120.0,
                 prompt_cache: bool = True) -> None:
        try:
            import anthropic  # noqa: F401
        except ImportError:
            raise LLMError("the anthropic engine needs the `anthropic` package: pip install -e '.[llm]'") from None
        self.model = model
        self._key = api_key
        self.base_url = base_url
        self.url = base_url or "https://api.anthropic.com"
        self.timeout_s = timeout_s
        self.prompt_cache = prompt_cache
        self._client: Any = None

    async def start(self) -> None:
        import anthropic

        # max_retries=0: our client's retry loop is the only one (see lagcl.llm.client)
        self._client = anthropic.AsyncAnthropic(api_key=self._key, base_url=self.base_url, max_retries=0,
                                                timeout=self.timeout_s + 5)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def build(self, request: LLMRequest) -> dict[str, Any]:
        messages: list[dict[str, Any]] = [{"role": role, "content": text} for role, text in request.messages]
        cut = request.cache_prefix_chars
        if self.prompt_cache and 0 < cut < len(request.messages[0][1]):
            first = request.messages[0][1]
            messages[0]["content"] = [{"type": "text", "text": first[:cut], "cache_control": {"type": "ephemeral"}},
                                      {"type": "text", "text": first[cut:]}]
        params: dict[str, Any] = {"model": self.model, "max_tokens": request.max_tokens, "messages": messages}
        if _SDK_TAKES_TEMPERATURE:  # recent SDKs (and models) dropped sampling parameters
            params["temperature"] = request.temperature
        if request.system:
            params["system"] = request.system
        return params

    @staticmethod
    def _completion(message: Any) -> Completion:
        text = "".join(getattr(block, "text", "") for block in message.content if block.type == "text")
        usage = getattr(message, "usage", None)  # None from a server that sends none: the client estimates
        uncached = _count(getattr(usage, "input_tokens", None))
        read = _count(getattr(usage, "cache_read_input_tokens", None)) or 0
        written = _count(getattr(usage, "cache_creation_input_tokens", None)) or 0
        return Completion(text=text, input_tokens=None if uncached is None else uncached + read + written,
                          output_tokens=_count(getattr(usage, "output_tokens", None)),
                          finish_reason=getattr(message, "stop_reason", None) or "",
                          cache_read_tokens=read, cache_write_tokens=written)

    async def _call(self, coro: Any) -> Any:
        import anthropic

        return await sdk_call(anthropic, coro, f"the Anthropic API at {self.base_url or 'api.anthropic.com'}",
                              self._key)

    async def complete(self, request: LLMRequest) -> Completion:
        return self._completion(await self._call(self._client.messages.create(**self.build(request))))

    # Message Batches ------------------------------------------------------------------------------
    async def batch_submit(self, items: Sequence[tuple[str, LLMRequest]]) -> str:
        # custom_id = our cache key (64 hex chars, within the API's [a-zA-Z0-9_-]{1,64})
        requests = [{"custom_id": key, "params": self.build(req)} for key, req in items]
        batch = await self._call(self._client.messages.batches.create(requests=requests))
        return batch.id

    async def batch_status(self, batch_id: str) -> str:
        batch = await self._call(self._client.messages.batches.retrieve(batch_id))
        return batch.processing_status

    async def batch_results(self, batch_id: str) -> dict[str, Completion | str]:
        decoder = await self._call(self._client.messages.batches.results(batch_id))
        out: dict[str, Completion | str] = {}
        async for line in decoder:
            result = line.result
            if result.type == "succeeded":
                out[line.custom_id] = self._completion(result.message)
            elif result.type == "errored":
                out[line.custom_id] = f"errored: {redact(str(getattr(result, 'error', '')), self._key)[:300]}"
            else:  # expired / canceled
                out[line.custom_id] = result.type
        return out


def _count(value: Any) -> int | None:
    """A token count from a reply's usage, None when it is missing or not a count."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
