"""Augmentation for cold-start users (eq. 2-4): candidates, validation of replies, top-2% selection, resume."""

import math

import numpy as np
import polars as pl
import pytest

from lagcl.artifacts import StageDir
from lagcl.augment import (SCORES, SCORES_SCHEMA, Chunk, augment_quality, candidate_samples, check_result, chunks,
                           cold_users, run_scoring, select_augmented, top_k)
from lagcl.semantic.base import EngineDefaults, Profile, ScoreResult, Usage


def interactions(rows):
    """rows: (user, item, sign, split)"""
    return pl.DataFrame({"user": [r[0] for r in rows], "item": [r[1] for r in rows], "rating": [4.0] * len(rows),
                         "timestamp": list(range(len(rows))), "sign": [r[2] for r in rows], "split": [r[3] for r in rows]},
                        schema={"user": pl.Int32, "item": pl.Int32, "rating": pl.Float64, "timestamp": pl.Int64,
                                "sign": pl.Int8, "split": pl.String})


class ScriptedEngine(EngineDefaults):
    """A SemanticEngine that scores by a fixed rule (like = item % 10, dislike = 9 - item % 10) and can be
    told to answer some users badly; it counts every request it receives."""

    name, model, approximate = "scripted", "rule", True

    def __init__(self, bad: dict[int, str] | None = None):
        self.bad = bad or {}
        self.requests = 0
        self.asked: list[tuple[int, str, tuple[int, ...]]] = []

    def score(self, requests):
        self.requests += len(requests)
        out = []
        for r in requests:
            ids = [i for i, _ in r.items]
            self.asked.append((r.user, r.polarity, tuple(ids)))
            scores = {i: float(i % 10 if r.polarity == "pos" else 9 - i % 10) for i in ids}
            how = self.bad.get(r.user)
            if how == "unknown":
                scores[99999] = 5.0
            elif how == "missing":
                scores.pop(ids[0])
            elif how == "range":
                scores[ids[0]] = 11.0
            elif how == "nan":
                scores[ids[0]] = math.nan
            elif how == "failed":
                out.append(ScoreResult(r.user, r.polarity, {}, failed="reply was not JSON"))
                continue
            out.append(ScoreResult(r.user, r.polarity, scores))
        return out

    def usage(self):
        return Usage(requests=self.requests)


def test_cold_start_users_have_fewer_than_the_threshold_training_positives():
    rows = [(0, i, 1, "train") for i in range(3)] + [(1, i, 1, "train") for i in range(2)] + \
           [(1, 9, 1, "test"), (1, 8, -1, "train"), (2, 0, -1, "train")]
    assert cold_users(interactions(rows), threshold=3) == [1, 2]
    assert cold_users(interactions(rows), threshold=4) == [0, 1, 2]


def test_candidates_exclude_every_training_item_keep_held_out_ones_and_are_sampled_reproducibly():
    rows = [(0, 0, 1, "train"), (0, 1, -1, "train"), (0, 2, 1, "test"), (0, 3, 1, "valid")]
    inter = interactions(rows)
    small = candidate_samples(inter, range(10), [0], n=1024, seed=1)
    assert small[(0, "pos")].tolist() == small[(0, "neg")].tolist() == [2, 3, 4, 5, 6, 7, 8, 9]
    big = candidate_samples(inter, range(200), [0], n=50, seed=1)
    pos, neg = big[(0, "pos")], big[(0, "neg")]
    assert len(pos) == len(neg) == 50 and len(set(pos)) == 50
    assert not {0, 1} & set(pos) | {0, 1} & set(neg)
    assert pos.tolist() != neg.tolist()  # the dislike sample is a separate draw
    # a user's sample does not depend on who else is in the run (a resumed run draws the same items)
    with_other = candidate_samples(interactions(rows + [(5, 7, 1, "train")]), range(200), [5, 0], n=50, seed=1)
    assert with_other[(0, "pos")].tolist() == pos.tolist()
    assert candidate_samples(inter, range(200), [0], n=50, seed=2)[(0, "pos")].tolist() != pos.tolist()


