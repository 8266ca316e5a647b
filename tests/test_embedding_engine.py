"""The offline embedding engine: composed profiles, cosine scores, k-means partitions, centroid similarity."""

import json
from dataclasses import replace

import numpy as np
import polars as pl
import pytest

from lagcl.config import EngineConfig
from lagcl.data.fetch import ensure_ml100k
from lagcl.data.prepare import prepare
from lagcl.data.readers import read_raw
from lagcl.config import load_config
from lagcl.profiles import profile_requests
from lagcl.semantic import make_engine
from lagcl.semantic.base import Group, ProfileRequest, ScoreRequest, SemanticEngine
from lagcl.semantic.embedding import EmbeddingEngine, compose_profile, split_user_profile

SCIFI_FAN = ProfileRequest(
    "user", 7, attributes={"age": "31", "occupation": "engineer", "liked genres": "Sci-Fi, Action",
                           "disliked genres": "Romance, Musical"},
    liked=("Star Wars (1977)", "Alien (1979)", "Terminator 2: Judgment Day (1991)", "Blade Runner (1982)"),
    disliked=("Sleepless in Seattle (1993)", "Sound of Music, The (1965)", "Pretty Woman (1990)"))
ITEMS = [
    ProfileRequest("item", 1, "Aliens", {"year": "1986", "genres": "Action, Sci-Fi, Thriller", "ratings": "90 in training, 80% positive"}),
    ProfileRequest("item", 2, "Empire Strikes Back, The", {"year": "1980", "genres": "Action, Adventure, Sci-Fi"}),
    ProfileRequest("item", 3, "While You Were Sleeping", {"year": "1995", "genres": "Comedy, Romance"}),
    ProfileRequest("item", 4, "Mary Poppins", {"year": "1964", "genres": "Children's, Comedy, Musical"}),
]


@pytest.fixture(scope="module")
def engine():
    return EmbeddingEngine(EngineConfig(batch_size=16), domain="movie")


def test_the_config_default_builds_the_embedding_engine_and_it_labels_itself_an_approximation(tmp_path):
    engine = make_engine(load_config(), tmp_path)
    assert isinstance(engine, EmbeddingEngine) and isinstance(engine, SemanticEngine)
    assert (engine.name, engine.model, engine.approximate) == ("embedding", "all-MiniLM-L6-v2", True)


def test_the_config_gives_the_embedding_engine_the_profile_history_and_the_runs_seed(tmp_path):
    engine = make_engine(load_config(overrides=["profiles.history=50", "seed=7"]), tmp_path)
    assert (engine.history, engine.seed) == (50, 7)


def test_a_user_profile_is_composed_from_traits_and_history_and_says_what_it_was_built_from():
    p = compose_profile(SCIFI_FAN, domain="movie")
    assert p.kind == "user" and p.id == 7
    assert p.summarization.startswith("A user (age: 31, occupation: engineer).")
    assert "Likes: Sci-Fi, Action movies, such as Star Wars (1977); Alien (1979);" in p.summarization
    assert "Dislikes: Romance, Musical movies, such as Sleepless in Seattle (1993);" in p.summarization
    assert "age; occupation; 4 liked movies" in p.reasoning and "3 disliked movies" in p.reasoning
    like, dislike = split_user_profile(p.summarization)
    assert "Star Wars" in like and "Pretty Woman" not in like and dislike.startswith("Romance, Musical")


def test_an_item_profile_lists_its_metadata_and_a_history_shown_beyond_the_limit_is_counted():
    item = compose_profile(ITEMS[0], domain="movie")
    assert item.summarization == "Aliens. Genres: Action, Sci-Fi, Thriller. Year: 1986. Ratings: 90 in training, 80% positive."
    assert item.reasoning == "Composed from the title and year, genres, ratings."
    long = compose_profile(ProfileRequest("user", 1, liked=tuple(f"M{i}" for i in range(5))), "movie", history=3)
    assert "such as M0; M1; M2; and 2 more." in long.summarization


