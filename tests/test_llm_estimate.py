"""`estimate`: calls, tokens and USD per stage from the real prompt templates, before any call."""

from __future__ import annotations

import pytest

from lagcl.config import EngineConfig, LLMConfig, load_config
from lagcl.llm.accounting import estimate_tokens
from lagcl.llm.estimate import estimate, sample_requests


def test_the_estimate_prints_calls_tokens_and_price_per_stage():
    printed: list[str] = []
    engine = EngineConfig(name="anthropic", model="claude-sonnet-4-5-20250929")
    llm = LLMConfig(prices={"claude-sonnet-4-5": (3.0, 15.0)})

    report = estimate({"profile_user": 943, "profile_item": 1682, "score_pos": 100, "partition_user": 10},
                      engine, llm, "movie", items_per_call=32, out=printed.append)

    assert [(r.stage, r.operation, r.calls) for r in report.rows] == [
        ("profiles", "profile_user", 943), ("profiles", "profile_item", 1682), ("augment", "score_pos", 100),
        ("groups", "partition_user", 10)]
    score = report.rows[2]
    one = sample_requests("movie", engine)["score_pos"]
    assert score.input_tokens == 100 * estimate_tokens(one.system + one.messages[0][1])
    assert score.output_tokens == 100 * (45 * 32 + 20)
    assert score.cost_usd == pytest.approx((score.input_tokens * 3.0 + score.output_tokens * 15.0) / 1e6)
    assert report.total_usd == pytest.approx(sum(r.cost_usd for r in report.rows))
    table = printed[0]
    assert "claude-sonnet-4-5-20250929" in table and "augment" in table and f"{report.total_usd:.2f}" in table


def test_batch_api_halves_the_scoring_price_and_local_engines_cost_nothing():
    llm = LLMConfig(prices={"claude-haiku-4-5": (1.0, 5.0)})
    online = estimate({"score_neg": 10}, EngineConfig(name="anthropic", model="claude-haiku-4-5"), llm, out=None)
    batch = estimate({"score_neg": 10}, EngineConfig(name="anthropic", model="claude-haiku-4-5", batch_api=True),
                     llm, out=None)
    assert batch.total_usd == pytest.approx(online.total_usd / 2)
    local = estimate({"score_neg": 10}, EngineConfig(name="transformers", model="m"), LLMConfig(), out=None)
    assert local.total_usd == 0 and local.rows[0].input_tokens > 0


def test_the_shipped_price_tables_price_the_shipped_default_models():
    for name in ("anthropic", "openai"):
        cfg = load_config(engine=name)
        report = estimate({"profile_item": 1}, cfg.engine, cfg.llm, cfg.data.domain, out=None)
        assert report.priced and report.total_usd > 0


def test_unknown_operations_are_refused():
    with pytest.raises(ValueError, match="unknown operations"):
        estimate({"summarise": 3}, EngineConfig(name="openai", model="m"), LLMConfig(), out=None)