def test_a_users_sample_changes_only_by_the_items_added_and_follows_raw_ids_when_internal_ids_move():
    inter = interactions([(0, 0, 1, "train"), (0, 1, -1, "train")])
    before = candidate_samples(inter, range(300), [0], n=60, seed=4)[(0, "pos")]
    grown = candidate_samples(inter, range(310), [0], n=60, seed=4)[(0, "pos")]
    # each of the 10 new items can push one old item out, nothing else moves
    assert len(set(before) - set(grown)) == len(set(grown) - set(before)) <= 10
    assert set(grown) - set(before) <= set(range(300, 310))

    # a new item "a0" sorted first renumbers every internal id: keyed by the raw ids, the same items are drawn
    raw = {i: f"m{i:03d}" for i in range(300)}
    old = candidate_samples(inter, range(300), [0], n=60, seed=4, user_keys={0: "u7"}, item_keys=raw)[(0, "pos")]
    shifted = {i + 1: name for i, name in raw.items()} | {0: "a0"}
    moved = interactions([(0, 1, 1, "train"), (0, 2, -1, "train")])  # the same two training items, renumbered
    new = candidate_samples(moved, range(301), [0], n=60, seed=4, user_keys={0: "u7"}, item_keys=shifted)[(0, "pos")]
    drawn_before, drawn_after = {raw[i] for i in old}, {shifted[i] for i in new}
    assert len(drawn_before - drawn_after) <= 1 and drawn_after - drawn_before <= {"a0"}


def test_candidates_are_scored_items_per_call_at_a_time():
    cs = chunks({(3, "pos"): np.arange(70), (3, "neg"): np.arange(5)}, items_per_call=32)
    assert [(c.polarity, c.index, len(c.items)) for c in cs] == [("pos", 0, 32), ("pos", 1, 32), ("pos", 2, 6), ("neg", 0, 5)]


@pytest.mark.parametrize("reply, reason", [
    (ScoreResult(1, "pos", {10: 1.0, 11: 2.0, 12: 3.0}), "unknown item ids"),
    (ScoreResult(1, "pos", {10: 1.0}), "1 item(s) not scored"),
    (ScoreResult(1, "pos", {10: 1.0, 11: 10.5}), "score outside [0, 10]"),
    (ScoreResult(1, "pos", {10: -0.1, 11: 1.0}), "score outside [0, 10]"),
    (ScoreResult(1, "pos", {10: "7", 11: 1.0}), "score outside [0, 10]"),
    (ScoreResult(2, "pos", {10: 1.0, 11: 1.0}), "reply for user 2/pos"),
    (ScoreResult(1, "neg", {10: 1.0, 11: 1.0}), "reply for user 1/neg"),
    (ScoreResult(1, "pos", {}, failed="timeout"), "engine: timeout"),
    (None, "no reply"),
])
def test_a_reply_that_cannot_be_used_as_given_is_a_failure_with_a_reason(reply, reason):
    scores, why = check_result(Chunk(1, "pos", 0, (10, 11)), reply)
    assert scores is None and why.startswith(reason)


def test_a_complete_reply_in_range_is_taken_as_given():
    assert check_result(Chunk(1, "pos", 0, (10, 11)), ScoreResult(1, "pos", {10: 0, 11: 10.0})) == ({10: 0.0, 11: 10.0}, None)


def test_top_two_percent_per_polarity_with_disjoint_positives_and_negatives():
    assert (top_k(1024, 0.02), top_k(30, 0.02), top_k(0, 0.02)) == (20, 1, 0)
    scores = pl.DataFrame({
        "user": [1] * 8, "item": [1, 2, 3, 4, 1, 2, 3, 4], "polarity": ["pos"] * 4 + ["neg"] * 4,
        "score": [9.0, 8.0, 8.0, 1.0, 9.5, 9.0, 2.0, 2.0], "engine": ["x"] * 8}, schema=SCORES_SCHEMA)
    aug = select_augmented(scores, {(1, "pos"): 100, (1, "neg"): 100}, fraction=0.02)
    # k = 2 of a 100-item sample; the tie at 8.0 goes to the smaller id; item 1 is already positive,
    # so the negatives are the next two dislikes (2 is positive too: 3 and 4, tie by id)
    assert aug.rows() == [(1, 1, 1, 9.0), (1, 2, 1, 8.0), (1, 3, -1, 2.0), (1, 4, -1, 2.0)]
    assert aug.schema == {"user": pl.Int32, "item": pl.Int32, "sign": pl.Int8, "score": pl.Float64}


