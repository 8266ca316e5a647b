"""One LLM budget for the whole run (tasks/budget.py, docs/design.md 16) and a server that cannot be reached
(lagcl/llm/client.py, docs/design.md 17), against the local server that speaks the real OpenAI and Anthropic
wire protocols (lagcl/llm/protocol_server.py), driven by the real SDKs and the real stages."""

from __future__ import annotations

import csv
import socket
import time
from pathlib import Path

import pytest
from lagcl.llm.protocol_server import LLMServer, Reply, Status, pipeline_model

from lagcl.artifacts import read_manifest
from lagcl.config import EngineConfig, LLMConfig, load_config
from lagcl.errors import BudgetExceededError, BudgetRequiredError, LLMError
from lagcl.llm import Budget, LLMRequest, make_client
from tasks import augment as augment_stage
from tasks import prepare as prepare_stage
from tasks import profiles as profiles_stage
from tasks.base import make_plan, stage_engine
from tasks.budget import stage_budget, stage_costs
from tasks.workload import workload

LLM_ONLY = [f"pipeline.stages.{s}=false" for s in ("groups", "control", "gcl", "rerank", "evaluate")]


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")


def tiny_dataset(root: Path) -> Path:
    """8 users x 10 items, each user rating 6 items (5, 4 or 2 stars): every user is a cold-start user."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "ratings.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["user_id", "item_id", "rating", "timestamp"])
        for u in range(8):
            for j in range(6):
                w.writerow([f"user {u}", f"item {(u + 2 * j) % 10}", (5, 4, 2)[(u + j) % 3], 1000 * u + j])
    with open(root / "items.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["item_id", "title", "genres"])
        for i in range(10):
            w.writerow([f"item {i}", f"Title {i}", ("Drama", "Comedy|Romance", "Action")[i % 3]])
    return root


def run_config(tmp_path: Path, server: LLMServer, *sets: str, cache: str = "cache", price: bool = True):
    """profiles + augment of the tiny dataset against `server`, one request at a time (so a stop is reproducible);
    `price`: the model costs $1,000 per 1M tokens, a few dollars a stage."""
    data = tiny_dataset(tmp_path / "data")
    return load_config(data="my-csv", engine="openai", overrides=[
        f"cache_dir={tmp_path / cache}", f"data.path={data}", "data.kcore=1", "data.name=tiny",
        f"engine.base_url={server.base_url}/v1", "engine.model=budget-model", "engine.requests_per_minute=null",
        "engine.max_concurrency=1", "augment.items_per_call=3", "augment.n_candidates=6",
        *(["llm.prices.budget-model=[1000.0,1000.0]"] if price else []), *LLM_ONLY, *sets])


def paid(ref) -> float:
    return read_manifest(Path(ref.path))["meta"]["llm_paid_usd"]


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on: bound, then closed."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --- one budget for the run -------------------------------------------------------------------------

def test_the_run_budget_spans_the_stages_stops_in_the_second_and_a_resumed_run_counts_what_it_paid(tmp_path):
    with LLMServer(pipeline_model) as server:
        # what each stage costs, measured by a run without a cap in a cache of its own
        free = make_plan(run_config(tmp_path, server, "llm.budget_usd=none", cache="measure"))
        prepare_stage.run(free)
        p_usd, a_usd = paid(profiles_stage.run(free)), paid(augment_stage.run(free))
        augment_requests = sum(1 for c in server.model_calls() if "like_score" in str(c.body))
        budget = max(p_usd, a_usd) + min(p_usd, a_usd) / 2  # each stage fits alone, both together do not
        assert p_usd < budget and a_usd < budget < p_usd + a_usd

        plan = make_plan(run_config(tmp_path, server, f"llm.budget_usd={budget}"))
        prepare_stage.run(plan)
        assert paid(profiles_stage.run(plan)) == pytest.approx(p_usd)
        before = len(server.model_calls())
        with pytest.raises(BudgetExceededError) as stop:
            augment_stage.run(plan)
        sent = len(server.model_calls()) - before
        assert 0 < sent < augment_requests
        costs = stage_costs(plan)
        assert costs["profiles"] == pytest.approx(p_usd) and 0 < costs["augment"] < a_usd
        assert sum(costs.values()) <= budget
        message = str(stop.value)
        print(f"profiles ${p_usd:.2f} + augment ${a_usd:.2f} uncapped; llm.budget_usd={budget:.2f}: augment sent "
              f"{sent} of {augment_requests} requests, then: {message}")  # the measurement quoted in the report
        assert "\n" not in message
        assert f"the run has cost ${sum(costs.values()):.4f} of llm.budget_usd=${budget:.4f}" in message
        assert f"profiles ${p_usd:.4f}" in message and f"augment ${costs['augment']:.4f}" in message
        assert "Raise llm.budget_usd and rerun" in message

        # the same command again: what the stopped run paid counts, so nothing more fits and nothing is sent
        again = len(server.model_calls())
        with pytest.raises(BudgetExceededError):
            augment_stage.run(make_plan(run_config(tmp_path, server, f"llm.budget_usd={budget}")))
        assert len(server.model_calls()) == again
        assert stage_costs(plan)["augment"] == pytest.approx(costs["augment"])

        # a larger budget resumes: only the requests never answered are sent, and the stage's cost over both
        # attempts is what the uncapped run paid for the same requests
        more = make_plan(run_config(tmp_path, server, f"llm.budget_usd={p_usd + a_usd + 1}"))
        ref = augment_stage.run(more)
        assert len(server.model_calls()) - again == augment_requests - sent
        meta = read_manifest(Path(ref.path))["meta"]
        assert meta["llm_paid_usd"] == pytest.approx(a_usd)
        assert meta["usage"]["cost_usd"] == pytest.approx(a_usd - costs["augment"])  # this attempt's part


def test_a_stage_budget_still_caps_its_stage_counting_its_earlier_attempts(tmp_path):
    with LLMServer(pipeline_model) as server:
        plan = make_plan(run_config(tmp_path, server, "llm.budget_usd=1000", "llm.stage_budget_usd.profiles=3"))
        prepare_stage.run(plan)
        with pytest.raises(BudgetExceededError) as stop:
            profiles_stage.run(plan)
        spent = stage_costs(plan)["profiles"]
        assert 0 < spent <= 3
        assert f"stage profiles has cost ${spent:.4f} of llm.stage_budget_usd.profiles=$3.0000" in str(stop.value)
        budget = stage_budget(plan, "profiles")
        assert budget.stage_paid_usd == pytest.approx(spent) and budget.allowance_usd == pytest.approx(3 - spent)


def test_a_paid_engine_without_a_budget_stops_before_any_request_with_the_estimate_and_the_setting(tmp_path):
    with LLMServer(pipeline_model) as server:
        plan = make_plan(run_config(tmp_path, server))
        prepare_stage.run(plan)
        with pytest.raises(BudgetRequiredError) as stop:
            profiles_stage.run(plan)
        assert server.log == []  # not one request reached the server
        estimate = workload(plan).estimate(plan.cfg, out=None)
        message = str(stop.value)
        assert "\n" not in message
        assert f"the dry-run estimate for this run is ${estimate.total_usd:,.2f}" in message
        assert f"profiles ${estimate.stage_usd('profiles'):,.2f}" in message
        assert "llm.budget_usd=" in message and "llm.budget_usd=none" in message
        assert not (Path(plan.ref("profiles").path) / "manifest.json").exists()


def test_budget_none_runs_a_paid_engine_without_a_cap(tmp_path):
    with LLMServer(pipeline_model) as server:
        plan = make_plan(run_config(tmp_path, server, "llm.budget_usd=none"))
        prepare_stage.run(plan)
        ref = profiles_stage.run(plan)
        assert len(server.model_calls()) == 18  # 8 users + 10 items
        assert stage_budget(plan, "augment").allowance_usd is None
        assert paid(ref) > 0


def test_an_unpriced_or_free_model_needs_no_budget(tmp_path):
    with LLMServer(pipeline_model) as server:
        for name, sets in (("unpriced", []), ("free", ["llm.prices.budget-model=[0,0]"])):
            plan = make_plan(run_config(tmp_path, server, *sets, cache=name, price=False))
            prepare_stage.run(plan)
            assert paid(profiles_stage.run(plan)) == 0.0


def test_the_offline_embedding_engine_runs_without_a_budget_and_writes_no_llm_cache(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    plan = make_plan(load_config(data="my-csv", overrides=[
        f"cache_dir={tmp_path / 'cache'}", f"data.path={data}", "data.kcore=1", "data.name=tiny", *LLM_ONLY]))
    assert plan.cfg.engine.name == "embedding" and plan.cfg.llm.budget_usd is None
    prepare_stage.run(plan)
    ref = profiles_stage.run(plan)
    assert "llm_paid_usd" not in read_manifest(Path(ref.path))["meta"]
    assert stage_budget(plan, "augment") is None
    assert not (tmp_path / "cache" / "llm").exists()


def test_a_stage_budget_is_the_tighter_of_the_two_caps_less_what_was_paid():
    assert Budget(run_usd=50, stage="augment", stage_usd=20).allowance_usd == 20
    assert Budget(run_usd=50, stage="augment", stage_usd=20, run_paid_usd=40, stage_paid_usd=5).allowance_usd == 10
    assert Budget(run_usd=50, stage="groups", run_paid_usd=60).allowance_usd == 0
    assert Budget(stage="augment", stage_usd=5, stage_paid_usd=1).allowance_usd == 4
    assert Budget().allowance_usd is None


def test_budget_none_and_numbers_are_read_from_overrides_and_anything_else_is_refused():
    assert load_config(overrides=["llm.budget_usd=none"]).llm.budget_usd == "none"
    assert load_config(overrides=["llm.budget_usd=None"]).llm.run_budget_usd is None
    assert load_config(overrides=["llm.budget_usd=12"]).llm.run_budget_usd == 12.0
    assert load_config().llm.budget_usd is None
    from lagcl.errors import ConfigError

    for bad in ("lots", "-1"):
        with pytest.raises(ConfigError, match="llm.budget_usd"):
            load_config(overrides=[f"llm.budget_usd={bad}"])


# --- a server that cannot be reached ------------------------------------------------------------------

def engine_at(url: str, name: str = "openai", **kw) -> EngineConfig:
    """The engine's own retry settings (6 retries, 1 s doubling to 60 s) unless `kw` says otherwise."""
    return EngineConfig(**{"name": name, "model": "test-model", "base_url": url, "api_key_env": "OPENAI_API_KEY",
                           "timeout_s": 5.0, **kw})


