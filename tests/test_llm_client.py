"""The LLM call path (lagcl.llm.client) against a local server speaking the real OpenAI and Anthropic
wire protocols, driven by the real SDKs: cache, retries, timeouts, accounting, budget, keys."""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from lagcl.llm.protocol_server import LLMServer, Reply, Sleep, Status

from lagcl.config import EngineConfig, LLMConfig
from lagcl.errors import BudgetExceededError, LLMError
from email.utils import formatdate

from lagcl.llm import LLMRequest, ResponseCache, make_client
from lagcl.llm.backends.base import parse_retry_after
from lagcl.llm.limits import RateLimiter
from lagcl.llm.types import Completion

SECRET = "sk-test-9f8e7d6c5b4a-do-not-leak"
PRICE = {"test-model": (2.0, 10.0)}  # USD per 1M input / output tokens


@pytest.fixture
def server():
    with LLMServer(lambda prompt: '{"answer": 42}') as s:
        yield s


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("LAGCL_TEST_KEY", SECRET)


def engine(server: LLMServer, name: str = "openai", **kw) -> EngineConfig:
    base = server.base_url + ("/v1" if name == "openai" else "")
    settings = dict(name=name, model="test-model", base_url=base, api_key_env="LAGCL_TEST_KEY",
                    retry_base_s=0.01, retry_max_s=0.05, timeout_s=2.0, max_retries=3)
    settings.update(kw)
    return EngineConfig(**settings)


def requests(n: int, operation: str = "score_pos") -> list[LLMRequest]:
    return [LLMRequest.single("You answer in JSON.", f"question {i}", max_tokens=100, operation=operation)
            for i in range(n)]


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_answers_come_back_in_request_order_with_tokens_and_cost(server, tmp_path, backend):
    server.responder = lambda prompt: '{"echo": "%s"}' % prompt.split()[-1]
    client = make_client(engine(server, backend), LLMConfig(prices=PRICE, budget_usd=1.0), tmp_path)

    out = client.generate_sync(requests(3))  # sent concurrently, answered in any order

    assert [r.text for r in out] == ['{"echo": "0"}', '{"echo": "1"}', '{"echo": "2"}']
    for r in out:  # the server reports usage as len(text) // 4 tokens
        assert r.input_tokens > 0 and r.output_tokens == len(r.text) // 4
        assert r.cost_usd == pytest.approx((r.input_tokens * 2.0 + r.output_tokens * 10.0) / 1e6)
    total = client.accounting.totals()
    assert total.requests == 3 and total.attempts == 3 and total.failed == 0
    assert total.cost_usd == pytest.approx(sum(r.cost_usd for r in out))
    assert len(server.model_calls()) == 3


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_a_second_run_is_served_from_the_cache_without_contacting_the_server(server, tmp_path, backend):
    first = make_client(engine(server, backend), LLMConfig(prices=PRICE), tmp_path)
    answers = first.generate_sync(requests(4))
    assert len(server.model_calls()) == 4

    second = make_client(engine(server, backend), LLMConfig(prices=PRICE), tmp_path)  # a new process, same cache
    again = second.generate_sync(requests(4))

    assert len(server.model_calls()) == 4  # zero new requests
    assert [a.text for a in again] == [a.text for a in answers]
    assert all(a.cached and a.cost_usd == 0 for a in again)
    assert second.accounting.totals().cached == 4 and second.accounting.totals().requests == 0


