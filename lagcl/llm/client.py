"""The one LLM call path: response cache -> budget -> rate limits -> backend call with retries ->
accounting -> cache write. Every backend (anthropic, openai, vllm, transformers) goes through it, and
so do the batch modes (Anthropic Message Batches, OpenAI Batch API: the backend's batch_submit /
batch_status / batch_results).

`await client.generate(requests)` answers a batch in request order (`generate_sync` for callers
without an event loop). Identical requests in one batch are sent once.

Retries: 429, 5xx, timeouts and dropped connections are retried with backoff (engine.max_retries). A server
that cannot be reached at all (connection refused, a host name that does not resolve) before it has answered
this client once is not: such requests are retried for engine.connect_wait_s seconds (all of them together,
short waits), then the client raises one LLMError naming the URL and engine.base_url (docs/design.md 17).
After a first answer, a connection error counts as transient like a 5xx.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Coroutine, Sequence, TypeVar

from lagcl.errors import BudgetExceededError, LLMError
from lagcl.llm.accounting import Accounting, estimate_tokens
from lagcl.llm.backends.base import Backend, PermanentError, TransientError, UnreachableError
from lagcl.llm.cache import ResponseCache
from lagcl.llm.limits import RateLimiter
from lagcl.llm.types import Completion, LLMRequest, LLMResponse, cache_key

log = logging.getLogger("lagcl.llm")
T = TypeVar("T")

# retry reasons that mean the server itself answered (an HTTP status, a body): it can be reached
SERVER_ANSWERED = ("429", "5xx", "other", "invalid_reply")
UNREACHABLE_RETRY_S = 0.5  # the wait between connection attempts while the server has not been reached
_BATCH_CHUNK = 10_000  # requests per Message Batch (the API allows 100k / 256 MB)
BATCH_OPERATION = "message_batches"  # the accounting row of Message Batch submits, polls and result fetches


@dataclass
class RetryPolicy:
    max_retries: int = 6
    base_s: float = 1.0
    max_s: float = 60.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Retry-After when the server gave one (plus up to 10% jitter so a crowd of waiting requests
        does not return in lockstep), never more than `max_s` (engine.retry_max_s); else exponential
        backoff with 'equal jitter'."""
        if retry_after is not None:
            return min(retry_after * (1 + 0.1 * random.random()), self.max_s)
        cap = min(self.max_s, self.base_s * 2 ** attempt)
        return cap / 2 + random.uniform(0, cap / 2)

    def describe(self, delay: float, retry_after: float | None) -> str:
        """How a wait was chosen, for the log."""
        if retry_after is None:
            return f"backoff {delay:.2f}s"
        if retry_after > self.max_s:
            return (f"the server asked for {retry_after:.2f}s (Retry-After), "
                    f"capped at engine.retry_max_s={self.max_s:g}s")
        return f"{delay:.2f}s as the server asked ({retry_after:.2f}s Retry-After, plus jitter)"


class _Stop(Exception):
    """Internal: the budget forbids sending this request."""