def requests(n: int) -> list[LLMRequest]:
    return [LLMRequest.single("You answer in JSON.", f"question {i}", max_tokens=50, operation="score_pos")
            for i in range(n)]


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
@pytest.mark.parametrize("where", ["closed port", "unresolvable host"])
def test_an_unreachable_server_stops_within_seconds_with_one_line_naming_the_url_and_the_setting(
        tmp_path, backend, where):
    url = f"http://127.0.0.1:{closed_port()}/v1" if where == "closed port" else "http://nonexistent.invalid/v1"
    client = make_client(engine_at(url, backend), LLMConfig(), tmp_path)
    start = time.monotonic()
    with pytest.raises(LLMError) as stop:
        client.generate_sync(requests(20))
    took = time.monotonic() - start
    message = str(stop.value)
    print(f"{backend} {where}: stopped after {took:.1f}s: {message}")  # the measurement quoted in the report
    assert took < 10  # engine.connect_wait_s=5 by default, not 7 attempts with backoff per request
    assert "\n" not in message and url in message and "engine.base_url" in message
    assert ("connection refused" if where == "closed port" else "does not resolve") in message


def test_the_wait_for_an_unreachable_server_is_engine_connect_wait_s(tmp_path):
    client = make_client(engine_at(f"http://127.0.0.1:{closed_port()}/v1", connect_wait_s=1.0), LLMConfig(),
                         tmp_path)
    start = time.monotonic()
    with pytest.raises(LLMError, match="engine.connect_wait_s=1"):
        client.generate_sync(requests(3))
    assert 1.0 <= time.monotonic() - start < 3.0


