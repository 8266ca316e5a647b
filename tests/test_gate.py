"""The validation gate (docs/design.md 13): a data level whose augmented items are random is turned down before
any training, one whose augmented items are the users' held-out positives is kept; hard negatives appear
at the configured share; the control is one cached stage shared by every level setting."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import torch

from lagcl.artifacts import ArtifactStore, read_table
from lagcl.augment import SCORES, SCORES_SCHEMA, candidate_samples, chunks, cold_users, run_scoring, select_augmented
from lagcl.config import DataLevelConfig, GateConfig, GCLConfig, RankConfig, load_config
from lagcl.chain.data_level import data_level_plan, precision_check, select_calibrated
from lagcl.chain.fit import FitContext, Variant, fit_variant, topk_table
from lagcl.chain.rule import choose_levels
from lagcl.sampling import NegativeSampler
from lagcl.semantic.base import EngineDefaults, Profile, ScoreResult
from tasks import control as control_stage
from tasks import gcl as gcl_stage
from tasks.base import make_plan

N_CLUSTERS = 4


def clustered_tables(n_users=120, n_items=200, seed=0):
    """Users like popular items of their own cluster (user u and item i are in cluster u % 4 / i % 4; 80% of
    a user's positives in its cluster, Zipf-like popularity); the first half of the users are cold-start (10
    positives), the rest warm (30). Split 7:1:2 per user; 4 training dislikes each."""
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.8
    rows = []
    for u in range(n_users):
        own = np.array([i for i in range(n_items) if i % N_CLUSTERS == u % N_CLUSTERS])
        n_pos = 10 if u < n_users // 2 else 30
        n_own = int(0.8 * n_pos)
        liked = rng.choice(own, n_own, replace=False, p=pop[own] / pop[own].sum()).tolist()
        rest = np.array([i for i in range(n_items) if i not in liked])
        liked += rng.choice(rest, n_pos - n_own, replace=False, p=pop[rest] / pop[rest].sum()).tolist()
        liked = rng.permutation(liked).tolist()
        disliked = rng.choice([i for i in range(n_items) if i not in liked], 4, replace=False).tolist()
        for k, i in enumerate(liked):
            split = "train" if k < 0.7 * n_pos else ("valid" if k < 0.8 * n_pos else "test")
            rows.append((u, i, 5.0, 1, split))
        rows += [(u, i, 1.0, -1, "train") for i in disliked]
    inter = pl.DataFrame(rows, schema={"user": pl.Int32, "item": pl.Int32, "rating": pl.Float64, "sign": pl.Int8,
                                       "split": pl.String}, orient="row").with_columns(pl.lit(0, pl.Int64).alias("timestamp"))
    items = pl.DataFrame({"item": pl.Series(range(n_items), dtype=pl.Int32), "raw_id": [str(i) for i in range(n_items)],
                          "title": [f"t{i}" for i in range(n_items)],
                          "categories": [[f"c{i % N_CLUSTERS}"] for i in range(n_items)], "year": ["1995"] * n_items})
    users = pl.DataFrame({"user": pl.Series(range(n_users), dtype=pl.Int32), "raw_id": [str(u) for u in range(n_users)]})
    return inter, users, items


class OracleEngine(EngineDefaults):
    """Knows each user's held-out positives: likes them (score 9), everything else gets a low random score."""

    name, model, approximate = "oracle", "test", True

    def __init__(self, held: set[tuple[int, int]], seed=0):
        self.held, self.rng = held, np.random.default_rng(seed)

    def score(self, requests):
        out = []
        for r in requests:
            like = r.polarity == "pos"
            out.append(ScoreResult(r.user, r.polarity, {
                i: (9.0 if like == ((r.user, i) in self.held) else float(self.rng.uniform(0, 3))) for i, _ in r.items}))
        return out


class RandomEngine(OracleEngine):
    """Scores every candidate at random: its augmented items are noise."""

    name = "random"

    def score(self, requests):
        return [ScoreResult(r.user, r.polarity, {i: float(self.rng.uniform(0, 10)) for i, _ in r.items})
                for r in requests]


def _context(inter, n_users, n_items, tmp_path):
    gcl = GCLConfig(backbone="lightgcn", emb_dim=16, n_layers=2, epochs=40, patience=40, batch_size=128, lr=0.02)
    cold = torch.tensor(cold_users(inter, 10), dtype=torch.long)
    return FitContext(inter, n_users, n_items, gcl, RankConfig(), DataLevelConfig(), "torch", 7,
                      {"all": None, "cold": cold}, [20], ckpt_root=tmp_path / "ckpt", progress=False)