class LLMClient:
    def __init__(self, backend: Backend, cache: ResponseCache, accounting: Accounting, *,
                 max_concurrency: int = 8, requests_per_minute: int | None = None,
                 tokens_per_minute: int | None = None, timeout_s: float = 120.0,
                 retry: RetryPolicy | None = None, batch_api: bool = False,
                 batch_operations: Sequence[str] = ("score",), batch_size: int = 64,
                 batch_poll_s: float = 30.0, dry_run: bool = False, connect_wait_s: float = 5.0) -> None:
        self.backend = backend
        self.cache = cache
        self.accounting = accounting
        self.max_concurrency = max_concurrency
        self.rpm = RateLimiter(requests_per_minute)
        self.tpm = RateLimiter(tokens_per_minute)
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self.batch_api = batch_api and backend.supports_batches
        self.batch_operations = tuple(batch_operations)  # operation-name prefixes (score_pos, score_neg)
        self.local_batch_size = batch_size
        self.batch_poll_s = batch_poll_s
        self.dry_run = dry_run
        self.server_calls = 0  # every call to the provider (attempts, batch submits and polls)
        self.connect_wait_s = connect_wait_s
        self.answered = False  # the server has answered this client at least once (any HTTP status)
        self._unreachable_since: float | None = None  # first failed connection while never answered
        self._warned_missing_usage = False

    # public ----------------------------------------------------------------------------------
    def key(self, request: LLMRequest) -> str:
        return cache_key(self.backend.name, self.backend.model, request, self.backend.cache_params())

    def generate_sync(self, requests: Sequence[LLMRequest]) -> list[LLMResponse]:
        return run_sync(self.generate(requests))

    async def generate(self, requests: Sequence[LLMRequest]) -> list[LLMResponse]:
        keys = [self.key(r) for r in requests]
        hits = self.cache.get_many(keys)
        answers: dict[str, LLMResponse] = {}
        for key, (completion, _) in hits.items():
            answers[key] = _response(completion, cost=0.0, cached=True, attempts=0)
        for req, key in zip(requests, keys):
            if key in hits:
                self.accounting.record_cached(req.operation)
        todo = {k: r for k, r in zip(keys, requests) if k not in hits}  # dict: duplicates sent once
        started = time.monotonic()
        if todo and self.dry_run:  # a safety net: a dry run must never pay for anything
            raise LLMError(f"llm.dry_run is set but {len(todo)} uncached LLM requests were about to be sent; "
                           f"use DRY_RUN=1 (lagcl.semantic.cost) for a dry run, or unset llm.dry_run to run for real")
        if todo:
            self.rpm.reset_loop()
            self.tpm.reset_loop()
            await self.backend.start()
            try:
                if self.backend.local:
                    answers.update(await self._local(todo))
                elif self.batch_api and all(r.operation.startswith(self.batch_operations) for r in todo.values()):
                    answers.update(await self._batches(todo))
                else:
                    answers.update(await self._online(todo))
            finally:
                await self.backend.close()
        out = [answers[k] for k in keys]
        if requests:
            log.info("%s/%s: %d requests, %d from cache, %d sent, %d failed, $%.4f spent so far (%.1fs)",
                     self.backend.name, self.backend.model, len(requests), len(requests) - len(todo), len(todo),
                     sum(a.error is not None for a in out), self.accounting.spent_usd, time.monotonic() - started)
        if any(a.error == "budget" for a in out):
            done = sum(a.error is None for a in out)
            raise BudgetExceededError(
                f"{self.accounting.budget.reached(self.accounting.spent_usd)} ({done} of {len(out)} requests of "
                f"this batch answered, every answer saved in {self.cache.path})")
        return out

    # a server that cannot be reached ------------------------------------------------------------
    def _unreachable(self) -> float | None:
        """Before the server's first answer: the wait before the next try, or None when engine.connect_wait_s
        has passed since the first failed connection (the caller then raises `unreachable_error`)."""
        now = time.monotonic()
        if self._unreachable_since is None:
            self._unreachable_since = now
        left = self.connect_wait_s - (now - self._unreachable_since)
        return None if left <= 0 else min(UNREACHABLE_RETRY_S, left)

    def unreachable_error(self, exc: UnreachableError) -> LLMError:
        waited = time.monotonic() - (self._unreachable_since or time.monotonic())
        return LLMError(f"cannot reach the LLM server at {self.backend.url} ({exc.why}; tried for {waited:.1f} s, "
                        f"engine.connect_wait_s={self.connect_wait_s:g}): start the server, or set engine.base_url "
                        f"to the URL it listens on")

    def _heard_from_server(self) -> None:
        self.answered = True
        self._unreachable_since = None

    # online: one request per provider call -------------------------------------------------------
    async def _online(self, todo: dict[str, LLMRequest]) -> dict[str, LLMResponse]:
        sem = asyncio.Semaphore(self.max_concurrency)
        stop = asyncio.Event()
        out: dict[str, LLMResponse] = {}

        async def one(key: str, req: LLMRequest) -> None:
            async with sem:
                out[key] = await self._send(key, req, stop)

        try:
            async with asyncio.TaskGroup() as tg:  # an LLMError (e.g. key rejected) cancels the rest
                for key, req in todo.items():
                    tg.create_task(one(key, req))
        except BaseExceptionGroup as group:  # surface our own error, not a group around it
            raise group.exceptions[0] from None
        return out

    async def _send(self, key: str, req: LLMRequest, stop: asyncio.Event) -> LLMResponse:
        if stop.is_set():
            return LLMResponse(error="budget")
        reserve = self.accounting.worst_case_cost(req)
        if not self.accounting.try_reserve(reserve):
            stop.set()  # stop sending; requests in flight finish and are cached
            return LLMResponse(error="budget")
        try:
            attempt = 0
            while True:
                attempt += 1
                await self.rpm.acquire(1)
                await self.tpm.acquire(estimate_tokens(req.system + "".join(t for _, t in req.messages))
                                       + req.max_tokens)
                self.server_calls += 1
                self.accounting.record_http_call(req.operation)
                try:
                    completion = await asyncio.wait_for(self.backend.complete(req), self.timeout_s)
                except (TransientError, asyncio.TimeoutError) as exc:
                    if isinstance(exc, UnreachableError) and not self.answered:
                        wait = self._unreachable()
                        if wait is None:
                            raise self.unreachable_error(exc) from None
                        self.accounting.record_retry(req.operation, exc.reason, wait)
                        await asyncio.sleep(wait)
                        attempt -= 1  # bounded by engine.connect_wait_s, not by the retry count
                        continue
                    if getattr(exc, "reason", "timeout") in SERVER_ANSWERED:
                        self._heard_from_server()
                    retry_after = getattr(exc, "retry_after", None)
                    reason = str(exc) or f"no answer within engine.timeout_s={self.timeout_s}s"
                    if attempt > self.retry.max_retries:
                        self.accounting.record_failure(req.operation, attempt, "gave_up")
                        log.warning("request failed after %d attempts: %s", attempt, reason)
                        return LLMResponse(error=f"gave up after {attempt} attempts: {reason}", attempts=attempt)
                    delay = self.retry.delay(attempt - 1, retry_after)
                    self.accounting.record_retry(req.operation, getattr(exc, "reason", "timeout"), delay)
                    log.info("attempt %d failed (%s); retrying in %.2fs: %s", attempt, reason, delay,
                             self.retry.describe(delay, retry_after))
                    await asyncio.sleep(delay)
                    continue
                except PermanentError as exc:
                    self._heard_from_server()
                    self.accounting.record_failure(req.operation, attempt, exc.reason)
                    log.warning("request rejected: %s", exc)
                    return LLMResponse(error=f"rejected: {exc}", attempts=attempt)
                self._heard_from_server()
                completion = self._with_usage(req, completion)
                cost = self.accounting.record_answer(req.operation, completion, attempt)
                self.cache.put(key, self.backend.name, self.backend.model, completion, cost,
                               ledger=self.accounting.budget.ledger)
                return _response(completion, cost, cached=False, attempts=attempt)
        finally:
            self.accounting.release(reserve)

    async def _call_with_retries(self, what: str, fn: Any, *args: Any) -> Any:
        """Batch-API management calls (submit, poll, fetch) share the retry policy, and the bounded wait for a
        server that cannot be reached."""
        attempt = 0
        while True:
            attempt += 1
            self.server_calls += 1
            self.accounting.record_http_call(BATCH_OPERATION)
            try:
                result = await asyncio.wait_for(fn(*args), self.timeout_s)
            except (TransientError, asyncio.TimeoutError) as exc:
                if isinstance(exc, UnreachableError) and not self.answered:
                    wait = self._unreachable()
                    if wait is None:
                        raise self.unreachable_error(exc) from None
                    self.accounting.record_retry(BATCH_OPERATION, exc.reason, wait)
                    await asyncio.sleep(wait)
                    attempt -= 1
                    continue
                if getattr(exc, "reason", "timeout") in SERVER_ANSWERED:
                    self._heard_from_server()
                if attempt > self.retry.max_retries:
                    raise LLMError(f"{what} failed after {attempt} attempts: {exc or 'timeout'}; "
                                   f"rerun to continue (submitted batches are resumed)") from None
                retry_after = getattr(exc, "retry_after", None)
                delay = self.retry.delay(attempt - 1, retry_after)
                self.accounting.record_retry(BATCH_OPERATION, getattr(exc, "reason", "timeout"), delay)
                log.info("%s: attempt %d failed (%s); retrying in %.2fs: %s", what, attempt, exc or "timeout", delay,
                         self.retry.describe(delay, retry_after))
                await asyncio.sleep(delay)
            except PermanentError as exc:
                raise LLMError(f"{what} was rejected: {exc}") from None
            else:
                self._heard_from_server()
                return result

    # Batch APIs (Anthropic Message Batches, OpenAI Batch): submit, record the id, poll, collect -----
    async def _batches(self, todo: dict[str, LLMRequest]) -> dict[str, LLMResponse]:
        out: dict[str, LLMResponse] = {}
        backend: Any = self.backend
        # 1. batches a previous run submitted for these requests: poll them instead of resubmitting
        for batch_id, keys in self.cache.pending_batches(backend.name, todo).items():
            log.info("resuming Message Batch %s (%d of our requests)", batch_id, len(keys))
            out.update(await self._collect(batch_id, {k: todo[k] for k in keys}))
        remaining = {k: r for k, r in todo.items() if k not in out}
        # 2. submit the rest in chunks, each recorded before we wait on it
        items = list(remaining.items())
        for start in range(0, len(items), _BATCH_CHUNK):
            chunk = dict(items[start:start + _BATCH_CHUNK])
            affordable: dict[str, LLMRequest] = {}
            for key, req in chunk.items():
                if self.accounting.try_reserve(self.accounting.worst_case_cost(req, batch=True)):
                    affordable[key] = req
                else:
                    out[key] = LLMResponse(error="budget")
            if affordable:
                batch_id = await self._call_with_retries("submitting a Message Batch", backend.batch_submit,
                                                         list(affordable.items()))
                self.cache.record_batch(batch_id, backend.name, affordable)
                log.info("submitted Message Batch %s with %d requests", batch_id, len(affordable))
                try:
                    out.update(await self._collect(batch_id, affordable))
                finally:
                    for req in affordable.values():
                        self.accounting.release(self.accounting.worst_case_cost(req, batch=True))
        return out

    async def _collect(self, batch_id: str, wanted: dict[str, LLMRequest]) -> dict[str, LLMResponse]:
        backend: Any = self.backend
        while True:
            status = await self._call_with_retries("polling a Message Batch", backend.batch_status, batch_id)
            if status == "ended":
                break
            await asyncio.sleep(self.batch_poll_s)
        results = await self._call_with_retries("fetching Message Batch results", backend.batch_results, batch_id)
        out: dict[str, LLMResponse] = {}
        for key, req in wanted.items():
            result = results.get(key, "missing from the batch results")
            if isinstance(result, Completion):
                result = self._with_usage(req, result)
                cost = self.accounting.record_answer(req.operation, result, 1, batch=True)
                self.cache.put(key, backend.name, backend.model, result, cost, ledger=self.accounting.budget.ledger)
                out[key] = _response(result, cost, cached=False, attempts=1)
            else:  # errored / expired / canceled: not cached, the next run submits it again
                self.accounting.record_failure(req.operation, 1, "errored")
                out[key] = LLMResponse(error=f"batch request failed: {result}", attempts=1)
        self.cache.finish_batch(batch_id)
        return out

    def _with_usage(self, req: LLMRequest, c: Completion) -> Completion:
        """A reply whose server sent no token usage gets estimated tokens (the documented rule, 4 characters
        per token: the prompt for input, the reply for output), marked as estimated, so it is priced and
        counted against llm.budget_usd instead of costing nothing. Warned about once per client."""
        if c.input_tokens is not None and c.output_tokens is not None:
            return c
        estimated_in, estimated_out = c.input_tokens is None, c.output_tokens is None
        if not self._warned_missing_usage:
            self._warned_missing_usage = True
            log.warning("%s/%s sent a reply without token usage; its tokens are estimated as characters / 4 and "
                        "counted against the budget (accounting: estimated_input_tokens, estimated_output_tokens); "
                        "this is said once", self.backend.name, self.backend.model)
        return dataclasses.replace(
            c, input_tokens=estimate_tokens(req.system + "".join(t for _, t in req.messages))
            if estimated_in else c.input_tokens,
            output_tokens=estimate_tokens(c.text) if estimated_out else c.output_tokens,
            input_estimated=estimated_in, output_estimated=estimated_out)

    # local in-process generation (vllm, transformers) ---------------------------------------------
    async def _local(self, todo: dict[str, LLMRequest]) -> dict[str, LLMResponse]:
        out: dict[str, LLMResponse] = {}
        items = list(todo.items())
        for start in range(0, len(items), self.local_batch_size):
            chunk = items[start:start + self.local_batch_size]
            self.server_calls += 1
            # a worker thread keeps the event loop (and any progress display) responsive
            results = await asyncio.to_thread(self.backend.complete_batch, [r for _, r in chunk])
            for (key, req), result in zip(chunk, results):
                if isinstance(result, Completion):
                    cost = self.accounting.record_answer(req.operation, result, 1)
                    self.cache.put(key, self.backend.name, self.backend.model, result, cost,
                                   ledger=self.accounting.budget.ledger)
                    out[key] = _response(result, cost, cached=False, attempts=1)
                else:
                    self.accounting.record_failure(req.operation, 1, "generation_error")
                    out[key] = LLMResponse(error=f"generation failed: {result}", attempts=1)
        return out


def _response(c: Completion, cost: float, cached: bool, attempts: int) -> LLMResponse:
    return LLMResponse(text=c.text, input_tokens=c.input_tokens, output_tokens=c.output_tokens, cost_usd=cost,
                       cached=cached, attempts=attempts, finish_reason=c.finish_reason)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from synchronous code, also when the caller already runs an event loop
    (a notebook, an async Prefect task): then it runs on its own loop in a helper thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="lagcl-llm")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