def test_a_profiles_stage_against_an_unreachable_server_ends_in_one_line(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    data = tiny_dataset(tmp_path / "data")
    plan = make_plan(load_config(data="my-csv", engine="openai", overrides=[
        f"cache_dir={tmp_path / 'cache'}", f"data.path={data}", "data.kcore=1", "data.name=tiny",
        f"engine.base_url={url}", "engine.model=test-model", *LLM_ONLY]))
    prepare_stage.run(plan)
    start = time.monotonic()
    with pytest.raises(LLMError) as stop:
        profiles_stage.run(plan)
    assert time.monotonic() - start < 10
    assert str(stop.value).startswith(f"cannot reach the LLM server at {url} (connection refused")


def test_a_503_before_the_first_answer_is_still_retried_with_backoff(tmp_path):
    with LLMServer(lambda prompt: '{"answer": 42}') as server:
        server.script = [Status(503)] * 3
        client = make_client(engine_at(f"{server.base_url}/v1", retry_base_s=0.5, retry_max_s=2.0, max_retries=3,
                                       connect_wait_s=0.1), LLMConfig(), tmp_path)
        start = time.monotonic()
        [answer] = client.generate_sync(requests(1))
        assert answer.ok and answer.attempts == 4  # three 503s, then the answer
        assert time.monotonic() - start > 0.1  # longer than connect_wait_s: 503s are not "unreachable"
        assert client.accounting.totals().retries == {"5xx": 3}


def test_after_a_first_answer_a_refused_connection_is_retried_as_transient(tmp_path):
    with LLMServer(lambda prompt: '{"answer": 42}') as server:
        client = make_client(engine_at(f"{server.base_url}/v1", retry_base_s=0.01, retry_max_s=0.05,
                                       max_retries=2, connect_wait_s=0.1), LLMConfig(), tmp_path)
        [first] = client.generate_sync(requests(1))
        assert first.ok
    # the server is gone now; the client has heard from it, so the request is retried, then recorded failed
    [later] = client.generate_sync([LLMRequest.single("sys", "after the server went away", max_tokens=50)])
    assert later.error is not None and "connection refused" in later.error and later.attempts == 3
    assert client.accounting.totals().retries.get("connection") == 2


def test_replies_for_a_cached_batch_never_touch_an_unreachable_server(tmp_path):
    with LLMServer(lambda prompt: '{"answer": 42}') as server:
        url = f"{server.base_url}/v1"
        make_client(engine_at(url), LLMConfig(), tmp_path).generate_sync(requests(2))
    # same URL, nothing listens there any more: everything is in the response cache
    again = make_client(engine_at(url), LLMConfig(), tmp_path).generate_sync(requests(2))
    assert all(a.ok and a.cached for a in again)


def test_the_ledger_counts_paid_answers_that_later_proved_unusable(tmp_path):
    from lagcl.llm import ResponseCache

    with LLMServer(lambda prompt: "not json at all") as server:
        server.script = [Reply("not json", input_tokens=100, output_tokens=100)] * 2
        client = make_client(engine_at(f"{server.base_url}/v1"), LLMConfig(prices={"test-model": (1000.0, 1000.0)}),
                             tmp_path, budget=Budget(run_usd=10, ledger="tiny/profiles/x"))
        client.generate_sync(requests(2))
        client.cache.delete([client.key(r) for r in requests(2)])  # what the engine does to unusable replies
    assert ResponseCache(tmp_path).spent(["tiny/profiles/x"]) == {"tiny/profiles/x": pytest.approx(0.4)}


def test_stage_engine_hands_the_llm_engine_the_stages_budget(tmp_path):
    with LLMServer(pipeline_model) as server:
        plan = make_plan(run_config(tmp_path, server, "llm.budget_usd=50", "llm.stage_budget_usd.augment=20"))
        assert stage_engine(plan, "augment").client.accounting.budget_usd == 20.0
        assert stage_engine(plan, "profiles").client.accounting.budget_usd == 50.0


# --- deployments ----------------------------------------------------------------------------------------

def test_every_shipped_deployment_of_a_paid_engine_carries_a_budget(repo_root):
    from flows.deploy import load_schedules
    from flows.options import build_config
    from lagcl.llm.accounting import paid_price

    entries = load_schedules(repo_root / "conf" / "schedules.yaml")  # refuses a paid one without a budget
    paid = []
    for e in entries:
        p = e["parameters"]
        cfg = build_config(p["data"], p["engine"], p["model"], None, None, p.get("overrides") or [])
        if paid_price(cfg.engine, cfg.llm) is not None:
            paid.append((e["name"], cfg.llm.budget_usd))
    assert paid == [("ml-100k-openai-nightly", 60.0)]


def test_a_paid_deployment_without_a_budget_is_refused_at_registration(tmp_path):
    from flows.deploy import load_schedules
    from lagcl.errors import ConfigError

    schedules = tmp_path / "schedules.yaml"
    schedules.write_text("deployments:\n  - name: llm-nightly\n    cron: '0 2 * * *'\n"
                         "    parameters: {data: ml-100k, engine: anthropic, model: lightgcn}\n")
    with pytest.raises(ConfigError, match="deployment llm-nightly runs the paid engine anthropic/claude-sonnet-4-5 "
                                          "without a budget: add llm.budget_usd="):
        load_schedules(schedules)
    schedules.write_text(schedules.read_text().replace("model: lightgcn}", "model: lightgcn, "
                                                       "overrides: [llm.budget_usd=none]}"))
    assert [e["name"] for e in load_schedules(schedules)] == ["llm-nightly"]
