import hashlib
import json

import pytest

from lagcl.config import load_config, parse_override
from lagcl.errors import ConfigError


def test_default_config_is_ml100k_with_embedding_engine_and_lightgcn():
    cfg = load_config()
    assert cfg.data.name == "ml-100k"
    assert cfg.data.format == "ml-100k"
    assert cfg.engine.name == "embedding"
    assert cfg.gcl.backbone == "lightgcn"
    assert cfg.augment.n_candidates == 1024
    assert cfg.augment.cold_threshold == 30


def test_override_sets_nested_values_with_yaml_types():
    cfg = load_config(overrides=["gcl.lr=0.005", "rank.enabled=false", "evaluate.topk=[5, 20]"])
    assert cfg.gcl.lr == 0.005
    assert cfg.rank.enabled is False
    assert cfg.evaluate.topk == [5, 20]


def test_unknown_key_names_the_key_suggests_a_fix_and_lists_allowed_keys():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["gcl.learning_rate=0.1"])
    msg = str(err.value)
    assert "gcl.learning_rate" in msg
    assert "allowed keys here" in msg and "lr" in msg


def test_typo_close_to_a_real_key_gets_a_did_you_mean():
    with pytest.raises(ConfigError, match="did you mean 'patience'"):
        load_config(overrides=["gcl.patiense=3"])


def test_bad_literal_value_names_the_allowed_values():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["gcl.backbone=gcn"])
    msg = str(err.value)
    assert "gcl.backbone" in msg and "'lightgcn'" in msg and "'xsimgcl'" in msg


def test_bad_number_is_rejected_with_its_key():
    with pytest.raises(ConfigError, match="augment.top_fraction"):
        load_config(overrides=["augment.top_fraction=2"])


def test_unknown_dataset_lists_the_available_ones():
    with pytest.raises(ConfigError, match="unknown data 'ml-10m'.*ml-100k"):
        load_config(data="ml-10m")


def test_override_without_equals_sign_is_an_error():
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_override("gcl.lr")


def test_split_fractions_must_sum_to_one():
    with pytest.raises(ConfigError, match="split"):
        load_config(overrides=["data.split=[0.5, 0.1, 0.1]"])


def test_section_hash_changes_only_with_its_own_section():
    a = load_config()
    b = load_config(overrides=["gcl.lr=0.01"])
    assert a.section_hash("data") == b.section_hash("data")
    assert a.section_hash("gcl") != b.section_hash("gcl")


def test_the_validation_metric_is_recall_or_ndcg_at_k_and_anything_else_is_a_named_error():
    assert load_config().gcl.valid_key == ("recall", 20)
    assert load_config(overrides=["gcl.valid_metric=NDCG@10"]).gcl.valid_key == ("ndcg", 10)
    for bad in ("mrr@10", "recall", "ndcg@0", "recall@20x"):
        with pytest.raises(ConfigError, match="gcl.valid_metric.*recall@K or ndcg@K"):
            load_config(overrides=[f"gcl.valid_metric={bad}"])


def test_a_setting_added_with_the_old_behaviour_as_default_leaves_the_fingerprints_of_that_default_as_they_were():
    cfg = load_config()
    without = cfg.gcl.model_dump(mode="json")
    del without["valid_metric"]  # the gcl section before the setting existed
    before = hashlib.sha256(json.dumps({"gcl": without}, sort_keys=True).encode()).hexdigest()[:16]
    assert cfg.section_hash("gcl") == before
    assert load_config(overrides=["gcl.valid_metric=ndcg@20"]).section_hash("gcl") != before


def test_a_fusion_setting_written_in_the_rerank_section_is_stopped_with_its_new_name():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["rerank.alpha=0.3"])
    assert "fusion.alpha" in str(err.value)
    assert load_config(overrides=["fusion.alpha=0.3"]).fusion.alpha == 0.3
