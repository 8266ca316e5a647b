"""Prompts name users and items by the dataset's own ids, never by the internal ones (issue 14): internal ids
are re-assigned by every prepare, so a new item shifts every id after it and would change every prompt of a
scheduled rerun; raw ids do not move, so an unchanged user's prompts come from the response cache."""

from __future__ import annotations

import json
import re

import polars as pl
import pytest
from lagcl.llm.protocol_server import LLMServer, Reply

from lagcl.config import LLMConfig, load_config
from lagcl.profiles import profile_requests, raw_labels
from lagcl.semantic.base import Profile, ScoreRequest
from lagcl.semantic.llm_engine import LLMEngine
from lagcl.semantic.prompts import Prompts, parse_partition, parse_scores


def echo_model(prompt: str) -> str:
    """Scores every item id the prompt lists (9 for "tt1", 2 otherwise); groups the listed ids in pairs."""
    if "like_score" in prompt:
        ids = re.findall(r'"movie_id": "([^"]+)",\s*"profile"', prompt)
        return json.dumps({"ratings": [{"movie_id": i, "like_score": 9 if i == "tt1" else 2, "reasoning": "r"}
                                       for i in ids]})
    ids = re.findall(r'"user_id": "([^"]+)",\s*"summarization"', prompt)
    return json.dumps({"groups": [{"group_name": f"G{k}", "members": ids[k:k + 2], "reasoning": "x"}
                                  for k in range(0, len(ids), 2)]})


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with LLMServer(echo_model) as s:
        yield s


def make(server: LLMServer, tmp_path) -> LLMEngine:
    cfg = load_config(engine="openai", overrides=[f"engine.base_url={server.base_url}/v1", "engine.model=m",
                                                  "engine.retry_base_s=0.01", "engine.requests_per_minute=null"])
    return LLMEngine(cfg.engine, LLMConfig(), domain="movie", cache_dir=tmp_path / "llm")


def test_a_score_prompt_shows_raw_ids_and_the_reply_maps_back_to_internal_ids(server, tmp_path):
    req = ScoreRequest(0, "likes noir", "pos", ((5, "a"), (6, "b")), user_label="u-196", item_labels=("tt1", "tt2"))
    [result] = make(server, tmp_path).score([req])
    prompt = server.model_calls()[0].body["messages"][-1]["content"]
    assert '"user_id": "u-196"' in prompt and '"movie_id": "tt1"' in prompt and '"movie_id": "5"' not in prompt
    assert result.scores == {5: 9.0, 6: 2.0} and result.failed is None


def test_the_same_user_and_items_under_new_internal_ids_send_a_byte_identical_prompt():
    p = Prompts("movie")
    before = p.score(ScoreRequest(3, "likes noir", "pos", ((10, "a"), (11, "b")), "u-196", ("tt1", "tt2")))
    after = p.score(ScoreRequest(3, "likes noir", "pos", ((12, "a"), (14, "b")), "u-196", ("tt1", "tt2")))
    assert before.messages == after.messages


def test_a_reply_naming_an_internal_id_instead_of_the_shown_one_is_rejected_and_problems_name_shown_ids():
    reply = json.dumps({"ratings": [{"movie_id": "5", "like_score": 7}]})
    scores, problem = parse_scores(reply, "movie_id", "pos", [5, 6], {5: "tt1", 6: "tt2"})
    assert scores == {}
    assert "rejected: 5" in str(problem) and "no valid score: tt1, tt2" in str(problem)


def test_partition_members_are_read_as_shown_ids_and_returned_as_internal_ids(server, tmp_path):
    profiles = [Profile("user", i, f"s{i}", "r", label=f"u{100 + i}") for i in (0, 1, 2)]
    part = make(server, tmp_path).partition("user", profiles, target_group_size=2)
    assert [g.members for g in part.groups] == [(0, 1), (2,)] and part.unassigned == ()
    groups, missing, problem = parse_partition(json.dumps({"groups": [{"group_name": "A", "members": ["u100", "1"],
                                                                      "reasoning": "x"}]}),
                                               [0, 1], "user", {0: "u100", 1: "u101"})
    assert [g.members for g in groups] == [(0,)] and missing == [1] and "rejected: 1" in str(problem)


def test_profile_requests_carry_the_raw_ids_of_prepares_tables():
    users = pl.DataFrame({"user": [0, 1], "raw_id": ["196", "A7"]})
    items = pl.DataFrame({"item": [0], "raw_id": ["tt9"], "title": ["Heat"], "categories": [["Crime"]]})
    inter = pl.DataFrame({"user": [0, 1], "item": [0, 0], "sign": [1, 1], "split": ["train", "train"],
                          "timestamp": [1, 2]})
    reqs = profile_requests(inter, users, items)
    assert [(r.kind, r.id, r.label) for r in reqs] == [("user", 0, "196"), ("user", 1, "A7"), ("item", 0, "tt9")]
    assert '"movie_id": "tt9"' in Prompts("movie").profile(reqs[2]).messages[-1][1]
    assert raw_labels(pl.DataFrame({"item": [0]}), "item") == {}


def test_a_repair_after_a_reply_with_internal_ids_costs_one_more_request_and_keeps_the_scores(server, tmp_path):
    server.script = [Reply(json.dumps({"ratings": [{"movie_id": "5", "like_score": 7, "reasoning": "r"}]}))]
    req = ScoreRequest(0, "p", "pos", ((5, "a"),), "u-1", ("tt1",))
    [result] = make(server, tmp_path).score([req])
    assert len(server.model_calls()) == 2 and result.scores == {5: 9.0}


def test_coarse_item_rating_counts_do_not_move_for_a_few_new_ratings_and_off_leaves_them_out():
    from lagcl.profiles import rating_counts
    assert rating_counts(48, 40) == "48 in training, 83% positive"
    assert rating_counts(48, 40, coarse=True) == "about 50 in training, mostly positive"
    assert rating_counts(51, 42, coarse=True) == rating_counts(48, 40, coarse=True)
    assert rating_counts(9, 2, coarse=True) == "about 10 in training, more negative than positive"
    assert rating_counts(0, 0, coarse=True) == "none in training"
    users = pl.DataFrame({"user": [0], "raw_id": ["1"]})
    items = pl.DataFrame({"item": [0], "raw_id": ["tt9"], "title": ["Heat"], "categories": [["Crime"]]})
    inter = pl.DataFrame({"user": [0], "item": [0], "sign": [1], "split": ["train"], "timestamp": [1]})
    [_, item] = profile_requests(inter, users, items, item_rating_counts="off")
    assert item.attributes == {"genres": "Crime"}


def test_item_rating_counts_off_can_be_written_unquoted_on_the_command_line_and_in_yaml():
    from lagcl.config import load_config
    assert load_config(overrides=["profiles.item_rating_counts=off"]).profiles.item_rating_counts == "off"
    with pytest.raises(Exception, match="item_rating_counts"):
        load_config(overrides=["profiles.item_rating_counts=true"])
