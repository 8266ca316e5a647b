"""groups.incremental (issue 14): a rerun after new data keeps the partition groups of unchanged profiles and asks
the LLM only about new or changed profiles (eq. 5) and the candidate pairs their groups change (eq. 6); measured
in model requests against the local protocol server."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from lagcl.llm.protocol_server import LLMServer, _id_key, _payload, pipeline_model, prompt_text
from test_llm_compact import tiny_dataset

from lagcl.artifacts import StageDir, read_manifest
from lagcl.config import LLMConfig, load_config
from lagcl.groups import KindGroups, PreviousGroups, build_groups, profile_digest
from lagcl.semantic.base import Profile
from lagcl.semantic.llm_engine import LLMEngine

GENRES = ("noir", "musicals", "westerns")


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with LLMServer(pipeline_model) as s:
        yield s


def engine(server: LLMServer, cache: Path) -> LLMEngine:
    cfg = load_config(engine="openai", overrides=[f"engine.base_url={server.base_url}/v1", "engine.model=m",
                                                  "engine.retry_base_s=0.01", "engine.requests_per_minute=null"])
    return LLMEngine(cfg.engine, LLMConfig(), domain="movie", cache_dir=cache)


def users(n: int = 12, **changed: str) -> list[Profile]:
    """Users u0..u<n-1> (internal id = position) liking one of three genres; `changed` rewrites a summarization."""
    return [Profile("user", i, changed.get(f"u{i}", f"Enjoys {GENRES[i % 3]}."), "from ratings", label=f"u{i}")
            for i in range(n)]


def group(eng: LLMEngine, profiles: list[Profile], folder: Path, previous: PreviousGroups | None = None) -> KindGroups:
    with StageDir(folder, "groups", "fp") as sd:
        return build_groups(eng, "user", profiles, batch_size=4, target_group_size=2, tau_sim=0.8, k=2, seed=0,
                            sd=sd, previous=previous)


def as_previous(g: KindGroups) -> PreviousGroups:
    return PreviousGroups(g.partitions, g.members, g.similarity)


def asked(server: LLMServer, since: int) -> tuple[list[list[str]], int]:
    """The members of each partition request and the number of similarity requests after call `since`."""
    prompts = [prompt_text(c.body) for c in server.model_calls()[since:]]
    parts = [[r[_id_key(r)] for r in _payload(p)] for p in prompts if '"similarity_score"' not in p]
    return parts, sum('"similarity_score"' in p for p in prompts)


def member_sets(g: KindGroups) -> dict[int, frozenset[str]]:
    """partition_group -> the shown ids of its members."""
    return {pg: frozenset(ms) for pg, ms in g.members.group_by("partition_group").agg("shown").iter_rows()}


def test_an_unchanged_rerun_sends_no_request_and_keeps_every_group(server, tmp_path):
    first = group(engine(server, tmp_path / "llm"), users(), tmp_path / "a")
    n = len(server.model_calls())
    again = group(engine(server, tmp_path / "llm2"), users(), tmp_path / "b", as_previous(first))
    assert asked(server, n) == ([], 0)
    assert again.assignment.equals(first.assignment) and again.partitions.equals(first.partitions)
    assert (again.stats["profiles_kept"], again.stats["profiles_partitioned"]) == (12, 0)
    assert again.stats["similarity_reused"] == again.stats["candidate_pairs"] == first.stats["candidate_pairs"] > 0


def test_one_changed_profile_is_partitioned_alone_and_only_pairs_with_its_new_group_are_rated(server, tmp_path):
    first = group(engine(server, tmp_path / "llm"), users(), tmp_path / "a")
    n = len(server.model_calls())
    # a fresh response cache: every request the stage makes reaches the server
    again = group(engine(server, tmp_path / "llm2"), users(u5="Enjoys documentaries."), tmp_path / "b",
                  as_previous(first))
    partitions, similarity_requests = asked(server, n)
    assert partitions == [["u5"]]
    assert sorted(again.assignment["user"].to_list()) == list(range(12))  # every member in exactly one group
    assert (again.stats["profiles_kept"], again.stats["profiles_partitioned"]) == (11, 1)
    before, now = member_sets(first), member_sets(again)
    # a kept group: its previous members less u5, under its previous name and characteristics
    kept = {pg: old for pg, ms in now.items() if "u5" not in ms for old, was in before.items() if ms <= was}
    assert len(kept) == len(now) - 1 == len(before)
    names = dict(zip(first.partitions["partition_group"], first.partitions["name"]))
    assert all(names[old] == name for pg, old in kept.items()
               for name in again.partitions.filter(again.partitions["partition_group"] == pg)["name"])
    rating = {(a, b): s for a, b, s in first.similarity.select("group_a", "group_b", "similarity").iter_rows()}
    pairs = list(zip(again.similarity["group_a"], again.similarity["group_b"]))
    reused = [(a, b) for a, b in pairs if a in kept and b in kept and (kept[a], kept[b]) in rating]
    assert reused and again.stats["similarity_reused"] == len(reused)
    assert similarity_requests == len(pairs) - len(reused) > 0
    new_group = next(pg for pg, ms in now.items() if "u5" in ms)
    assert all(new_group in p for p in pairs if p not in reused)  # the rest: pairs with u5's new group
    rating_now = {(a, b): s for a, b, s in again.similarity.select("group_a", "group_b", "similarity").iter_rows()}
    assert [rating_now[p] for p in reused] == [rating[kept[a], kept[b]] for a, b in reused]


def test_new_profiles_are_partitioned_among_themselves_by_shown_id_and_gone_ones_leave_their_group(server, tmp_path):
    first = group(engine(server, tmp_path / "llm"), users(), tmp_path / "a")
    n = len(server.model_calls())
    # u0 is gone and every internal id shifts by one: members are matched by the shown id, not the internal one
    moved = [Profile("user", i - 1, p.summarization, p.reasoning, label=p.label) for i, p in enumerate(users(17))][1:]
    again = group(engine(server, tmp_path / "llm2"), moved, tmp_path / "b", as_previous(first))
    partitions, _ = asked(server, n)
    assert sorted(u for b in partitions for u in b) == ["u12", "u13", "u14", "u15", "u16"]
    assert [len(b) for b in partitions] == [4, 1]  # batch_size 4, among the new ones only
    assert (again.stats["profiles_kept"], again.stats["profiles_partitioned"]) == (11, 5)
    assert sorted(again.assignment["user"].to_list()) == list(range(16))
    assert "u0" not in again.members["shown"].to_list()


def test_the_profile_digest_follows_what_a_partition_reads():
    p = Profile("user", 3, "Enjoys noir.", "r", label="196")
    assert profile_digest(p) == profile_digest(Profile("user", 7, "Enjoys noir.", "r", label="196"))
    for other in (Profile("user", 3, "Enjoys westerns.", "r", label="196"), Profile("user", 3, "Enjoys noir.", "r2",
                  label="196"), Profile("user", 3, "Enjoys noir.", "r", label="197"),
                  Profile("user", 3, "Enjoys noir.", "r", label="196", facts={"likes": ["x"]})):
        assert profile_digest(other) != profile_digest(p)


# the stage: which previous result it starts from ----------------------------------------------------------------
def run_groups(server: LLMServer, tmp_path: Path, model: str, new_users: int = 0,
               started_from: str | None = None) -> dict:
    """prepare, profiles and groups (incremental); `started_from`: the groups folder is left as by a run that started
    from that previous result and stopped."""
    from tasks import groups as groups_stage
    from tasks import prepare as prepare_stage
    from tasks import profiles as profiles_stage
    from tasks.base import make_plan

    data = tiny_dataset(tmp_path / f"data{new_users}", new_users)
    cfg = load_config(data="my-csv", engine="openai", overrides=[
        f"cache_dir={tmp_path / 'cache'}", f"data.path={data}", "data.kcore=1", "data.name=tiny",
        f"engine.base_url={server.base_url}/v1", f"engine.model={model}", "engine.requests_per_minute=null",
        "profiles.item_rating_counts='off'", "groups.incremental=true", "groups.batch_size=4",
        "groups.target_group_size=2", *[f"pipeline.stages.{s}=false" for s in ("augment", "control", "gcl",
                                                                                "rerank", "evaluate")]])
    plan = make_plan(cfg)
    prepare_stage.run(plan)
    profiles_stage.run(plan)
    if started_from:
        with plan.stage_dir("groups") as sd:
            sd.write_shard(groups_stage.STARTED_FROM, pl.DataFrame({"folder": [started_from]}))
    n = len(server.model_calls())
    folder = Path(groups_stage.run(plan).path)
    meta = read_manifest(folder)["meta"]
    meta["partition_requests"] = len(asked(server, n)[0])
    meta["folder"], meta["plan"] = folder, plan
    return meta


def test_the_stage_starts_from_the_previous_result_of_the_same_model_and_never_from_another_models(server, tmp_path):
    first = run_groups(server, tmp_path, "m1")
    assert first["incremental_from"] is None and first["user"]["profiles_kept"] == 0
    other = run_groups(server, tmp_path, "m2", new_users=1)
    assert other["incremental_from"] is None and other["partition_requests"] > 1
    assert other["user"]["profiles_kept"] == other["item"]["profiles_kept"] == 0
    again = run_groups(server, tmp_path, "m1", new_users=1)  # one new user; items and other users unchanged
    assert again["incremental_from"] is not None and again["partition_requests"] == 1
    assert (again["user"]["profiles_kept"], again["user"]["profiles_partitioned"]) == (12, 1)
    assert again["item"]["profiles_partitioned"] == 0 and again["item"]["profiles_kept"] == first["item"]["members"]
    assert again["user"]["members"] == 13 and again["failed"] == 0
    assert again["incremental_from"] == first["folder"].name


def test_a_resumed_run_builds_on_the_result_it_started_from_even_when_a_newer_one_finished(server, tmp_path):
    first = run_groups(server, tmp_path, "m1")
    newer = run_groups(server, tmp_path, "m1", new_users=1)
    assert newer["incremental_from"] == first["folder"].name
    resumed = run_groups(server, tmp_path, "m1", new_users=2, started_from=first["folder"].name)
    assert resumed["incremental_from"] == first["folder"].name
    assert resumed["user"]["profiles_kept"] + resumed["user"]["profiles_partitioned"] == 14
    latest = run_groups(server, tmp_path, "m1", new_users=3)
    assert latest["incremental_from"] == resumed["folder"].name
