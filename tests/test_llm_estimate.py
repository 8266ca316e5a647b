"""`estimate`: calls, tokens and USD per stage from the real prompt templates, before any call."""

from __future__ import annotations

import pytest

from lagcl.config import EngineConfig, LLMConfig, load_config
from lagcl.llm.accounting import estimate_tokens
from lagcl.semantic.cost import estimate, sample_requests


def test_the_estimate_prints_calls_tokens_and_price_per_stage():
    printed: list[str] = []
    engine = EngineConfig(name="anthropic", model="claude-sonnet-4-5-20250929")
    llm = LLMConfig(prices={"claude-sonnet-4-5": (3.0, 15.0)})

    stage_of = {"profile_user": "profiles", "profile_item": "profiles", "score_pos": "augment",
                "partition_user": "groups"}
    report = estimate({"profile_user": 943, "profile_item": 1682, "score_pos": 100, "partition_user": 10},
                      engine, llm, "movie", items_per_call=32, stage_of=stage_of, out=printed.append)

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


def test_each_operation_is_counted_under_the_stage_whose_registry_entry_declares_it():
    import polars as pl

    from lagcl.semantic.cost import ScoringLoad
    from tasks.stages import STAGES
    from tasks.workload import planned_requests

    cfg = load_config(overrides=["augment.items_per_call=4"])
    by_stage = planned_requests(pl.DataFrame(), 10, 20, cfg, ScoringLoad((8, 3)))

    assert by_stage == {"profiles": {"profile_user": 10, "profile_item": 20},
                        "augment": {"score_pos": 3, "score_neg": 3},
                        "groups": {"partition_user": 1, "similarity_user": 1 * cfg.groups.candidate_pairs_k,
                                   "partition_item": 1, "similarity_item": 1 * cfg.groups.candidate_pairs_k}}
    assert set(by_stage) == {name for name, spec in STAGES.items() if spec.requests is not None}


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


# the estimate as a decision tool: prompt styles, prompt cache, batches, projections -------------------
from flows.dry_run import projections_table, variants_table  # noqa: E402
from lagcl.semantic.cost import PAPER_DATASETS, ScoringLoad, projected_counts, variants  # noqa: E402

SONNET = EngineConfig(name="anthropic", model="claude-sonnet-4-5")
SONNET_PRICES = {"claude-sonnet-4-5": [3.0, 15.0, 0.3, 3.75]}


def test_the_compact_style_packs_chunks_into_fewer_calls_and_prices_each_scored_candidate_lower():
    load = ScoringLoad((1024, 1024, 40))  # three cold users
    paper = estimate({"score_pos": 1}, SONNET, LLMConfig(prices=SONNET_PRICES), "movie", load=load, out=None)
    compact = estimate({"score_pos": 1}, SONNET, LLMConfig(prices=SONNET_PRICES, prompt_style="compact"), "movie",
                       load=load, out=None)

    # per sample: ceil(n / 32) chunks of augment.items_per_call; compact packs 64 // 32 = 2 chunks per call
    assert paper.rows[0].calls == 32 + 32 + 2 and compact.rows[0].calls == 16 + 16 + 1
    assert paper.rows[0].candidates == compact.rows[0].candidates == 2088
    assert paper.rows[0].output_tokens == 66 * 20 + 2088 * 45 and compact.rows[0].output_tokens == 33 * 20 + 2088 * 8
    (p_in, p_out), (c_in, c_out) = paper.tokens_per_candidate(), compact.tokens_per_candidate()
    assert c_in < p_in / 3 and c_out < p_out / 5
    assert paper.usd_per_cold_user == pytest.approx(paper.total_usd / 3)


def test_a_prefix_below_the_models_minimum_is_not_cached_and_the_estimate_says_why():
    load = ScoringLoad((1024,))
    on = estimate({"score_pos": 1}, SONNET, LLMConfig(prices=SONNET_PRICES, cache_min_tokens={"claude-": 1024}),
                  "movie", load=load, out=None)
    off = estimate({"score_pos": 1}, SONNET, LLMConfig(prices=SONNET_PRICES, prompt_cache=False), "movie",
                   load=load, out=None)
    assert on.rows[0].cache_read_tokens == 0 and on.total_usd == off.total_usd
    assert "below the 1024-token minimum claude-sonnet-4-5 caches" in on.notes[0] and "note:" in on.table()


def test_a_cached_prefix_is_written_by_the_first_calls_in_flight_and_read_by_the_rest():
    load = ScoringLoad((1024, 1024))  # 32 calls per sample
    llm = LLMConfig(prices=SONNET_PRICES, cache_min_tokens={"claude-sonnet-4-5": 100})
    engine = SONNET.model_copy(update={"max_concurrency": 8})
    on = estimate({"score_pos": 1}, engine, llm, "movie", load=load, out=None)
    off = estimate({"score_pos": 1}, engine, llm.model_copy(update={"prompt_cache": False}), "movie", load=load,
                   out=None)

    req = sample_requests("movie", engine, llm=llm)["score_pos"]
    prefix = estimate_tokens(req.system + req.messages[0][1][:req.cache_prefix_chars])
    row = on.rows[0]
    assert (row.cache_write_tokens, row.cache_read_tokens) == (2 * 8 * prefix, 2 * 24 * prefix)
    assert row.input_tokens == off.rows[0].input_tokens
    saved = 2 * 24 * prefix * (3.0 - 0.3) / 1e6 - 2 * 8 * prefix * (3.75 - 3.0) / 1e6
    assert off.total_usd - on.total_usd == pytest.approx(saved)


def test_compact_with_cache_and_batches_costs_under_a_fifth_of_the_papers_layout_for_the_same_workload():
    load = ScoringLoad(tuple([1024] * 50))
    table = variants({"profile_user": 100, "profile_item": 100, "score_pos": 1, "score_neg": 1}, SONNET,
                     LLMConfig(prices=SONNET_PRICES, cache_min_tokens={"claude-sonnet-4-5": 1024}), "movie",
                     load=load)
    by = {(e.style, e.prompt_cache, e.batch_api): e for e in table}
    assert len(by) == 8
    assert by["compact", True, True].total_usd <= by["paper", False, False].total_usd / 5
    assert by["paper", False, True].total_usd < by["paper", False, False].total_usd
    text = variants_table(table)
    assert "compact  on    on" in text and f"{by['paper', False, False].total_usd:.2f}" in text


def test_projections_scale_the_workload_to_the_papers_table_1_sizes():
    cfg = load_config(engine="anthropic")
    counts, load = projected_counts(6_040, 3_952, 0.5, cfg)
    assert counts["profile_user"] == 6_040 and counts["profile_item"] == 3_952
    assert load.sample_sizes == tuple([1024] * 3_020)  # min(n_candidates, items - cold_threshold)
    assert counts["partition_user"] == 61 and counts["similarity_item"] == 198 * 5
    text = projections_table(cfg, 0.5)
    assert all(name in text for name in PAPER_DATASETS) and "3,020" in text