def test_the_cache_key_covers_model_and_generation_parameters(server, tmp_path):
    client = make_client(engine(server), LLMConfig(), tmp_path)
    base = LLMRequest.single("sys", "same prompt", max_tokens=100)
    client.generate_sync([base])
    client.generate_sync([LLMRequest.single("sys", "same prompt", max_tokens=200)])
    client.generate_sync([LLMRequest.single("sys", "same prompt", max_tokens=100, temperature=0.7)])
    make_client(engine(server, model="other-model"), LLMConfig(), tmp_path).generate_sync([base])
    assert len(server.model_calls()) == 4
    client.generate_sync([base, base])  # cached, and a duplicate in one batch is never sent twice
    assert len(server.model_calls()) == 4


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_429_and_500_are_retried_honouring_retry_after(server, tmp_path, backend):
    server.script = [Status(429, retry_after=0.3), Status(500), Status(503)]
    client = make_client(engine(server, backend, retry_max_s=1.0), LLMConfig(), tmp_path)
    start = time.monotonic()

    [answer] = client.generate_sync(requests(1))

    assert answer.ok and answer.attempts == 4
    assert len(server.model_calls()) == 4
    assert time.monotonic() - start >= 0.3  # waited at least what Retry-After said
    assert client.accounting.totals().attempts == 4


def test_retry_after_is_read_as_delta_seconds_http_date_or_milliseconds():
    now = 1_700_000_000.0
    assert parse_retry_after({"retry-after": "5"}, now) == 5.0
    assert parse_retry_after({"retry-after": formatdate(now + 5, usegmt=True)}, now) == 5.0
    assert parse_retry_after({"retry-after": formatdate(now - 60, usegmt=True)}, now) == 0.0  # a date passed
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "5"}, now) == 0.25  # the finer one wins
    assert parse_retry_after({"retry-after": "soon"}, now) is None
    assert parse_retry_after({"retry-after": "nan"}, now) is None
    assert parse_retry_after({}, now) is None


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_a_retry_after_http_date_is_waited_for(server, tmp_path, backend):
    # an HTTP-date has one-second resolution: "now + 4 s" asks for a wait of more than 3 s from here, more than
    # 1 s even when a loaded machine takes 2 s to build the client and send (a CI run once waited 0.55 s of "+2 s")
    server.script = [Status(429, headers={"retry-after": formatdate(time.time() + 4, usegmt=True)})]
    client = make_client(engine(server, backend, retry_max_s=10.0), LLMConfig(), tmp_path)
    start = time.monotonic()

    [answer] = client.generate_sync(requests(1))

    waited = time.monotonic() - start
    assert answer.ok and answer.attempts == 2
    assert 1.0 <= waited < 7.0  # the date's wait, not the 0.01-0.05 s backoff
    retries = client.accounting.totals()
    assert retries.retries == {"429": 1} and retries.retry_wait_s >= 1.0


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_retry_after_ms_is_honoured(server, tmp_path, backend):
    server.script = [Status(503, headers={"retry-after-ms": "400"})]
    client = make_client(engine(server, backend, retry_max_s=10.0), LLMConfig(), tmp_path)
    start = time.monotonic()
    [answer] = client.generate_sync(requests(1))
    assert answer.ok and time.monotonic() - start >= 0.4
    assert client.accounting.totals().retries == {"5xx": 1}


