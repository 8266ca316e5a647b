"""LLM clients: one async call path (`LLMClient.generate`) with a SQLite response cache, rate limits,
retries and accounting, over four backends: anthropic, openai (any OpenAI-compatible server), vllm
(in-process, GPU) and transformers (a local model directory or GGUF file)."""

from __future__ import annotations

from pathlib import Path

from lagcl.config import EngineConfig, LLMConfig
from lagcl.errors import LLMError
from lagcl.llm.accounting import Accounting, Budget, find_price
from lagcl.llm.backends.base import Backend, read_api_key
from lagcl.llm.cache import ResponseCache
from lagcl.llm.client import LLMClient, RetryPolicy, run_sync
from lagcl.llm.types import Completion, LLMRequest, LLMResponse

__all__ = ["Accounting", "Budget", "Completion", "LLMClient", "LLMRequest", "LLMResponse", "ResponseCache",
           "make_backend", "make_client", "run_sync"]

DEFAULT_KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}


def make_backend(engine: EngineConfig, prompt_cache: bool = True) -> Backend:
    """The backend named by `engine.name`. Remote backends read their key here, so a missing key is an
    LLMError before any work starts; optional packages are imported only for the backend chosen."""
    if engine.name in ("anthropic", "openai"):
        env = engine.api_key_env or DEFAULT_KEY_ENV[engine.name]
        key = read_api_key(env, engine.name) if engine.api_key_required else None
        if engine.name == "anthropic":
            from lagcl.llm.backends.anthropic_backend import AnthropicBackend

            if key is None:
                raise LLMError("the anthropic engine always needs an API key (engine.api_key_required=true)")
            return AnthropicBackend(engine.model, key, engine.base_url, engine.timeout_s, prompt_cache=prompt_cache)
        from lagcl.llm.backends.openai_backend import OpenAIBackend

        return OpenAIBackend(engine.model, key, engine.base_url, engine.timeout_s,
                             response_format=str(engine.extra.get("response_format", "json_object")))
    if engine.name == "vllm":
        from lagcl.llm.backends.vllm_backend import VLLMBackend

        return VLLMBackend(engine.model, dtype=engine.dtype, extra=engine.extra)
    if engine.name == "transformers":
        from lagcl.llm.backends.transformers_backend import TransformersBackend

        return TransformersBackend(engine.model, device=engine.device, dtype=engine.dtype, extra=engine.extra)
    raise LLMError(f"engine '{engine.name}' is not an LLM backend (choose anthropic, openai, vllm or transformers)")


def make_client(engine: EngineConfig, llm: LLMConfig, cache_dir: str | Path,
                backend: Backend | None = None, budget: Budget | None = None) -> LLMClient:
    """The client for `engine`. `budget`: what it may spend (a stage's, from the planner: tasks/budget.py);
    without one, llm.budget_usd caps what this client pays."""
    backend = backend or make_backend(engine, llm.prompt_cache)
    price = (0.0, 0.0) if backend.local else find_price(llm.prices, engine.model)
    return LLMClient(
        backend, ResponseCache(cache_dir),
        Accounting(price, budget if budget is not None else llm.run_budget_usd, engine.model),
        max_concurrency=engine.max_concurrency, requests_per_minute=engine.requests_per_minute,
        tokens_per_minute=engine.tokens_per_minute, timeout_s=engine.timeout_s,
        retry=RetryPolicy(engine.max_retries, engine.retry_base_s, engine.retry_max_s),
        batch_api=engine.batch_api, batch_size=engine.batch_size, batch_poll_s=engine.batch_poll_s,
        dry_run=llm.dry_run, connect_wait_s=engine.connect_wait_s)
