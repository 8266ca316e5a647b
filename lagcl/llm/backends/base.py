"""What a backend implements. Backends only translate one request into one provider call and map
provider errors onto three kinds; the client owns caching, limits, retries and accounting."""

from __future__ import annotations

import json
import math
import os
import socket
import time
from email.utils import parsedate_to_datetime
from typing import Any, Awaitable, Sequence

from lagcl.errors import LLMError
from lagcl.llm.types import Completion, LLMRequest


# why a request is retried; the client counts retries by these reasons (accounting `retries`)
RETRY_REASONS = ("429", "5xx", "timeout", "connection", "invalid_reply", "other")


class TransientError(Exception):
    """Worth retrying: 429, 5xx, 529, timeouts, dropped connections, a 200 whose body cannot be read.
    `retry_after` in seconds when the server said so (Retry-After / retry-after-ms header); `reason`
    is one of RETRY_REASONS."""

    def __init__(self, message: str, retry_after: float | None = None, reason: str = "other") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.reason = reason


class UnreachableError(TransientError):
    """No connection could be made at all: refused, or the host name does not resolve (`why` says which, as the
    operating system put it). The client stops after engine.connect_wait_s when the server never answered."""

    def __init__(self, why: str) -> None:
        super().__init__(f"cannot connect: {why}", reason="connection")
        self.why = why


def connect_failure(exc: BaseException) -> str | None:
    """Why no connection could be made, when the cause of an SDK connection error is httpx's ConnectError:
    "connection refused", "the host name does not resolve: ..." or the operating system's words (no route,
    network unreachable). None for other connection errors (a connection dropped mid-reply), which stay
    transient."""
    cause = exc.__cause__ or exc.__context__
    if cause is None or not any(c.__name__ == "ConnectError" for c in type(cause).__mro__):
        return None
    chain, seen = [], set()
    link: BaseException | None = cause
    while link is not None and id(link) not in seen and len(chain) < 10:
        seen.add(id(link))
        chain.append(link)
        link = link.__cause__ or link.__context__
    for link in chain:
        if isinstance(link, ConnectionRefusedError):
            return "connection refused"
        if isinstance(link, socket.gaierror):
            return f"the host name does not resolve: {link.strerror or link}"
    return str(cause) or "connection failed"


def status_reason(status: int) -> str:
    """The retry reason of a retryable HTTP status."""
    if status == 429:
        return "429"
    if status >= 500:
        return "5xx"
    return "timeout" if status == 408 else "other"


# why a request got no reply at all (accounting `no_reply`): a 4xx other than 429 ("rejected"), a prompt longer
# than the model's context ("context_exceeded"), retries used up ("gave_up"), a local generation error
# ("generation_error"), a batch request the provider answered with an error ("errored")
NO_REPLY_REASONS = ("rejected", "context_exceeded", "gave_up", "generation_error", "errored")


class PermanentError(Exception):
    """This request cannot succeed as sent (400, 404, 413, content refused): recorded as failed. `body`: the
    server's error object where it sent one (backends read server-specific causes from it); `reason`: one of
    NO_REPLY_REASONS."""

    def __init__(self, message: str, body: Any = None, reason: str = "rejected") -> None:
        super().__init__(message)
        self.body = body
        self.reason = reason


def parse_retry_after(headers: Any, now: float | None = None) -> float | None:
    """Seconds the server asks us to wait: `retry-after-ms` (milliseconds, sent by OpenAI and Anthropic)
    first, else `Retry-After` in either form RFC 9110 allows, delta-seconds (`5`) or an HTTP-date
    (`Wed, 21 Oct 2015 07:28:00 GMT`, counted from `now`, default the local clock; a date in the past
    means 0). None when neither header is there or readable. The client caps the wait (engine.retry_max_s)."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            ms = float(value)
            if math.isfinite(ms):
                return max(0.0, ms / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
        return max(0.0, seconds) if math.isfinite(seconds) else None
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:  # RFC 9110 dates are GMT; a date without a zone is not one
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


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
        return TransientError("timeout", reason="timeout")
    if isinstance(exc, sdk.APIConnectionError):
        why = connect_failure(exc)
        if why is not None:
            return UnreachableError(redact(why, key))
        return TransientError(f"connection error: {redact(str(exc), key)}", reason="connection")
    if isinstance(exc, sdk.APIStatusError):
        text = redact(f"HTTP {exc.status_code}: {exc.message}", key)[:500]
        # 529 = overloaded; 408/409 = request timeout / conflict, both documented as retryable
        if exc.status_code in (408, 409, 429) or exc.status_code >= 500:
            return TransientError(text, parse_retry_after(exc.response.headers), status_reason(exc.status_code))
        return PermanentError(text, body=getattr(exc, "body", None))
    return exc


async def sdk_call(sdk: Any, call: Awaitable[Any], service: str, key: str | None) -> Any:
    """Await a call of the `openai` or `anthropic` SDK with its errors as ours (`translate_sdk_error`)."""
    try:
        return await call
    except sdk.APIError as exc:
        raise translate_sdk_error(sdk, exc, service, key) from None
    except json.JSONDecodeError as exc:  # a 200 whose body is cut off or not JSON: retried like a 5xx
        raise TransientError(f"the server's reply is not valid JSON ({exc.msg})", reason="invalid_reply") from None


class Backend:
    name: str = ""
    model: str = ""
    url: str = ""  # where a remote backend sends its requests (for messages)
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