def _scores(engine, inter, n_items, tmp_path):
    users = cold_users(inter, 10)
    samples = candidate_samples(inter, list(range(n_items)), users, 1024, seed=1)
    with ArtifactStore(tmp_path, "t").stage("augment", engine.name) as sd:
        run_scoring(engine, chunks(samples, 32), [Profile("user", u, "", "") for u in users],
                    [Profile("item", i, "", "") for i in range(n_items)], sd, 64)
        scores = sd.read_shards(SCORES, SCORES_SCHEMA)
    return scores, select_augmented(scores, {k: len(v) for k, v in samples.items()}, 0.02)


def _gate(engine_cls, tmp_path, gate: GateConfig | None = None):
    inter, users, items = clustered_tables()
    held = set(inter.filter((pl.col("sign") == 1) & (pl.col("split") != "train")).select("user", "item").iter_rows())
    ctx = _context(inter, users.height, items.height, tmp_path)
    control = fit_variant(ctx, Variant("control"))
    scores, paper = _scores(engine_cls(held), inter, items.height, tmp_path)
    gate = gate or GateConfig()
    variants, blocked, check = data_level_plan(DataLevelConfig(), gate, scores, paper, inter,
                                               topk_table(control, 100))
    chosen, steps, trained = choose_levels(control, lambda v: fit_variant(ctx, v), variants, blocked, False, gate)
    return control, chosen, steps, check


def test_the_gate_turns_the_data_level_off_for_an_engine_whose_augmented_items_are_random(tmp_path):
    control, chosen, steps, check = _gate(RandomEngine, tmp_path)
    data = [s for s in steps if s.level == "data"]
    assert len(data) == 1 and not data[0].kept and not data[0].trained
    assert "engine precision" in data[0].reason and check["ratio"] < 1.0
    assert check["engine_precision"] < check["control_precision"]
    assert chosen is control


def test_the_gate_keeps_the_data_level_for_an_oracle_engine_whose_augmented_items_are_held_out_positives(tmp_path):
    # 120 users: the oracle's +6% is not significant at 0.05 on so few (the noise rule is specified below)
    control, chosen, steps, check = _gate(OracleEngine, tmp_path, GateConfig(max_p=1.0))
    assert check["engine_precision"] > 2 * check["control_precision"]
    kept = [s for s in steps if s.level == "data" and s.kept]
    assert len(kept) == 1 and kept[0].trained
    assert chosen is not control and chosen.variant.data_on
    assert chosen.valid > control.valid
    assert chosen.value("valid", segment="cold") > control.value("valid", segment="cold")


def test_the_calibrated_reading_caps_each_user_relative_to_real_positives_and_centres_hub_items():
    inter = pl.DataFrame({"user": [0] * 8 + [1] * 2, "item": list(range(8)) + [0, 1], "sign": [1] * 10,
                          "split": ["train"] * 10}, schema_overrides={"user": pl.Int32, "item": pl.Int32,
                                                                      "sign": pl.Int8})
    # item 20 is a hub every user scores 9; user 0 also scores 10..13 at 8, user 1 scores 14 at 5
    rows = [(u, 20, "pos", 9.0) for u in (0, 1, 2, 3)] + [(0, i, "pos", 8.0) for i in (10, 11, 12, 13)]
    rows += [(1, 14, "pos", 5.0), (2, 14, "pos", 1.0), (3, 14, "pos", 1.0), (2, 10, "pos", 1.0)]
    scores = pl.DataFrame(rows, schema={"user": pl.Int32, "item": pl.Int32, "polarity": pl.String, "score": pl.Float64},
                          orient="row")
    aug = select_calibrated(scores, inter, DataLevelConfig(max_per_user=5, cap_ratio=0.25, prune_rank=None))
    per_user = dict(aug.group_by("user").len().iter_rows())
    assert per_user[0] == 2  # ceil(0.25 x 8 real positives)
    assert per_user[1] == 1 and per_user[2] == per_user[3] == 1  # at least one
    assert aug.filter(pl.col("user") == 1)["item"].to_list() == [14]  # centred: the hub loses to 14
    assert 20 not in aug.filter(pl.col("user") == 0)["item"].to_list()
    raw = select_calibrated(scores, inter, DataLevelConfig(centre=False, prune_rank=None))
    assert raw.filter(pl.col("user") == 1)["item"].to_list() == [20]  # uncentred, the hub wins


