"""llm.prompt_style: the paper's scoring prompts (Figures 15-16) and the compact ones (one-line item cards,
scores without reasons, more candidates per call) both parse, through the real SDKs and the local protocol
server, and both run the profiles and augment stages end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from lagcl.llm.protocol_server import LLMServer, Reply, pipeline_model

from lagcl.artifacts import read_manifest
from lagcl.config import LLMConfig, load_config
from lagcl.semantic.base import ScoreRequest
from lagcl.semantic.llm_engine import LLMEngine, pack_score_requests
from lagcl.semantic.prompts import Prompts, item_card, parse_scores


@pytest.fixture
def server():
    with LLMServer(pipeline_model) as s:
        yield s


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")


def make(server: LLMServer, tmp_path: Path, backend: str = "openai", **llm) -> LLMEngine:
    base = server.base_url + ("/v1" if backend == "openai" else "")
    cfg = load_config(engine=backend, overrides=[f"engine.base_url={base}", "engine.retry_base_s=0.01",
                                                 "engine.model=test-model", "engine.requests_per_minute=null"])
    return LLMEngine(cfg.engine, LLMConfig(**llm), domain="movie", cache_dir=tmp_path / "llm")


def chunk(user: int, polarity: str, first: int, n: int) -> ScoreRequest:
    return ScoreRequest(user, f"Profile of user {user}.", polarity,
                        tuple((i, f"Item {i} is a drama. For patient viewers.") for i in range(first, first + n)))


def test_an_item_card_is_the_first_sentence_of_the_profile_cut_to_the_word_limit():
    assert item_card("For fans of noir and crime. Loved by critics.", 20) == "For fans of noir and crime."
    assert item_card("one two three four five six", 4) == "one two three four..."


@pytest.mark.parametrize("polarity,key", [("pos", "like_scores"), ("neg", "dislike_scores")])
def test_the_compact_prompt_carries_cards_not_profiles_and_asks_for_scores_without_reasons(polarity, key):
    req = ScoreRequest(3, "Enjoys noir.", polarity, ((12, "A bleak noir about a heist. " + "word " * 90),))
    paper, compact = Prompts("movie").score(req), Prompts("movie", style="compact", summary_words=5).score(req)

    text = compact.messages[0][1]
    cards = json.loads(text.split("MOVIE CARDS:", 1)[1])
    assert cards == [{"movie_id": "12", "card": "A bleak noir about a..."}]
    assert f'"{key}"' in compact.system and "reasoning" not in compact.system
    assert compact.operation == paper.operation == f"score_{polarity}"
    assert len(compact.system + text) < len(paper.system + paper.messages[0][1]) / 2


def test_both_reply_styles_parse_to_the_same_scores():
    paper = '{"ratings": [{"movie_id": "12", "like_score": 8, "reasoning": "noir"}, {"movie_id": "13", "like_score": 2}]}'
    compact = '{"like_scores": {"12": 8, "13": 2}}'
    for reply in (paper, compact):
        assert parse_scores(reply, "movie_id", "pos", [12, 13]) == ({12: 8.0, 13: 2.0}, None)
    # a compact reply for the other polarity is not an answer
    with pytest.raises(ValueError, match='"like_scores" object'):
        parse_scores('{"dislike_scores": {"12": 8, "13": 2}}', "movie_id", "pos", [12, 13])
    scores, problem = parse_scores('{"like_scores": {"12": 8, "99": 2}}', "movie_id", "pos", [12, 13])
    assert scores == {12: 8.0} and set(problem.reasons) == {"unknown_id", "missing_id"}


def test_consecutive_requests_of_one_user_and_polarity_share_a_call_up_to_the_item_limit():
    reqs = [chunk(1, "pos", 0, 32), chunk(1, "pos", 32, 32), chunk(1, "pos", 64, 10), chunk(1, "neg", 0, 32),
            chunk(2, "neg", 0, 32)]
    assert pack_score_requests(reqs, 64) == [[0, 1], [2], [3], [4]]
    assert pack_score_requests(reqs, 0) == [[0], [1], [2], [3], [4]]


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
@pytest.mark.parametrize("style", ["paper", "compact"])
def test_both_styles_score_exactly_the_requested_items_through_the_sdks(server, tmp_path, backend, style):
    reqs = [chunk(1, "pos", 0, 32), chunk(1, "pos", 32, 32), chunk(1, "neg", 100, 20)]
    engine = make(server, tmp_path, backend, prompt_style=style, compact_items_per_call=64)

    out = engine.score(reqs)

    assert [(r.user, r.polarity, r.failed) for r in out] == [(1, "pos", None), (1, "pos", None), (1, "neg", None)]
    assert [sorted(r.scores) for r in out] == [list(range(32)), list(range(32, 64)), list(range(100, 120))]
    assert all(0 <= v <= 10 for r in out for v in r.scores.values())
    assert len(server.model_calls()) == (2 if style == "compact" else 3)
    assert engine.usage().failed == 0 and server.responder_errors == []


def test_in_a_shared_call_a_request_left_unscored_after_repair_fails_alone(server, tmp_path):
    first_half = {str(i): 5 for i in range(4)}
    server.script = [Reply(json.dumps({"like_scores": {**first_half, "4": 6}})),  # 5..7 missing
                     Reply(json.dumps({"like_scores": first_half}))]  # the repair still misses them
    engine = make(server, tmp_path, prompt_style="compact", compact_items_per_call=8)

    a, b = engine.score([chunk(1, "pos", 0, 4), chunk(1, "pos", 4, 4)])

    assert a.failed is None and a.scores == {0: 5.0, 1: 5.0, 2: 5.0, 3: 5.0}
    assert b.failed.startswith("after one repair attempt") and "got no valid score: 4, 5, 6, 7" in b.failed
    assert b.scores == {4: 6.0}  # the valid score of the first reply is kept, but the request is failed
    assert len(server.model_calls()) == 2


def tiny_dataset(root: Path, new_users: int = 0) -> Path:
    """12 users x 10 items, each user rating 6 items: every user is a cold-start user; and `new_users` more users
    rating items already rated."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "ratings.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["user_id", "item_id", "rating", "timestamp"])
        for u in range(12 + new_users):
            for j in range(6):
                w.writerow([f"user {u}", f"item {(u + j) % 10}", (5, 4, 2)[(u + j) % 3], 1000 * u + j])
    with open(root / "items.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["item_id", "title", "genres"])
        for i in range(10):
            w.writerow([f"item {i}", f"Title {i}", ("Drama", "Comedy|Romance", "Action")[i % 3]])
    return root


@pytest.mark.parametrize("style", ["paper", "compact"])
def test_the_profiles_and_augment_stages_finish_in_both_styles_against_the_local_server(server, tmp_path, style):
    from tasks import augment as augment_stage
    from tasks import prepare as prepare_stage
    from tasks import profiles as profiles_stage
    from tasks.base import make_plan

    data = tiny_dataset(tmp_path / "data")
    cfg = load_config(data="my-csv", engine="openai", overrides=[
        f"cache_dir={tmp_path / 'cache'}", f"data.path={data}", "data.kcore=1", "data.name=tiny",
        f"engine.base_url={server.base_url}/v1", "engine.model=test-model", "engine.requests_per_minute=null",
        "augment.items_per_call=2", "llm.compact_items_per_call=4", f"llm.prompt_style={style}",
        *[f"pipeline.stages.{s}=false" for s in ("groups", "control", "gcl", "rerank", "evaluate")]])
    plan = make_plan(cfg)
    prepare_stage.run(plan)
    profiles_stage.run(plan)
    meta = read_manifest(Path(augment_stage.run(plan).path))["meta"]

    from lagcl.augment import candidate_samples, chunks

    inter = plan.store.read_table("prepare", plan.fingerprints["prepare"], "interactions")
    items = plan.store.read_table("prepare", plan.fingerprints["prepare"], "items")["item"].to_list()
    samples = candidate_samples(inter, items, sorted(inter["user"].unique().to_list()), 1024, cfg.seed)
    assert meta["failed"] == 0 and meta["cold_users"] == 12
    assert meta["scores"] == sum(len(s) for s in samples.values())  # every candidate scored, like and dislike
    score_calls = [c for c in server.model_calls() if "_score" in json.dumps(c.body)]
    # the paper's layout sends each chunk of 2 candidates; the compact one packs up to 4 (2 chunks) per call
    per_sample = [len(chunks({k: s}, 2)) for k, s in samples.items()]
    assert len(score_calls) == (sum(per_sample) if style == "paper" else sum((n + 1) // 2 for n in per_sample))
    assert meta["requests"] == sum(per_sample) and meta["usage"]["invalid_replies"] == {}


def test_the_compact_style_gets_its_own_augment_folder_and_the_paper_style_keeps_its_own():
    from tasks.base import make_plan

    paper = make_plan(load_config(engine="openai"))
    assert make_plan(load_config(engine="openai", overrides=["llm.prompt_style=paper"])).fingerprints == \
        paper.fingerprints
    compact = make_plan(load_config(engine="openai", overrides=["llm.prompt_style=compact"])).fingerprints
    assert compact["augment"] != paper.fingerprints["augment"]
    assert compact["profiles"] == paper.fingerprints["profiles"] and compact["groups"] == paper.fingerprints["groups"]
