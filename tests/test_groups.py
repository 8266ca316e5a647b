"""Semantic grouping (eq. 5-6): batches, checked partitions, candidate pairs, union-find merging, resume."""

import numpy as np
import polars as pl
import pytest

from lagcl.artifacts import StageDir
from lagcl.config import EngineConfig
from lagcl.groups import (PARTITIONS, batches, build_groups, candidate_pairs, check_partition, genre_purity,
                          group_stats, merge_groups, run_partitions)
from lagcl.semantic.base import EngineDefaults, Group, PartitionResult, Profile, ProfileRequest, Usage
from lagcl.semantic.embedding import EmbeddingEngine


class ScriptedPartitioner(EngineDefaults):
    """A SemanticEngine whose partition replies follow a script: groups ids by id % 3, and can leave ids
    out, invent ids or place an id twice; it records every batch of ids it is asked about."""

    name, model, approximate = "scripted", "rule", True

    def __init__(self, leave_out=(), leave_out_again=(), invent=False, twice=False, fail=False):
        self.leave_out, self.leave_out_again = set(leave_out), set(leave_out_again)
        self.invent, self.twice, self.fail = invent, twice, fail
        self.asked: list[list[int]] = []

    def partition(self, kind, profiles, target_group_size):
        ids = [p.id for p in profiles]
        second = bool(self.asked)  and set(ids) <= self.leave_out
        self.asked.append(ids)
        if self.fail:
            return PartitionResult((), failed="reply was not JSON")
        drop = self.leave_out_again if second else self.leave_out
        groups = {}
        for i in ids:
            if i not in drop:
                groups.setdefault(i % 3, []).append(i)
        out = [Group(kind, f"g{r}", f"ids = {r} mod 3", tuple(m)) for r, m in sorted(groups.items())]
        if self.invent:
            out.append(Group(kind, "ghost", "", (999,)))
        if self.twice and out:
            out.append(Group(kind, "again", "", (out[0].members[0],)))
        return PartitionResult(tuple(out))

    def usage(self):
        return Usage(requests=len(self.asked))


def profiles(ids, kind="item"):
    return {i: Profile(kind, i, f"{kind} {i}", "") for i in ids}


def test_batches_shuffle_with_the_seed_and_cover_every_id_once():
    b = batches(range(25), 10, seed=7)
    assert [len(x) for x in b] == [10, 10, 5]
    assert sorted(i for x in b for i in x) == list(range(25))
    assert b == batches(range(25), 10, seed=7) and b != batches(range(25), 10, seed=8)
    assert b[0] != list(range(10))


def test_a_partition_reply_keeps_asked_ids_once_and_lists_the_ones_left_out():
    reply = PartitionResult((Group("item", "a", "", (1, 2, 99)), Group("item", "b", "", (2, 3)), Group("item", "c", "", (99,))))
    c = check_partition([1, 2, 3, 4], reply)
    assert c.groups == [("a", "", [1, 2]), ("b", "", [3])]
    assert (c.missing, c.unknown, c.duplicate) == ([4], 2, 1)
    failed = check_partition([1, 2], PartitionResult((), failed="timeout"))
    assert failed.groups == [] and failed.missing == [1, 2] and failed.failed == "timeout"


def test_ids_left_out_are_asked_again_once_then_become_singletons_so_every_id_has_one_group(tmp_path):
    engine = ScriptedPartitioner(leave_out={4, 7}, leave_out_again={7}, invent=True, twice=True)
    with StageDir(tmp_path / "g", "groups", "fp") as sd:
        run = run_partitions(engine, "item", profiles(range(10)), [list(range(10))], 5, sd)
        rows = sd.read_shards(PARTITIONS)
    assert engine.asked == [list(range(10)), [4, 7]]
    assert (run.sent, run.reasked, run.singletons) == (1, 2, 1)
    assert run.unknown == 2 and run.duplicate == 2
    assert sorted(rows["member"].to_list()) == list(range(10))
    assert rows.filter(pl.col("singleton"))["member"].to_list() == [7]


def test_a_failed_partition_is_asked_again_and_then_every_id_is_its_own_group(tmp_path):
    engine = ScriptedPartitioner(fail=True)
    with StageDir(tmp_path / "g", "groups", "fp") as sd:
        run = run_partitions(engine, "user", profiles(range(3), "user"), [[0, 1, 2]], 5, sd)
        rows = sd.read_shards(PARTITIONS)
    assert len(engine.asked) == 2 and run.singletons == 3 and len(run.failed) == 2
    assert rows["local_group"].to_list() == [0, 1, 2] and rows["singleton"].all()