def test_a_retry_after_longer_than_retry_max_s_is_capped_and_the_wait_is_logged(server, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lagcl.llm")
    server.script = [Status(429, retry_after=30)]
    client = make_client(engine(server, retry_max_s=0.2), LLMConfig(), tmp_path)
    start = time.monotonic()

    [answer] = client.generate_sync(requests(1))

    assert answer.ok and time.monotonic() - start < 5
    assert client.accounting.totals().retry_wait_s == pytest.approx(0.2)
    assert "asked for 30.00s (Retry-After), capped at engine.retry_max_s=0.2s" in caplog.text


def test_http_calls_retries_by_reason_and_seconds_waiting_are_in_the_accounting(server, tmp_path):
    server.script = [Status(429, retry_after=0.1), Status(502), Sleep(6.0)]  # timeout margin: see the test below
    client = make_client(engine(server, timeout_s=2.0, retry_max_s=1.0), LLMConfig(), tmp_path)

    [answer] = client.generate_sync(requests(1))

    assert answer.ok and answer.attempts == 4
    total = client.accounting.totals()
    assert total.http_calls == 4 == len(server.model_calls())
    assert total.retries == {"429": 1, "5xx": 1, "timeout": 1}
    assert total.retry_wait_s >= 0.1
    summary = client.accounting.summary()["score_pos"]
    assert summary["http_calls"] == 4 and summary["retries"] == {"429": 1, "5xx": 1, "timeout": 1}


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_a_reply_without_usage_is_estimated_marked_priced_and_warned_about_once(server, tmp_path, caplog, backend):
    caplog.set_level(logging.WARNING, logger="lagcl.llm")
    server.script = [Reply("x" * 400, usage=False)] * 3
    client = make_client(engine(server, backend), LLMConfig(prices=PRICE), tmp_path)

    out = client.generate_sync(requests(3))

    prompt = requests(1)[0]
    estimated_in = math.ceil(prompt.prompt_chars() / 4)  # the documented rule: 4 characters per token
    assert [(r.input_tokens, r.output_tokens) for r in out] == [(estimated_in, 100)] * 3
    assert all(r.cost_usd == pytest.approx((estimated_in * 2.0 + 100 * 10.0) / 1e6) for r in out)
    total = client.accounting.totals()
    assert total.estimated_input_tokens == 3 * estimated_in and total.estimated_output_tokens == 300
    assert total.input_tokens == 3 * estimated_in and total.output_tokens == 300
    assert caplog.text.count("without token usage") == 1


def test_replies_without_usage_count_against_the_budget(server, tmp_path):
    # the budget of test_budget_stops_cleanly_...: three worst-case reservations fit; the replies (400 chars = 100
    # tokens each, estimated) are paid, so the run stops instead of answering all six for "free"
    server.script = [Reply("x" * 400, usage=False)] * 10
    client = make_client(engine(server, max_concurrency=1), LLMConfig(prices=PRICE, budget_usd=0.0035), tmp_path)

    with pytest.raises(BudgetExceededError):
        client.generate_sync(requests(6))

    assert 1 <= len(server.model_calls()) < 6
    assert 0 < client.accounting.spent_usd <= 0.0035


def test_a_request_slower_than_the_timeout_is_abandoned_and_retried(server, tmp_path):
    # the margins are wide because a loaded CI machine once took over 0.4 s to answer the quick retry
    server.script = [Sleep(6.0)]
    client = make_client(engine(server, timeout_s=2.0), LLMConfig(), tmp_path)
    [answer] = client.generate_sync(requests(1))
    assert answer.ok and answer.attempts == 2


def test_retries_are_bounded_and_a_request_that_never_succeeds_is_recorded_as_failed(server, tmp_path):
    server.script = [Status(500)] * 4
    client = make_client(engine(server, max_retries=3), LLMConfig(), tmp_path)
    [answer] = client.generate_sync(requests(1))
    assert not answer.ok and "gave up after 4 attempts" in answer.error
    assert len(server.model_calls()) == 4
    assert client.accounting.totals().failed == 1


def test_a_rerun_after_failures_resends_only_the_requests_that_never_got_an_answer(server, tmp_path):
    rejected = "question 1"
    client = make_client(engine(server), LLMConfig(), tmp_path)
    server.script = [Status(400)]  # a 400 is not retried and not cached
    [bad] = client.generate_sync([r for r in requests(3) if r.messages[0][1] == rejected])
    good = client.generate_sync([r for r in requests(3) if r.messages[0][1] != rejected])
    assert not bad.ok and "rejected: HTTP 400" in bad.error and all(g.ok for g in good)
    sent_before = len(server.model_calls())

    rerun = make_client(engine(server), LLMConfig(), tmp_path).generate_sync(requests(3))

    assert all(r.ok for r in rerun)
    resent = server.model_calls()[sent_before:]
    assert len(resent) == 1 and rejected in str(resent[0].body["messages"])


def test_budget_stops_cleanly_keeps_every_answer_and_a_rerun_continues(server, tmp_path):
    # each request reserves its worst case: (prompt chars/4 + max_tokens 100) tokens; at $2/$10 per 1M
    # that is about $0.00105, so a $0.0035 budget allows three requests before it stops
    server.script = [Reply("ok", input_tokens=10, output_tokens=100)] * 10
    llm = LLMConfig(prices=PRICE, budget_usd=0.0035)
    client = make_client(engine(server, max_concurrency=1), llm, tmp_path)

    with pytest.raises(BudgetExceededError, match="Raise llm.budget_usd and rerun") as err:
        client.generate_sync(requests(6))

    assert SECRET not in str(err.value)
    answered = len(server.model_calls())
    assert 1 <= answered < 6
    assert client.accounting.spent_usd <= 0.0035
    assert len(ResponseCache(tmp_path)) == answered  # persisted before raising

    more = make_client(engine(server, max_concurrency=1), LLMConfig(prices=PRICE, budget_usd=1.0), tmp_path)
    out = more.generate_sync(requests(6))
    assert all(r.ok for r in out)
    assert len(server.model_calls()) == 6  # only the unanswered ones were sent
    assert sum(r.cached for r in out) == answered


def test_a_dry_run_never_sends_a_request_but_may_read_the_cache(server, tmp_path):
    make_client(engine(server), LLMConfig(), tmp_path).generate_sync(requests(1))
    dry = make_client(engine(server), LLMConfig(dry_run=True), tmp_path)
    assert dry.generate_sync(requests(1))[0].cached
    with pytest.raises(LLMError, match="llm.dry_run is set but 1 uncached"):
        dry.generate_sync(requests(2))
    assert len(server.model_calls()) == 1


def test_a_budget_without_a_price_for_the_model_is_refused_before_any_call(server, tmp_path):
    with pytest.raises(LLMError, match="llm.prices has no entry for model 'test-model'"):
        make_client(engine(server), LLMConfig(budget_usd=1.0), tmp_path)
    assert server.log == []


@pytest.mark.parametrize("backend,default_env", [("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY")])
def test_a_missing_api_key_is_a_clear_error_before_any_work(server, tmp_path, monkeypatch, backend, default_env):
    monkeypatch.delenv(default_env, raising=False)
    with pytest.raises(LLMError, match=f"environment variable {default_env}, which is not set"):
        make_client(engine(server, backend, api_key_env=None), LLMConfig(), tmp_path)
    assert server.log == []


def test_a_local_openai_compatible_server_may_run_without_a_key(server, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    client = make_client(engine(server, api_key_env=None, api_key_required=False), LLMConfig(), tmp_path)
    assert client.generate_sync(requests(1))[0].ok


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_a_rejected_key_stops_the_run_with_an_llm_error_that_does_not_show_the_key(server, tmp_path, backend):
    server.script = [Status(401, body='{"error": {"message": "bad key %s"}}' % SECRET)] * 3
    client = make_client(engine(server, backend), LLMConfig(), tmp_path)
    with pytest.raises(LLMError, match="rejected the API key") as err:
        client.generate_sync(requests(1))
    assert SECRET not in str(err.value)


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_the_key_is_sent_to_the_server_but_never_reaches_the_cache_the_logs_or_errors(server, tmp_path, caplog,
                                                                                      backend):
    caplog.set_level(logging.DEBUG)
    server.script = [Status(500), Status(400, body='{"error": {"message": "echo %s"}}' % SECRET)]
    client = make_client(engine(server, backend), LLMConfig(), tmp_path)
    out = client.generate_sync(requests(1)) + client.generate_sync(requests(3)[1:])

    sent = server.model_calls()[0].headers
    assert SECRET in sent.get("authorization", "") + sent.get("x-api-key", "")
    assert SECRET not in caplog.text
    assert all(SECRET not in (r.error or "") + r.text for r in out)
    client.cache.close()
    for f in Path(tmp_path).iterdir():  # the db, its WAL and shared-memory files
        assert SECRET.encode() not in f.read_bytes()


def test_max_concurrency_bounds_requests_in_flight(server, tmp_path):
    in_flight = {"now": 0, "max": 0}
    lock = threading.Lock()

    def slow(prompt: str) -> str:
        with lock:
            in_flight["now"] += 1
            in_flight["max"] = max(in_flight["max"], in_flight["now"])
        time.sleep(0.3)
        with lock:
            in_flight["now"] -= 1
        return "ok"

    server.responder = slow
    make_client(engine(server, max_concurrency=2), LLMConfig(), tmp_path).generate_sync(requests(6))
    assert in_flight["max"] == 2


def test_the_rate_limiter_spaces_requests_after_its_burst():
    limiter = RateLimiter(per_minute=1200, burst=1)  # 20 per second, no burst beyond one

    async def take(n: int) -> float:
        start = time.monotonic()
        for _ in range(n):
            await limiter.acquire()
        return time.monotonic() - start

    assert asyncio.run(take(5)) >= 4 / 20 * 0.9  # the first is free, then one per 50 ms


def test_generate_sync_also_works_inside_a_running_event_loop(server, tmp_path):
    client = make_client(engine(server), LLMConfig(), tmp_path)

    async def caller():
        return client.generate_sync(requests(2))

    assert all(r.ok for r in asyncio.run(caller()))


def _write_rows(path: str, start: int) -> None:
    cache = ResponseCache(path)
    for i in range(start, start + 150):
        cache.put(f"key-{i}", "openai", "m", Completion(f"text {i}", 1, 1), 0.0)


def test_several_processes_can_write_the_same_cache_at_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_rows, args=(str(tmp_path), s)) for s in (0, 150, 300)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    cache = ResponseCache(tmp_path)
    assert len(cache) == 450
    assert cache.get_many(["key-449"])["key-449"][0].text == "text 449"
    mode = sqlite3.connect(cache.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


# llama.cpp's server answers a prompt longer than its context with this 400 (tools/server/server-common.cpp)
LLAMA_CONTEXT_ERROR = ('{"error": {"code": 400, "type": "exceed_context_size_error", "n_prompt_tokens": 5000, '
                       '"n_ctx": 4096, "message": "request (5000 tokens) exceeds the available context size '
                       '(4096 tokens), try increasing it"}}')


def test_a_prompt_longer_than_the_servers_context_fails_that_request_naming_the_settings_that_fix_it(
        server, tmp_path):
    server.script = [Status(400, body=LLAMA_CONTEXT_ERROR)]
    client = make_client(engine(server), LLMConfig(), tmp_path)

    [too_long] = client.generate_sync(requests(1))
    [fits] = client.generate_sync(requests(2)[1:])

    assert not too_long.ok and fits.ok
    assert "does not fit the model's context" in too_long.error and "LLM_CTX" in too_long.error
    assert "augment.items_per_call" in too_long.error and "5000 tokens" in too_long.error
    totals = client.accounting.totals()
    assert totals.failed == 1 and totals.no_reply == {"context_exceeded": 1}
    assert len(server.model_calls()) == 2  # not retried: the same prompt cannot fit on a second try


def test_a_reply_schema_the_server_cannot_compile_stops_the_stage_naming_the_response_format_setting(
        server, tmp_path):
    server.script = [Status(400, body='{"error": {"code": 400, "type": "invalid_request_error", '
                                      '"message": "JSON schema conversion failed: unsupported keyword"}}')]
    client = make_client(engine(server, extra={"response_format": "json_schema"}), LLMConfig(), tmp_path)
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}

    with pytest.raises(LLMError) as err:
        client.generate_sync([LLMRequest.single("JSON.", "q", max_tokens=50, json_schema=schema)])

    assert "engine.extra.response_format=json_schema" in str(err.value)
    assert "engine.extra.response_format=json_object" in str(err.value)


def test_requests_without_a_reply_are_counted_by_reason(server, tmp_path):
    server.script = [Status(400), Status(500), Status(500), Status(500), Status(500)]
    client = make_client(engine(server, max_retries=3), LLMConfig(), tmp_path)

    [rejected] = client.generate_sync(requests(1))
    [gave_up] = client.generate_sync(requests(2)[1:])

    assert not rejected.ok and not gave_up.ok
    assert client.accounting.totals().no_reply == {"rejected": 1, "gave_up": 1}
