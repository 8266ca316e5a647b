"""The OpenAI Batch API for the scoring operations (engine.batch_api with engine.name=openai), mirroring the
Anthropic Message Batches path: half price, the batch id recorded before waiting, and a run killed between
submit and results resumed by polling the same batch, so nothing is paid twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from lagcl.llm.protocol_server import LLMServer, Reply, Status

from lagcl.config import EngineConfig, LLMConfig
from lagcl.llm import LLMRequest, make_client

PRICE = {"gpt-test": [2.0, 8.0, 0.5, 2.0]}
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def server():
    with LLMServer(lambda prompt: '{"like_scores": {}}') as s:
        yield s


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")


def client_for(server, tmp_path, **kw):
    cfg = EngineConfig(name="openai", model="gpt-test", base_url=server.base_url + "/v1", batch_api=True,
                       batch_poll_s=0.05, retry_base_s=0.01, **kw)
    return make_client(cfg, LLMConfig(prices=PRICE), tmp_path)


def score_requests(n: int) -> list[LLMRequest]:
    return [LLMRequest.single("score", f"user {i}", max_tokens=50, operation="score_pos") for i in range(n)]


def creates(server) -> int:
    return sum(r.method == "POST" and r.path.rstrip("/").endswith("/v1/batches") for r in server.log)


def test_scoring_goes_through_one_openai_batch_at_half_price_with_cached_tokens_priced_apart(server, tmp_path):
    server.script = [Reply("a", input_tokens=1000, output_tokens=100, cache_read_tokens=400)] * 3
    client = client_for(server, tmp_path)

    out = client.generate_sync(score_requests(3))

    assert [r.text for r in out] == ["a", "a", "a"]
    assert creates(server) == 1 and server.model_calls() == []  # no per-request chat completions
    assert out[0].cost_usd == pytest.approx(0.5 * (600 * 2.0 + 400 * 0.5 + 100 * 8.0) / 1e6)
    upload = next(iter(server.files.values())).decode().splitlines()[0]  # the JSONL the client uploaded
    assert '"url": "/v1/chat/completions"' in upload and '"custom_id": "' in upload
    n_log = len(server.log)
    assert all(r.cached for r in client_for(server, tmp_path).generate_sync(score_requests(3)))
    assert len(server.log) == n_log


def test_requests_that_errored_inside_an_openai_batch_are_not_cached_and_go_into_the_next_batch(server, tmp_path):
    server.batch_polls_before_end = 0
    server.script = [Status(500)]
    first = client_for(server, tmp_path).generate_sync(score_requests(3))
    [failed] = [r for r in first if not r.ok]
    assert "batch request failed: errored" in failed.error

    second = client_for(server, tmp_path).generate_sync(score_requests(3))
    assert all(r.ok for r in second) and sum(r.cached for r in second) == 2
    assert creates(server) == 2


def test_a_run_killed_between_submit_and_results_is_resumed_by_polling_without_paying_twice(server, tmp_path):
    server.batch_polls_before_end = 10_000  # the batch does not end while the first process lives
    script = textwrap.dedent(f"""
        import os
        from lagcl.config import EngineConfig, LLMConfig
        from lagcl.llm import LLMRequest, make_client
        cfg = EngineConfig(name="openai", model="gpt-test", base_url={server.base_url + '/v1'!r}, batch_api=True,
                           batch_poll_s=0.05)
        client = make_client(cfg, LLMConfig(prices={PRICE!r}), {str(tmp_path)!r})
        client.generate_sync([LLMRequest.single("score", f"user {{i}}", max_tokens=50, operation="score_pos")
                              for i in range(4)])
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        # a poll of the batch means its id was recorded (the client records it before it waits)
        while not any(r.method == "GET" and "/v1/batches/" in r.path for r in server.log):
            assert proc.poll() is None and time.monotonic() < deadline, "the first run did not reach its poll"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert creates(server) == 1

    server.batch_polls_before_end = 0
    resumed = client_for(server, tmp_path)
    out = resumed.generate_sync(score_requests(4))

    assert all(r.ok and not r.cached for r in out)
    assert creates(server) == 1  # polled the recorded batch: submitted, and paid, once
    assert resumed.accounting.totals().requests == 4
    assert client_for(server, tmp_path).cache.pending_batches("openai", [resumed.key(r) for r in score_requests(4)]) \
        == {}