def _setup(tmp_path, users=6, n_items=60):
    inter = interactions([(u, u, 1, "train") for u in range(users)] + [(u, 40 + u, 1, "test") for u in range(users)])
    samples = candidate_samples(inter, range(n_items), list(range(users)), n=50, seed=3)
    return inter, samples, chunks(samples, items_per_call=10), [Profile("user", u, f"user {u}", "") for u in range(users)], \
        [Profile("item", i, f"item {i}", "") for i in range(n_items)]


class Killed(Exception):
    pass


def test_a_killed_run_resumes_after_its_last_shard_without_asking_any_request_twice(tmp_path):
    inter, samples, todo, up, ip = _setup(tmp_path)
    assert len(todo) == 6 * 2 * 5
    first = ScriptedEngine()

    def kill_after_two_shards(done, total):
        if done >= 4:
            raise Killed

    with StageDir(tmp_path / "augment", "augment", "fp") as sd, pytest.raises(Killed):
        run_scoring(first, todo, up, ip, sd, shard_size=2, on_shard=kill_after_two_shards)
    assert first.requests == 40  # two shards of two users, ten requests per user

    second = ScriptedEngine()
    with StageDir(tmp_path / "augment", "augment", "fp") as sd:
        res = run_scoring(second, todo, up, ip, sd, shard_size=2)
        scores = sd.read_shards(SCORES, SCORES_SCHEMA)
    assert (res.sent, res.skipped, res.failed) == (20, 40, 0)
    assert second.requests == 20 and {u for u, _, _ in second.asked} == {4, 5}
    assert first.requests + second.requests == len(todo)
    assert scores.height == 6 * 2 * 50 and scores.unique(["user", "item", "polarity"]).height == scores.height
    assert scores["engine"].unique().to_list() == ["scripted"]

    third = ScriptedEngine()
    with StageDir(tmp_path / "augment", "augment", "fp") as sd:
        assert run_scoring(third, todo, up, ip, sd, shard_size=2).sent == 0
    assert third.requests == 0


def test_bad_replies_are_recorded_as_failed_never_guessed_and_a_rerun_asks_only_those(tmp_path):
    inter, samples, todo, up, ip = _setup(tmp_path)
    bad = ScriptedEngine(bad={1: "unknown", 2: "missing", 3: "range", 4: "nan", 5: "failed"})
    with StageDir(tmp_path / "augment", "augment", "fp") as sd:
        res = run_scoring(bad, todo, up, ip, sd, shard_size=4)
        scores = sd.read_shards(SCORES, SCORES_SCHEMA)
        failures = sd.read_shards("failures")
    assert res.failed == 50 and scores["user"].unique().to_list() == [0]
    assert failures.group_by("user").len().sort("user")["len"].to_list() == [10] * 5
    reasons = dict(failures.group_by("user").agg(pl.col("reason").first()).iter_rows())
    assert reasons[1].startswith("unknown item ids") and reasons[2].startswith("1 item(s) not scored")
    assert reasons[3].startswith("score outside") and reasons[4].startswith("score outside")
    assert reasons[5] == "engine: reply was not JSON"

    good = ScriptedEngine()
    with StageDir(tmp_path / "augment", "augment", "fp") as sd:
        res = run_scoring(good, todo, up, ip, sd, shard_size=4)
        scores = sd.read_shards(SCORES, SCORES_SCHEMA)
    assert (res.sent, res.failed) == (50, 0) and {u for u, _, _ in good.asked} == {1, 2, 3, 4, 5}
    assert scores.height == 600

    aug = select_augmented(scores, {k: len(v) for k, v in samples.items()}, fraction=0.1)
    assert aug.group_by("user", "sign").len()["len"].to_list() == [5] * 12
    pos = aug.filter(pl.col("sign") == 1)
    assert set(zip(pos["user"], pos["item"])).isdisjoint(zip(aug.filter(pl.col("sign") == -1)["user"],
                                                               aug.filter(pl.col("sign") == -1)["item"]))
    # each user's augmented positives are its best like scores under the rule
    for u in range(6):
        chosen = pos.filter(pl.col("user") == u)
        rest = scores.filter((pl.col("user") == u) & (pl.col("polarity") == "pos") & ~pl.col("item").is_in(chosen["item"].implode()))
        assert chosen["score"].min() >= rest["score"].max()


