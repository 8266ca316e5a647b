"""Prompt caching: the stable prefix of a scoring prompt (instructions + user profile) is marked for the
Anthropic prompt cache and comes first for OpenAI's automatic one; the cache-read and cache-write tokens
the providers report are counted apart and priced at their own rates (llm.prices)."""

from __future__ import annotations

import pytest
from lagcl.llm.protocol_server import LLMServer, Reply

from lagcl.config import EngineConfig, LLMConfig
from lagcl.errors import LLMError
from lagcl.llm import LLMRequest, make_client
from lagcl.llm.accounting import find_price, full_price
from lagcl.semantic.base import ScoreRequest
from lagcl.semantic.prompts import Prompts

# USD per 1M tokens: input, output, cache read, cache write
PRICE = {"test-model": [2.0, 10.0, 0.2, 2.5]}


@pytest.fixture
def server():
    with LLMServer(lambda prompt: '{"ok": true}') as s:
        yield s


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")


def client(server, tmp_path, backend: str, **llm):
    base = server.base_url + ("/v1" if backend == "openai" else "")
    cfg = EngineConfig(name=backend, model="test-model", base_url=base, retry_base_s=0.01)
    return make_client(cfg, LLMConfig(prices=PRICE, **llm), tmp_path)


def one(prefix_chars: int = 0) -> LLMRequest:
    return LLMRequest.single("You rate items.", "USER PROFILE: likes noir\nITEMS: 1, 2", max_tokens=50,
                             operation="score_pos", cache_prefix_chars=prefix_chars)


def test_anthropic_cache_reads_and_writes_are_priced_at_their_own_rates(server, tmp_path):
    # Anthropic reports input_tokens as the uncached rest, beside cache_read_ and cache_creation_input_tokens
    server.script = [Reply("a", input_tokens=2000, output_tokens=100, cache_read_tokens=1200, cache_write_tokens=300)]
    c = client(server, tmp_path, "anthropic")

    [answer] = c.generate_sync([one()])

    usage = server.model_calls()[0]
    assert usage.input_tokens == 2000
    assert answer.input_tokens == 2000  # every prompt token, cached or not
    expected = (500 * 2.0 + 1200 * 0.2 + 300 * 2.5 + 100 * 10.0) / 1e6
    assert answer.cost_usd == pytest.approx(expected)
    totals = c.accounting.totals()
    assert (totals.input_tokens, totals.cache_read_tokens, totals.cache_write_tokens) == (2000, 1200, 300)
    assert totals.cost_usd == pytest.approx(expected)
    # the same tokens without caching would have cost more
    assert expected < (2000 * 2.0 + 100 * 10.0) / 1e6


def test_openai_cached_prompt_tokens_are_priced_as_cache_reads(server, tmp_path):
    # OpenAI's prompt_tokens include prompt_tokens_details.cached_tokens
    server.script = [Reply("a", input_tokens=3000, output_tokens=50, cache_read_tokens=2048)]
    c = client(server, tmp_path, "openai")

    [answer] = c.generate_sync([one()])

    assert answer.input_tokens == 3000
    assert answer.cost_usd == pytest.approx((952 * 2.0 + 2048 * 0.2 + 50 * 10.0) / 1e6)
    assert c.accounting.summary()["score_pos"]["cache_read_tokens"] == 2048


def test_anthropic_marks_the_stable_prefix_with_cache_control_and_the_setting_turns_it_off(server, tmp_path):
    cut = len("USER PROFILE: likes noir\n")
    client(server, tmp_path / "on", "anthropic").generate_sync([one(cut)])
    client(server, tmp_path / "off", "anthropic", prompt_cache=False).generate_sync([one(cut)])

    on, off = (call.body for call in server.model_calls())
    assert on["messages"][0]["content"] == [
        {"type": "text", "text": "USER PROFILE: likes noir\n", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "ITEMS: 1, 2"}]
    assert on["system"] == off["system"] == "You rate items."
    assert off["messages"][0]["content"] == "USER PROFILE: likes noir\nITEMS: 1, 2"


def test_the_cache_breakpoint_does_not_change_the_response_cache_key(server, tmp_path):
    c = client(server, tmp_path, "anthropic")
    assert c.key(one(0)) == c.key(one(10))


@pytest.mark.parametrize("style", ["paper", "compact"])
def test_a_users_scoring_prompts_share_their_prefix_up_to_the_end_of_the_user_profile(style):
    p = Prompts("movie", style=style)
    a = p.score(ScoreRequest(7, "Enjoys noir.", "pos", ((1, "A noir."), (2, "A comedy."))))
    b = p.score(ScoreRequest(7, "Enjoys noir.", "pos", ((3, "A western."), (4, "A musical."))))

    cut = a.cache_prefix_chars
    assert cut > 0 and cut == b.cache_prefix_chars
    assert a.system == b.system and a.messages[0][1][:cut] == b.messages[0][1][:cut]
    assert a.messages[0][1][:cut].rstrip().endswith("}") and "Enjoys noir." in a.messages[0][1][:cut]
    assert "A noir." not in a.messages[0][1][:cut]  # candidates come after the breakpoint


def test_prices_take_two_or_four_values_and_two_mean_no_cache_discount():
    assert full_price([3.0, 15.0]) == (3.0, 15.0, 3.0, 3.0)
    assert find_price({"claude-sonnet-4-5": [3.0, 15.0, 0.3, 3.75]}, "claude-sonnet-4-5-20250929") == \
        (3.0, 15.0, 0.3, 3.75)
    with pytest.raises(LLMError, match="2 values"):
        full_price([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="llm.prices.m must be"):
        LLMConfig(prices={"m": [1.0, 2.0, 3.0]})


def test_the_engine_usage_written_to_stage_manifests_carries_the_cache_tokens(server, tmp_path):
    from lagcl.config import load_config
    from lagcl.semantic.llm_engine import LLMEngine

    server.script = [Reply('{"like_scores": {"1": 5}}', input_tokens=1500, output_tokens=10, cache_read_tokens=1024)]
    cfg = load_config(engine="openai", overrides=[f"engine.base_url={server.base_url}/v1", "engine.model=test-model"])
    engine = LLMEngine(cfg.engine, LLMConfig(prices=PRICE, prompt_style="compact"), domain="movie",
                       cache_dir=tmp_path)
    [result] = engine.score([ScoreRequest(1, "Enjoys noir.", "pos", ((1, "A noir."),))])

    usage = engine.usage()
    assert result.scores == {1: 5.0} and (usage.cache_read_tokens, usage.cache_write_tokens) == (1024, 0)
    assert usage.cost_usd == pytest.approx((476 * 2.0 + 1024 * 0.2 + 10 * 10.0) / 1e6)