def test_a_rerun_partitions_only_the_batches_without_a_shard(tmp_path):
    batch_ids = [[0, 1, 2], [3, 4, 5], [6, 7, 8]]

    class Stop(Exception):
        pass

    def stop_after_first(done, total):
        raise Stop

    first = ScriptedPartitioner()
    with StageDir(tmp_path / "g", "groups", "fp") as sd, pytest.raises(Stop):
        run_partitions(first, "item", profiles(range(9)), batch_ids, 5, sd, on_batch=stop_after_first)
    second = ScriptedPartitioner()
    with StageDir(tmp_path / "g", "groups", "fp") as sd:
        run = run_partitions(second, "item", profiles(range(9)), batch_ids, 5, sd)
    assert first.asked == [[0, 1, 2]] and second.asked == [[3, 4, 5], [6, 7, 8]] and run.sent == 2


def test_candidate_pairs_are_each_groups_k_nearest_by_centroid_cosine():
    c = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0]], dtype=float)
    # group 4 points away from all: its nearest is 2 (cosine 0 beats -0.11)
    assert candidate_pairs(c, k=1) == [(0, 1), (2, 3), (2, 4)]
    assert len(candidate_pairs(np.random.default_rng(0).normal(size=(50, 8)), k=3)) <= 50 * 3
    assert candidate_pairs(c[:1], k=3) == []


def test_groups_rated_above_tau_merge_transitively_into_contiguous_ids_by_smallest_member():
    members = [[5, 9], [1], [7], [3, 4], [8]]
    final = merge_groups(members, [(0, 2, 0.9), (2, 4, 0.85), (1, 3, 0.5), (0, 3, 0.8)], tau_sim=0.8)
    # 0-2-4 merge (both above 0.8); 0.8 itself is not above tau; ids follow smallest members 1, 3, 5
    assert final == [2, 0, 2, 1, 2]


def test_group_statistics_and_genre_purity():
    assign = pl.DataFrame({"item": [0, 1, 2, 3], "group": [0, 0, 0, 1]})
    s = group_stats(assign)
    assert (s["groups"], s["size_one_groups"], s["size_max"], s["same_group_share"]) == (2, 1, 3, 0.625)
    items = pl.DataFrame({"item": [0, 1, 2, 3], "categories": [["A"], ["A", "B"], ["B"], ["C"]]})
    assert genre_purity(assign, items) == 0.75


def test_embedding_engine_groups_items_by_genre_and_every_id_lands_in_exactly_one_group(tmp_path):
    titles = {"Horror": ["Scream", "Halloween", "Candyman", "Hellraiser", "Psycho", "Shining, The", "Omen, The", "Carrie"],
              "Children's": ["Lion King, The", "Aladdin", "Pinocchio", "Dumbo", "Bambi", "Cinderella", "Heidi", "Babe"],
              "War": ["Platoon", "Patton", "Glory", "Das Boot", "Apocalypse Now", "Full Metal Jacket", "Gallipoli", "MASH"]}
    engine = EmbeddingEngine(EngineConfig(batch_size=16), domain="movie")
    reqs = [ProfileRequest("item", 10 * g + j, t, {"genres": name})
            for g, (name, ts) in enumerate(titles.items()) for j, t in enumerate(ts)]
    profs = engine.profile(reqs)
    with StageDir(tmp_path / "g", "groups", "fp") as sd:
        out = build_groups(engine, "item", profs, batch_size=12, target_group_size=4, tau_sim=0.5, k=3,
                           seed=1, sd=sd)
    a = out.assignment
    assert a.columns == ["item", "group"] and a.schema["group"] == pl.Int32
    assert sorted(a["item"].to_list()) == sorted(p.id for p in profs)
    assert sorted(a["group"].unique().to_list()) == list(range(a["group"].n_unique()))
    genre_of = {p.id: p.id // 10 for p in profs}
    items = pl.DataFrame({"item": list(genre_of), "categories": [[list(titles)[g]] for g in genre_of.values()]})
    assert genre_purity(a, items) >= 0.9
    s = out.stats
    assert s["partition_groups"] >= 6 and s["candidate_pairs"] <= s["partition_groups"] * 3
    assert s["rated_pairs"] == s["candidate_pairs"] and s["groups"] <= s["partition_groups"]
    assert out.similarity["similarity"].is_between(0, 1).all()
    assert (out.partitions["name"].str.len_chars() > 0).all()