def test_quality_compares_augmented_items_with_random_candidates_on_validation_positives_only():
    inter = interactions([(0, 0, 1, "train"), (0, 1, -1, "train"), (0, 2, 1, "test"), (0, 3, 1, "valid")])
    items = pl.DataFrame({"item": [0, 1, 2, 3, 4, 5], "categories": [["A"], ["B"], ["A"], ["A"], ["B"], ["B"]]})
    scores = pl.DataFrame({"user": [0] * 8, "item": [2, 3, 4, 5] * 2, "polarity": ["pos"] * 4 + ["neg"] * 4,
                           "score": [1.0] * 8, "engine": ["x"] * 8}, schema=SCORES_SCHEMA)
    aug = pl.DataFrame({"user": [0, 0, 0], "item": [3, 4, 5], "sign": [1, -1, -1], "score": [1.0] * 3},
                       schema={"user": pl.Int32, "item": pl.Int32, "sign": pl.Int8, "score": pl.Float64})
    q = augment_quality(aug, scores, inter, items)
    assert (q["pos_count"], q["pos_precision"], q["pos_random_precision"], q["pos_lift"]) == (1, 1.0, 0.25, 4.0)
    assert (q["neg_count"], q["neg_heldout_precision"], q["neg_random_precision"], q["neg_heldout_ratio"]) == (2, 0.0, 0.25, 0.0)
    # a test positive is never looked at: as an augmented positive it counts as a miss
    on_test = aug.with_columns(pl.when(pl.col("sign") == 1).then(2).otherwise(pl.col("item")).cast(pl.Int32).alias("item"))
    assert augment_quality(on_test, scores, inter, items)["pos_precision"] == 0.0
    # user 0 liked A once and disliked B once: lean(A) = log(1/2), lean(B) = log(2/1)
    assert q["dislike_lean_neg"] == pytest.approx(math.log(2), abs=1e-4)
    assert q["dislike_lean_pos"] == pytest.approx(math.log(0.5), abs=1e-4)
    assert q["dislike_lean_random"] == pytest.approx(0.0, abs=1e-4)


# --- profiles (eq. 1): the query inputs and the resumable profiling loop ---------------------------------

from lagcl.profiles import SHARD, profile_requests, profile_tables, read_profiles, run_profiles  # noqa: E402
from lagcl.semantic.base import Profile  # noqa: E402


