"""Score requests pay only for the (user, item) pairs that changed (issue 14): the score of a pair whose prompt parts
were already answered in a validated reply is reused, and only the changed pairs are asked, regrouped per user and
polarity (llm.reuse_pair_scores, lagcl.semantic.llm_engine)."""

from __future__ import annotations

import json
import logging
import re

import pytest
from lagcl.llm.protocol_server import LLMServer, prompt_text

from lagcl.config import LLMConfig, load_config
from lagcl.semantic.base import ScoreRequest
from lagcl.semantic.llm_engine import LLMEngine

ITEM = re.compile(r'"movie_id": "([^"]+)",\s*"profile": "([^"]*)"')


def profile_model(prompt: str) -> str:
    """Likes an item by the length of its profile (so a changed profile gets another score); answers no JSON for
    any prompt that lists item "bad"."""
    items = ITEM.findall(prompt)
    if any(i == "bad" for i, _ in items):
        return "no JSON here"
    return json.dumps({"ratings": [{"movie_id": i, "like_score": len(text) % 10, "reasoning": "r"} for i, text in items]})


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with LLMServer(profile_model) as s:
        yield s


def make(server: LLMServer, tmp_path, **llm) -> LLMEngine:
    cfg = load_config(engine="openai", overrides=[f"engine.base_url={server.base_url}/v1", "engine.model=m",
                                                  "engine.retry_base_s=0.01", "engine.requests_per_minute=null"])
    return LLMEngine(cfg.engine, LLMConfig(**llm), domain="movie", cache_dir=tmp_path / "llm")


def requests(profiles: dict[int, str], chunks: list[tuple[int, tuple[int, ...]]]) -> list[ScoreRequest]:
    """Like requests of user u (profile "likes noir", label "u<u>") for the items of each chunk (label "tt<i>")."""
    return [ScoreRequest(u, "likes noir", "pos", tuple((i, profiles[i]) for i in items), f"u{u}",
                         tuple(f"tt{i}" for i in items)) for u, items in chunks]


def asked(server: LLMServer, since: int = 0) -> list[tuple[str, list[str]]]:
    """(user label, the item labels listed) of every model call after the first `since`, sorted."""
    out = []
    for call in server.model_calls()[since:]:
        text = prompt_text(call.body)
        out.append((re.search(r'"user_id": "([^"]+)"', text).group(1), [i for i, _ in ITEM.findall(text)]))
    return sorted(out)


PROFILES = {i: f"item {i}" for i in range(1, 8)}
CHUNKS = [(0, (1, 2, 3)), (0, (4, 5, 6)), (1, (1, 2, 3))]


def test_a_rerun_with_changed_item_profiles_asks_exactly_the_changed_pairs_regrouped_per_user(server, tmp_path):
    first = make(server, tmp_path).score(requests(PROFILES, CHUNKS))
    assert [r.scores for r in first] == [{1: 6.0, 2: 6.0, 3: 6.0}, {4: 6.0, 5: 6.0, 6: 6.0}, {1: 6.0, 2: 6.0, 3: 6.0}]
    sent = len(server.model_calls())
    assert sent == 3

    changed = {**PROFILES, 2: "item two", 5: "item 5!"}
    engine = make(server, tmp_path)
    again = engine.score(requests(changed, CHUNKS))
    # user 0's two changed pairs (from two requests) go in one request; user 1 asks only item 2
    assert asked(server, sent) == [("u0", ["tt2", "tt5"]), ("u1", ["tt2"])]
    assert [r.scores for r in again] == [{1: 6.0, 2: 8.0, 3: 6.0}, {4: 6.0, 5: 7.0, 6: 6.0}, {1: 6.0, 2: 8.0, 3: 6.0}]
    assert [r.failed for r in again] == [None, None, None]
    assert (engine.usage().score_pairs_reused, engine.usage().score_pairs_sent) == (6, 3)


def test_an_unchanged_rerun_sends_nothing_even_when_its_pairs_are_batched_differently(server, tmp_path):
    first = make(server, tmp_path).score(requests(PROFILES, CHUNKS))
    sent = len(server.model_calls())

    same = make(server, tmp_path)
    assert same.score(requests(PROFILES, CHUNKS)) == first
    rebatched = make(server, tmp_path)  # two items per request instead of three: new prompts, known pairs
    results = rebatched.score(requests(PROFILES, [(0, (1, 2)), (0, (3, 4)), (0, (5, 6)), (1, (1, 2)), (1, (3,))]))
    assert len(server.model_calls()) == sent
    assert [r.scores for r in results] == [{1: 6.0, 2: 6.0}, {3: 6.0, 4: 6.0}, {5: 6.0, 6: 6.0}, {1: 6.0, 2: 6.0},
                                           {3: 6.0}]
    assert (rebatched.usage().score_pairs_reused, rebatched.usage().score_pairs_sent, rebatched.usage().cached) == \
        (9, 0, 0)


