"""`pipeline.runner=dask`: the profile and score fan-out on a 2-worker Dask LocalCluster (prefect-dask)."""

from __future__ import annotations

import os

import pytest
from distributed import Client, LocalCluster
from lagcl.llm.protocol_server import LLMServer
from test_flow import run_pipeline
from test_llm_engine import good_model

from lagcl.artifacts import read_manifest
from lagcl.config import load_config
from lagcl.errors import BudgetExceededError, ConfigError
from lagcl.llm import Budget, ResponseCache
from lagcl.semantic.base import Profile, ProfileRequest, ScoreRequest
from lagcl.semantic.distributed import DistributedEngine
from lagcl.semantic.embedding import EmbeddingEngine
from tasks.base import make_plan, stage_engine

KEY = "sk-dask-test"


@pytest.fixture(scope="module")
def client():
    # worker processes inherit the environment they are started with: the key must be there first
    old = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = KEY
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as c:
        yield c
    if old is None:
        os.environ.pop("OPENAI_API_KEY", None)
    else:
        os.environ["OPENAI_API_KEY"] = old


def engines_per_worker(client: Client) -> list[int]:
    from lagcl.semantic import distributed

    return sorted(client.run(lambda: len(distributed._WORKER_ENGINES)).values())


def score_requests() -> list[ScoreRequest]:
    titles = ["Toy Story (1995) Animation Comedy", "Heat (1995) Action Crime Thriller", "Casablanca (1942) Drama",
              "Alien (1979) Horror Sci-Fi", "Babe (1995) Children's Comedy", "Fargo (1996) Crime Drama"]
    items = tuple((i, f"Title: {t}") for i, t in enumerate(titles))
    users = ["Enjoys animated family comedies.", "Likes tense crime thrillers and heists.",
             "Prefers classic black-and-white romance.", "A fan of science fiction horror."]
    return [ScoreRequest(u, text, pol, items) for u, text in enumerate(users) for pol in ("pos", "neg")]


def test_scores_from_two_workers_equal_the_local_engine_in_request_order(client, tmp_path):
    cfg = load_config()  # the default: embedding engine
    requests = score_requests()
    profiles = ([Profile("user", r.user, r.user_profile, "") for r in requests]
                + [Profile("item", i, t, "") for i, t in requests[0].items])
    local = EmbeddingEngine(cfg.engine, domain="movie")
    local.prime(profiles)
    expected = local.score(requests)

    dist = DistributedEngine(cfg, tmp_path, client.get_executor(), parts=2)
    dist.prime(profiles)
    got = dist.score(requests)

    assert [(r.user, r.polarity) for r in got] == [(r.user, r.polarity) for r in requests]
    assert [r.scores for r in got] == [r.scores for r in expected]
    assert engines_per_worker(client) == [1, 1]  # both workers took a part
    assert dist.usage().requests == len(requests)


def test_llm_requests_fan_out_once_each_and_usage_adds_up_to_what_the_server_received(client, tmp_path):
    with LLMServer(good_model) as server:
        cfg = load_config(engine="openai", overrides=[f"engine.base_url={server.base_url}/v1", "engine.model=test-model",
                                                      "engine.retry_base_s=0.01", "engine.requests_per_minute=null"])
        dist = DistributedEngine(cfg, tmp_path, client.get_executor(), parts=2)
        reqs = [ProfileRequest("user", u, liked=(f"Movie {u}",)) for u in range(6)]
        profiles = dist.profile(reqs)
        assert [p.id for p in profiles] == list(range(6))
        assert all(p.summarization == "Enjoys comedies." for p in profiles)
        assert len(server.model_calls()) == 6
        assert dist.usage().requests == 6 and dist.usage().cached == 0
        assert dist.usage().input_tokens > 0 and dist.usage().output_tokens > 0
        # the same requests again: every answer comes from the shared response cache, none reaches the server
        again = DistributedEngine(cfg, tmp_path, client.get_executor(), parts=2).profile(reqs)
        assert [p.summarization for p in again] == [p.summarization for p in profiles]
        assert len(server.model_calls()) == 6


def test_a_budget_is_shared_between_the_parts_so_the_run_never_pays_more(client, tmp_path):
    with LLMServer(good_model) as server:
        cfg = load_config(engine="openai", overrides=[
            f"engine.base_url={server.base_url}/v1", "engine.model=test-model", "engine.retry_base_s=0.01",
            "engine.requests_per_minute=null", "engine.max_concurrency=1",
            "llm.prices.test-model=[100.0,100.0]", "llm.budget_usd=1.0"])
        budget = Budget(run_usd=1.0, stage="profiles", run_paid_usd=0.25, ledger="ml-100k/profiles/test")
        dist = DistributedEngine(cfg, tmp_path, client.get_executor(), parts=2, budget=budget)
        reqs = [ProfileRequest("user", u, liked=(f"Movie {u}",)) for u in range(40)]
        with pytest.raises(BudgetExceededError, match=r"the run has cost \$0\.[0-9]+ of llm.budget_usd=\$1\.0000"):
            dist.profile(reqs)
        paid = dist.usage()
        assert 0 < paid.requests < 40
        assert paid.cost_usd <= 0.75  # what the run had paid before this stage counts
        assert len(server.model_calls()) == paid.requests  # everything that reached the server is accounted
        # each worker added what it paid to the stage's spend ledger in the shared response cache
        assert ResponseCache(tmp_path / "llm").spent(["ml-100k/profiles/test"]) == {
            "ml-100k/profiles/test": pytest.approx(paid.cost_usd)}


def test_a_stage_outside_the_flow_refuses_runner_dask_with_what_to_do_instead(tmp_path):
    cfg = load_config(overrides=[f"cache_dir={tmp_path}", "pipeline.runner=dask"])
    with pytest.raises(ConfigError, match="make pipeline"):
        stage_engine(make_plan(cfg), "profiles")


def test_the_flow_on_dask_writes_the_same_profiles_and_augmentation_as_the_local_runner(repo_root, tmp_path):
    stages = ["pipeline.stages.profiles=true", "pipeline.stages.augment=true", "augment.n_candidates=64"]
    for run in ("local", "dask"):
        (tmp_path / run).mkdir()
    local = run_pipeline(repo_root, tmp_path / "local", *stages)
    assert local.returncode == 0, local.stderr[-3000:]
    dask = run_pipeline(repo_root, tmp_path / "dask", *stages, "pipeline.runner=dask", "pipeline.dask_workers=2")
    assert dask.returncode == 0, dask.stderr[-3000:]
    out = dask.stdout + dask.stderr
    assert "fan-out over the Dask cluster" in out and "2 worker thread(s)" in out
    assert "lagcl-stages-dask" in out
    for stage, table in (("profiles", "user_profiles.parquet"), ("profiles", "item_profiles.parquet"),
                         ("augment", "augmented.parquet")):
        folders = [next((tmp_path / run / "cache" / "ml-100k" / stage).iterdir()) for run in ("local", "dask")]
        checksums = [read_manifest(f)["files"][table] for f in folders]
        assert checksums[0] == checksums[1], f"{stage}/{table} differs between the runners"