def test_profile_queries_use_training_ratings_only_newest_first_with_genre_counts():
    inter = interactions([(0, 1, 1, "train"), (0, 2, 1, "train"), (0, 3, -1, "train"), (0, 4, 1, "test"),
                          (1, 1, -1, "train")])
    users = pl.DataFrame({"user": [0, 1], "raw_id": ["a", "b"], "age": ["24", "50"], "gender": ["M", "F"],
                          "zip_code": ["123", "456"]}, schema_overrides={"user": pl.Int32})
    items = pl.DataFrame({"item": [1, 2, 3, 4], "raw_id": ["1", "2", "3", "4"], "title": ["Alien", "Heat", "Babe", "Fargo"],
                          "categories": [["Sci-Fi", "Horror"], ["Crime"], ["Children's"], ["Crime"]],
                          "year": ["1979", "1995", "1995", "1996"]}, schema_overrides={"item": pl.Int32})
    reqs = profile_requests(inter, users, items)
    u0, u1 = reqs[0], reqs[1]
    assert (u0.kind, u0.id, u0.liked, u0.disliked) == ("user", 0, ("Heat (1995)", "Alien (1979)"), ("Babe (1995)",))
    assert u0.attributes == {"age": "24", "gender": "M", "liked genres": "Crime, Horror, Sci-Fi",
                             "disliked genres": "Children's"}  # no zip code, no test item (Fargo)
    assert u1.liked == () and u1.disliked == ("Alien (1979)",)
    fargo = reqs[-1]
    assert (fargo.kind, fargo.id, fargo.title) == ("item", 4, "Fargo")
    assert fargo.attributes == {"year": "1996", "genres": "Crime", "ratings": "none in training"}
    assert reqs[2].attributes["ratings"] == "2 in training, 50% positive"


class ScriptedProfiler:
    name, model, approximate = "scripted", "rule", False

    def __init__(self, skip=(), extra=False):
        self.skip, self.extra = set(skip), extra
        self.asked: list[int] = []

    def profile(self, requests):
        self.asked += [r.id for r in requests]
        out = [Profile(r.kind, r.id, f"{r.kind} {r.id}", "rule") for r in requests if r.id not in self.skip]
        if self.extra and out:
            out += [Profile("item", 999, "invented", ""), out[0]]  # an unknown id and a duplicate
        return out


def test_profiles_are_written_per_shard_unusable_replies_are_asked_again_and_done_ids_never(tmp_path):
    from lagcl.semantic.base import ProfileRequest

    reqs = [ProfileRequest("user", i) for i in range(5)] + [ProfileRequest("item", i) for i in range(3)]
    first = ScriptedProfiler(skip={2, 1}, extra=True)  # leaves user 1, 2 and item 1, 2 out, invents item 999
    with StageDir(tmp_path / "p", "profiles", "fp") as sd:
        run = run_profiles(first, reqs, sd, shard_size=3)
        # batches [u0 u1 u2] [u3 u4 i0] [i1 i2]: the last has nothing usable, so no shard
        assert (run.answered, run.failed) == (4, 4) and len(sd.shards(SHARD)) == 2
    second = ScriptedProfiler()
    with StageDir(tmp_path / "p", "profiles", "fp") as sd:
        run = run_profiles(second, reqs, sd, shard_size=3)
        users, items = profile_tables(sd, second)
    assert second.asked == [1, 2, 1, 2] and (run.answered, run.skipped, run.failed) == (4, 4, 0)
    assert users["user"].to_list() == [0, 1, 2, 3, 4] and items["item"].to_list() == [0, 1, 2]
    assert users.columns == ["user", "summarization", "reasoning", "facts", "engine", "model", "approximate"]
    assert users.row(0) == (0, "user 0", "rule", None, "scripted", "rule", False)


def test_the_profiles_tables_carry_each_profiles_facts_to_the_later_stages_and_none_where_it_has_none(tmp_path):
    from lagcl.semantic.base import ProfileRequest

    composed = Profile("user", 0, "A user.", "r", facts={"likes": {"titles": ["Heat (1995)"]}, "traits": [["age", "24"]]})

    class Composer(ScriptedProfiler):
        def profile(self, requests):
            return [composed if r.id == 0 else Profile(r.kind, r.id, "text", "r") for r in requests]

    engine = Composer()
    with StageDir(tmp_path / "p", "profiles", "fp") as sd:
        run_profiles(engine, [ProfileRequest("user", 0), ProfileRequest("user", 1)], sd, shard_size=2)
        users, _ = profile_tables(sd, engine)
    assert read_profiles(users, "user", {1: "u-1"}) == [composed, Profile("user", 1, "text", "r", label="u-1")]
    older = users.drop("facts")  # a table written before profiles carried facts
    assert [p.facts for p in read_profiles(older, "user")] == [None, None]