def test_precision_check_compares_the_engine_with_the_control_at_the_same_depth():
    inter = pl.DataFrame({"user": [0, 0, 0, 0], "item": [1, 2, 3, 9], "sign": [1, 1, 1, -1],
                          "split": ["train", "valid", "valid", "train"]}, schema_overrides={"sign": pl.Int8})
    aug = pl.DataFrame({"user": [0, 0], "item": [2, 5], "sign": [1, 1]}, schema_overrides={"sign": pl.Int8})
    # the control ranks its training dislike 9 first (not a candidate), then 3 and 4
    topk = pl.DataFrame({"user": [0, 0, 0], "item": [9, 3, 4], "rank": [1, 2, 3]})
    check = precision_check(aug, topk, inter)
    assert check["engine_precision"] == 0.5 and check["control_precision"] == 0.5 and check["ratio"] == 1.0


def test_the_configured_share_of_negatives_comes_from_the_positive_items_group():
    gen = torch.Generator().manual_seed(0)
    n_u, n_i, n_g = 50, 400, 20
    item_group = torch.arange(n_i) % n_g
    pu, pi = torch.arange(n_u).repeat_interleave(4), torch.randint(n_i, (n_u * 4,), generator=gen)
    for share in (0.0, 0.3, 0.7):
        s = NegativeSampler(n_u, n_i, pu, pi, item_group=item_group, hard_share=share)
        idx = torch.randint(pu.numel(), (40000,), generator=gen)
        users, pos = pu[idx], pi[idx]
        neg = s.sample(users, gen, pos)
        realized = (item_group[neg] == item_group[pos]).float().mean().item()
        assert abs(realized - (share + (1 - share) / n_g)) < 0.012, (share, realized)
        assert not s.is_positive(users, neg).any()


def _tiny_plan(tmp_path, *overrides):
    cfg = load_config(model="lightgcn", overrides=[f"cache_dir={tmp_path}", "gcl.epochs=3", "gcl.emb_dim=8",
                                                   "gcl.topk_out=10", "rank.groups_from=categories",
                                                   "pipeline.stages.augment=false", *overrides])
    plan = make_plan(cfg)
    inter, users, items = clustered_tables(n_users=40, n_items=120)
    with plan.store.stage("prepare", plan.fingerprints["prepare"]) as sd:
        if not sd.complete:
            for name, df in (("interactions", inter), ("users", users), ("items", items)):
                sd.write_table(name, df)
            sd.finish({})
    return plan


def test_the_control_is_one_cached_stage_shared_by_every_level_setting(tmp_path):
    plan = _tiny_plan(tmp_path, "rank.hard_neg_share=0.5")
    control_stage.run(plan)
    ref = gcl_stage.run(plan)
    ctrl = Path(plan.ref("control").path)
    first = json.loads((ctrl / "manifest.json").read_text())
    levels = read_table(Path(ref.path), "levels")
    assert levels["level"].to_list() == ["control", "data", "rank"]
    assert levels.filter(pl.col("level") == "data")["reason"][0] == "the augment stage is not part of this run"
    meta = json.loads((Path(ref.path) / "manifest.json").read_text())["meta"]
    assert meta["hard_negative_share"] > 0.4  # half the negatives from the positive's group, plus chance hits
    # another rank setting: a new gcl folder, the same control, not retrained
    other = _tiny_plan(tmp_path, "rank.hard_neg_share=0.2", "rank.w_h=3")
    assert other.fingerprints["control"] == plan.fingerprints["control"]
    assert other.fingerprints["gcl"] != plan.fingerprints["gcl"]
    control_stage.run(other)
    gcl_stage.run(other)
    assert json.loads((ctrl / "manifest.json").read_text())["finished_at"] == first["finished_at"]
    ctrl_rows = read_table(Path(other.ref("gcl").path), "levels").filter(pl.col("level") == "control")
    assert ctrl_rows["valid_recall@20"][0] == levels.filter(pl.col("level") == "control")["valid_recall@20"][0]


def test_the_chain_shows_each_levels_change_against_the_control_and_marks_held_out_validation():
    control = {"level": "control", "variant": "control", "kept": True, "reason": "no level",
               "valid_recall@20": 0.30, "test_recall@20": 0.40, "test_ndcg@20": 0.20}
    rank = {**control, "level": "rank", "variant": "rank", "reason": "better", "valid_recall@20": 0.33,
            "test_recall@20": 0.42, "test_ndcg@20": 0.19}
    rerank = {**rank, "level": "rerank", "variant": "cf+rerank", "kept": False, "reason": "left out",
              "valid_recall@20": 0.50, "valid_scope": "10 held-out users"}
    from lagcl.chain.text import format_chain

    lines = format_chain([control, rank, rerank])
    assert "0.3300 (+10.0%)" in lines[2] and "0.4200 (+5.0%)" in lines[2] and "0.1900 (-5.0%)" in lines[2]
    assert lines[2].split()[3] == "yes" and lines[3].split()[3] == "no"
    assert "0.5000 (h)" in lines[3] and "held-out users only" in lines[4]
