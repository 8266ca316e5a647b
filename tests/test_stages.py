"""The stage registry (tasks/stages.py) is the one list of stages: the planner, the switches and the
fingerprints all follow it."""

import pytest

from lagcl.config import load_config
from lagcl.errors import ConfigError
from tasks.base import STAGES, make_plan


def fingerprints(*overrides: str) -> dict[str, str]:
    return make_plan(load_config(overrides=list(overrides))).fingerprints


def test_a_stage_reads_only_stages_that_run_before_it():
    order = list(STAGES)
    for name, spec in STAGES.items():
        assert all(order.index(u) < order.index(name) for u in spec.upstream), name
        assert set(spec.requires) | set(spec.optional) <= set(spec.upstream)


def test_an_unknown_stage_switch_names_the_known_stages():
    with pytest.raises(ConfigError, match=r"unknown stage\(s\) \['gcll'\] in pipeline.stages; known stages: "
                                          r"profiles, augment, groups, control, gcl, rerank, evaluate"):
        fingerprints("pipeline.stages.gcll=false")


def test_with_the_rank_level_off_its_lambda_cl_does_not_retrain_the_gcl_stage_and_the_backbones_does():
    base = fingerprints("rank.enabled=false")
    assert fingerprints("rank.enabled=false", "rank.lambda_cl=0.5") == base
    assert fingerprints("rank.enabled=false", "rank.w_h=3") == base
    changed = fingerprints("rank.enabled=false", "gcl.lambda_cl=0.5")
    assert [s for s in base if base[s] != changed[s]] == ["control", "gcl", "rerank", "evaluate"]


def test_the_no_rank_ablation_and_rank_enabled_false_train_the_same_gcl_stage():
    assert fingerprints("pipeline.ablation=no-rank")["gcl"] == fingerprints("rank.enabled=false")["gcl"]


def test_with_the_rank_level_tried_its_lambda_cl_retrains_the_gcl_stage_and_what_follows_only():
    base, changed = fingerprints(), fingerprints("rank.lambda_cl=0.5")
    assert [s for s in base if base[s] != changed[s]] == ["gcl", "rerank", "evaluate"]


def test_an_off_stage_is_an_optional_input_of_none_and_a_missing_required_one_an_error(tmp_path):
    plan = make_plan(load_config(overrides=[f"cache_dir={tmp_path}", "pipeline.stages.augment=false"]))
    assert plan.input("augment", "augmented", optional=True) is None
    assert plan.input("gcl", "cf_topk", optional=True) is None  # planned, not built yet
    with pytest.raises(ConfigError, match="enable pipeline.stages.augment"):
        plan.input("augment", "augmented")