def test_like_and_dislike_scores_rank_items_by_taste_within_0_10_and_repeat_exactly(engine):
    user = engine.profile([SCIFI_FAN])[0].summarization
    items = tuple((p.id, p.summarization) for p in engine.profile(ITEMS))
    like, dislike = engine.score([ScoreRequest(7, user, "pos", items), ScoreRequest(7, user, "neg", items)])
    assert set(like.scores) == set(dislike.scores) == {1, 2, 3, 4}
    assert all(0 <= s <= 10 for s in [*like.scores.values(), *dislike.scores.values()])
    assert min(like.scores[1], like.scores[2]) > max(like.scores[3], like.scores[4])
    assert min(dislike.scores[3], dislike.scores[4]) > max(dislike.scores[1], dislike.scores[2])
    assert engine.score([ScoreRequest(7, user, "pos", items)])[0].scores == like.scores


def test_without_a_dislikes_part_the_dislike_score_is_ten_minus_the_like_score(engine):
    items = tuple((p.id, p.summarization) for p in engine.profile(ITEMS))
    text = "Loves space opera and science fiction adventures."
    like, dislike = engine.score([ScoreRequest(1, text, "pos", items), ScoreRequest(1, text, "neg", items)])
    assert all(abs(dislike.scores[i] - (10 - like.scores[i])) < 1e-3 for i in like.scores)


def _fan_and_items(engine):
    """The sci-fi fan's and the items' composed profiles, their facts through JSON as the profiles tables keep them."""
    def through_json(p):
        return replace(p, facts=json.loads(json.dumps(p.facts)))

    return through_json(engine.profile([SCIFI_FAN])[0]), [through_json(p) for p in engine.profile(ITEMS)]


def _request(user, items, polarity, facts=True):
    return ScoreRequest(user.id, user.summarization, polarity, tuple((p.id, p.summarization) for p in items),
                        user_facts=user.facts if facts else None,
                        item_facts=tuple(p.facts for p in items) if facts else ())


def test_scores_are_read_from_the_profiles_facts_so_a_rewritten_text_with_the_same_facts_scores_the_same(engine):
    user, items = _fan_and_items(engine)
    assert user.facts is not None and all(p.facts is not None for p in items)
    rewritten_user = replace(user, summarization="A user. Likes: nothing rated highly yet.")
    rewritten_items = [replace(p, summarization="Item.") for p in items]
    for polarity in ("pos", "neg"):
        [as_written, rewritten] = engine.score([_request(user, items, polarity),
                                                _request(rewritten_user, rewritten_items, polarity)])
        assert rewritten.scores == as_written.scores


def test_a_profile_without_facts_is_read_back_from_its_text_and_scores_as_with_them(engine):
    user, items = _fan_and_items(engine)
    for polarity in ("pos", "neg"):
        [with_facts, text_only] = engine.score([_request(user, items, polarity),
                                                _request(user, items, polarity, facts=False)])
        assert text_only.scores == with_facts.scores and text_only.failed is None


def test_groups_are_formed_and_named_from_the_members_facts_not_their_texts():
    reqs = [ProfileRequest("item", j, t, {"genres": g, "year": "1980"})
            for j, (t, g) in enumerate([("Scream", "Horror"), ("Psycho", "Horror"), ("Aladdin", "Children's"),
                                        ("Dumbo", "Children's")])]
    engine = EmbeddingEngine(EngineConfig(batch_size=16), domain="movie")
    profiles = engine.profile(reqs)
    expected = engine.partition("item", profiles, target_group_size=2)
    blanked = [replace(p, summarization=f"Movie {p.id}.") for p in profiles]
    assert EmbeddingEngine(domain="movie", encoder=engine.encoder).partition("item", blanked, 2) == expected
    assert {g.name for g in expected.groups} == {"Horror / year 1980", "Children's / year 1980"}


def test_a_request_with_duplicate_item_ids_fails_instead_of_being_answered(engine):
    res = engine.score([ScoreRequest(1, "x", "pos", ((5, "Heat"), (5, "Heat")))])[0]
    assert res.failed and res.scores == {}


