"""The Anthropic Message Batches mode (engine.batch_api): half price, asynchronous, and resumable:
a submitted batch id is recorded in the cache db, so a restarted run polls it instead of paying twice."""

from __future__ import annotations

import asyncio

import pytest
from lagcl.llm.protocol_server import LLMServer, Reply, Status

from lagcl.config import EngineConfig, LLMConfig
from lagcl.llm import LLMRequest, make_client

PRICE = {"claude-test": (3.0, 15.0)}


@pytest.fixture
def server():
    with LLMServer(lambda prompt: '{"ratings": []}') as s:
        yield s


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")


def client_for(server, tmp_path, **kw):
    cfg = EngineConfig(name="anthropic", model="claude-test", base_url=server.base_url, batch_api=True,
                       batch_poll_s=0.05, retry_base_s=0.01, **kw)
    return make_client(cfg, LLMConfig(prices=PRICE), tmp_path)


def score_requests(n: int) -> list[LLMRequest]:
    return [LLMRequest.single("score", f"user {i}", max_tokens=50, operation="score_pos") for i in range(n)]


def submits(server) -> int:
    return sum(r.method == "POST" and r.path.endswith("/messages/batches") for r in server.log)


def test_scoring_goes_through_one_batch_at_half_price_and_is_cached(server, tmp_path):
    server.script = [Reply("a", input_tokens=1000, output_tokens=100)] * 3
    client = client_for(server, tmp_path)

    out = client.generate_sync(score_requests(3))

    assert [r.text for r in out] == ["a", "a", "a"]
    assert submits(server) == 1 and server.model_calls() == []  # no per-request Messages calls
    assert out[0].cost_usd == pytest.approx(0.5 * (1000 * 3.0 + 100 * 15.0) / 1e6)
    polls = [r for r in server.log if r.method == "GET" and not r.path.endswith("/results")]
    assert len(polls) >= 2  # the first poll said in_progress

    n_log = len(server.log)
    assert all(r.cached for r in client_for(server, tmp_path).generate_sync(score_requests(3)))
    assert len(server.log) == n_log


def test_a_restarted_run_polls_the_batch_it_submitted_instead_of_resubmitting(server, tmp_path):
    server.batch_polls_before_end = 10_000  # the batch will not end before the "crash"
    crashed = client_for(server, tmp_path)

    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(asyncio.wait_for(crashed.generate(score_requests(4)), timeout=3.0))  # time to submit, loaded
    assert submits(server) == 1

    server.batch_polls_before_end = 0
    resumed = client_for(server, tmp_path)
    out = resumed.generate_sync(score_requests(4))

    assert all(r.ok and not r.cached for r in out)
    assert submits(server) == 1  # polled the recorded batch, paid once
    assert resumed.accounting.totals().requests == 4


def test_requests_that_errored_inside_a_batch_are_not_cached_and_go_into_the_next_batch(server, tmp_path):
    server.batch_polls_before_end = 0
    server.script = [Status(500)]  # the first request of the batch errors
    first = client_for(server, tmp_path).generate_sync(score_requests(3))
    [failed] = [r for r in first if not r.ok]
    assert "batch request failed: errored" in failed.error

    second = client_for(server, tmp_path).generate_sync(score_requests(3))
    assert all(r.ok for r in second) and sum(r.cached for r in second) == 2
    assert submits(server) == 2
    assert len(server.batches[list(server.batches)[-1]]["results"]) == 1


def test_operations_other_than_scoring_stay_on_the_online_api(server, tmp_path):
    client = client_for(server, tmp_path)
    client.generate_sync([LLMRequest.single("s", "profile me", operation="profile_user")])
    assert submits(server) == 0 and len(server.model_calls()) == 1
