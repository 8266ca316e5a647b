"""What a backend implements. Backends only translate one request into one provider call and map
provider errors onto three kinds; the client owns caching, limits, retries and accounting."""

from __future__ import annotations

import os
from typing import Any, Sequence

from lagcl.errors import LLMError
from lagcl.llm.types import Completion, LLMRequest


class TransientError(Exception):
    """Worth retrying: 429, 5xx, 529, timeouts, dropped connections. `retry_after` in seconds when the
    server said so (Retry-After header)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(Exception):
    """This request cannot succeed as sent (400, 404, 413, content refused): recorded as failed."""


def parse_retry_after(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` / `retry-after` (numbers only; HTTP dates are rare in APIs)."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            continue
    return None


def read_api_key(env_name: str, backend: str) -> str:
    """The key from the environment variable named by `engine.api_key_env`; the message names the
    variable, never the value."""
    key = os.environ.get(env_name, "").strip()
    if not key:
        raise LLMError(f"the {backend} engine needs an API key in the environment variable {env_name}, which "
                       f"is not set: export {env_name}=... (or set engine.api_key_env to the variable that "
                       f"holds it; for a local server without keys set engine.api_key_required=false)")
    return key


def redact(text: str, secret: str | None) -> str:
    """Remove the key from any text that might reach a log, an exception or the cache."""
    return text.replace(secret, "[redacted]") if secret else text


def translate_sdk_error(sdk: Any, exc: Exception, service: str, key: str | None) -> Exception:
    """Map an exception of the `openai` or `anthropic` SDK (they share these class names) to ours:
    a rejected key stops the run; timeouts, connection errors, 408/409/429/5xx are retried (honouring
    Retry-After); any other HTTP status fails the request. The key never reaches the message."""
    if isinstance(exc, (sdk.AuthenticationError, sdk.PermissionDeniedError)):
        return LLMError(f"{service} rejected the API key (HTTP {exc.status_code}); check the key in the "
                        "variable named by engine.api_key_env")
    if isinstance(exc, sdk.APITimeoutError):  # a subclass of APIConnectionError: test it first
        return TransientError("timeout")
    if isinstance(exc, sdk.APIConnectionError):
        return TransientError(f"connection error: {redact(str(exc), key)}")
    if isinstance(exc, sdk.APIStatusError):
        text = redact(f"HTTP {exc.status_code}: {exc.message}", key)[:500]
        # 529 = overloaded; 408/409 = request timeout / conflict, both documented as retryable
        if exc.status_code in (408, 409, 429) or exc.status_code >= 500:
            return TransientError(text, parse_retry_after(exc.response.headers))
        return PermanentError(text)
    return exc


class Backend:
    name: str = ""
    model: str = ""
    local: bool = False          # local backends generate whole batches in-process (no retries, no cost)
    supports_batches: bool = False

    def cache_params(self) -> dict[str, Any]:
        """Backend settings that change the answer (e.g. response_format) and so enter the cache key."""
        return {}

    async def start(self) -> None:
        """Open connections inside the running event loop (SDK clients are bound to their loop)."""

    async def close(self) -> None:
        pass

    async def complete(self, request: LLMRequest) -> Completion:  # remote backends
        raise NotImplementedError

    def complete_batch(self, requests: Sequence[LLMRequest]) -> list[Completion | Exception]:  # local
        raise NotImplementedError