def test_partition_groups_every_profile_once_by_genre_and_names_groups_after_common_attributes(engine):
    genres = {"Horror": ["Scream", "Halloween", "Candyman", "Hellraiser", "Psycho", "Shining, The"],
              "Children's": ["Lion King, The", "Aladdin", "Pinocchio", "Dumbo", "Bambi", "Cinderella"]}
    reqs = [ProfileRequest("item", 10 * g + j, t, {"genres": name})
            for g, (name, titles) in enumerate(genres.items()) for j, t in enumerate(titles)]
    profiles = engine.profile(reqs)
    res = engine.partition("item", profiles, target_group_size=6)
    assert res.failed is None and res.unassigned == ()
    assert sorted(m for g in res.groups for m in g.members) == sorted(p.id for p in profiles)
    assert sorted(sorted(g.members) for g in res.groups) == [[0, 1, 2, 3, 4, 5], [10, 11, 12, 13, 14, 15]]
    names = {g.members[0]: g.name for g in res.groups}
    assert names[0] == "Horror" and names[10] == "Children's"
    assert res.groups[0].characteristics == "6 items; most common: Horror (100%)"
    again = engine.partition("item", profiles, target_group_size=6)
    assert again == res

    horror, kids = res.groups
    other_horror = Group("item", "h", "", horror.members[:3])
    sims = engine.similarity([(horror, horror), (horror, other_horror), (horror, kids)])
    assert sims[0] == pytest.approx(1.0, abs=1e-5)
    assert 1.0 >= sims[1] > sims[2] >= 0.0


def test_similarity_of_groups_whose_profiles_were_never_seen_is_an_error_not_a_guess():
    fresh = EmbeddingEngine(domain="movie")
    with pytest.raises(Exception, match="no profile known for items"):
        fresh.similarity([(Group("item", "a", "", (1,)), Group("item", "b", "", (2,)))])


@pytest.fixture(scope="module")
def ml100k(repo_root):
    ensure_ml100k(repo_root / "cache" / "raw" / "ml-100k")
    cfg = load_config(overrides=[f"data.path={repo_root / 'cache' / 'raw' / 'ml-100k'}"])
    return prepare(read_raw(cfg.data, repo_root), cfg.data, cfg.seed)


def test_on_ml100k_liked_genre_profiles_score_held_out_test_items_above_other_items(engine, ml100k):
    inter, users, items = ml100k.interactions, ml100k.users, ml100k.items
    requests = profile_requests(inter, users, items)
    rng = np.random.default_rng(0)
    sample = set(rng.choice(users["user"].to_numpy(), 30, replace=False).tolist())
    train = dict(inter.filter(pl.col("split") == "train").group_by("user").agg("item").iter_rows())
    test = dict(inter.filter(pl.col("split") == "test").group_by("user").agg("item").iter_rows())
    # the sampled users' test items and 300 random others (fewer texts to embed than the whole catalogue)
    others = set(rng.choice(items["item"].to_numpy(), 300, replace=False).tolist())
    wanted = others | {i for u in sample for i in test.get(u, [])}
    user_profiles = {p.id: p.summarization for p in engine.profile([r for r in requests if r.kind == "user" and r.id in sample])}
    item_texts = tuple((p.id, p.summarization) for p in engine.profile(
        [r for r in requests if r.kind == "item" and r.id in wanted]))
    results = engine.score([ScoreRequest(u, text, "pos", item_texts) for u, text in sorted(user_profiles.items())])
    aucs = []
    for res in results:
        seen, held = set(train.get(res.user, [])), set(test.get(res.user, []))
        pos = np.array([s for i, s in res.scores.items() if i in held])
        neg = np.array([s for i, s in res.scores.items() if i in others and i not in held and i not in seen])
        aucs.append((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())
    assert len(aucs) == 30
    assert np.mean(aucs) > 0.6, np.mean(aucs)