def test_a_failed_reply_is_not_stored_and_the_next_run_asks_its_pairs_again(server, tmp_path):
    profiles = {**PROFILES, 7: "x"}
    reqs = [ScoreRequest(0, "likes noir", "pos", ((1, "item 1"), (7, "x")), "u0", ("tt1", "bad")),
            ScoreRequest(1, "likes noir", "pos", ((1, "item 1"),), "u1", ("tt1",))]
    engine = make(server, tmp_path)
    failed, good = engine.score(reqs)
    assert failed.failed and good.failed is None and len(server.model_calls()) == 3  # the bad one was repaired once
    assert engine.client.cache.pair_scores(engine.pair_keys(reqs[0])) == {}
    assert list(engine.client.cache.pair_scores(engine.pair_keys(reqs[1])).values()) == [6.0]

    sent = len(server.model_calls())
    make(server, tmp_path).score(requests(profiles, [(1, (1, 2))]) + reqs)
    assert asked(server, sent) == [("u0", ["tt1", "bad"]), ("u0", ["tt1", "bad"]), ("u1", ["tt2"])]


def test_turned_off_every_changed_request_is_sent_in_full(server, tmp_path):
    make(server, tmp_path, reuse_pair_scores=False).score(requests(PROFILES, CHUNKS))
    sent = len(server.model_calls())
    engine = make(server, tmp_path, reuse_pair_scores=False)
    engine.score(requests({**PROFILES, 2: "changed"}, CHUNKS))
    assert asked(server, sent) == [("u0", ["tt1", "tt2", "tt3"]), ("u1", ["tt1", "tt2", "tt3"])]
    assert (engine.usage().score_pairs_reused, engine.usage().score_pairs_sent) == (0, 9)


def test_turning_pair_reuse_off_gets_the_augment_stage_its_own_folder_for_llm_engines_only():
    from tasks.base import make_plan

    def augment(engine: str, *overrides: str) -> str:
        return make_plan(load_config(engine=engine, overrides=list(overrides))).fingerprints["augment"]

    assert augment("openai", "llm.reuse_pair_scores=true") == augment("openai")
    assert augment("openai", "llm.reuse_pair_scores=false") != augment("openai")
    assert augment("embedding", "llm.reuse_pair_scores=false") == augment("embedding")


def test_the_augment_summary_line_says_how_many_score_pairs_were_asked_and_reused(caplog):
    from tasks.augment import _summary

    quality = {k: 0.0 for k in ("pos_precision", "pos_random_precision", "pos_lift", "neg_heldout_precision",
                                "neg_random_precision", "neg_heldout_ratio")}
    meta = {"cold_users": 2, "requests": 8, "sent_this_run": 8, "resumed": 0, "failed": 0, "augmented_pos": 2,
            "augmented_neg": 2, "engine": "openai", "model": "m", "approximate": False, "seconds_this_run": 1.0,
            "quality": quality, "usage": {"score_pairs_reused": 120, "score_pairs_sent": 8}}
    with caplog.at_level(logging.INFO):
        _summary(meta)
    assert "score pairs 8 asked, 120 reused" in caplog.text


def test_the_augment_stages_scoring_of_a_rerun_writes_every_score_and_asks_only_the_changed_pairs(server, tmp_path):
    from lagcl.artifacts import StageDir
    from lagcl.augment import SCORES, SCORES_SCHEMA, Chunk, run_scoring
    from lagcl.semantic.base import Profile

    users = [Profile("user", u, "likes noir", "", label=f"u{u}") for u in (0, 1)]
    todo = [Chunk(0, "pos", 0, (1, 2, 3)), Chunk(0, "pos", 1, (4, 5, 6)), Chunk(1, "pos", 0, (1, 2, 3))]

    def score(run: str, profiles: dict[int, str]) -> tuple[object, dict]:
        items = [Profile("item", i, text, "", label=f"tt{i}") for i, text in profiles.items()]
        with StageDir(tmp_path / run, "augment", run) as sd:
            res = run_scoring(make(server, tmp_path), todo, users, items, sd, shard_size=1)
            table = sd.read_shards(SCORES, SCORES_SCHEMA)
        return res, {(u, i): s for u, i, s in table.select("user", "item", "score").iter_rows()}

    score("first", PROFILES)
    sent = len(server.model_calls())
    res, scores = score("rerun", {**PROFILES, 5: "item 5!"})
    assert asked(server, sent) == [("u0", ["tt5"])]
    assert (res.requests, res.sent, res.failed) == (3, 3, 0)
    assert scores == {**{(0, i): 6.0 for i in (1, 2, 3, 4, 6)}, (0, 5): 7.0, **{(1, i): 6.0 for i in (1, 2, 3)}}
