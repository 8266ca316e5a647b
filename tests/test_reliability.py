"""Reliability under the conditions of an overnight run against a paid API: two runs on one cache, a server
that misbehaves under load, and an API key that must never be written anywhere. (Crash-anywhere resume is
`make chaos`, scripts/chaos.py; RELIABILITY.md has the table of faults and the tests that cover them.)"""

from __future__ import annotations

import csv
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest
from lagcl.llm.protocol_server import Chaos, LLMServer, Status, pipeline_model

from lagcl.artifacts import read_manifest, read_table
from lagcl.config import load_config
from lagcl.data.fetch import ensure_ml100k
from tasks import augment as augment_stage
from tasks import prepare as prepare_stage
from tasks import profiles as profiles_stage
from tasks.base import make_plan

ONLY_PROFILES = [f"pipeline.stages.{s}=false" for s in ("augment", "groups", "control", "gcl", "rerank", "evaluate")]
FAKE_KEY = "sk-lagcl-FAKE-0123456789abcdef"


@pytest.fixture(scope="module")
def ml100k(repo_root):
    return ensure_ml100k(repo_root / "cache" / "raw" / "ml-100k")


def flow_args(cache: Path, server: LLMServer, data_path: Path, *sets: str) -> list[str]:
    args = [sys.executable, "-m", "flows.pipeline", "--engine", "openai"]
    for s in (f"cache_dir={cache}", f"data.path={data_path}", f"engine.base_url={server.base_url}/v1",
              "engine.model=test-model", "engine.requests_per_minute=null", *ONLY_PROFILES, *sets):
        args += ["--set", s]
    return args


def flow_env(prefect_home: Path, key: str = "sk-test") -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "DO_NOT_TRACK": "1", "OPENAI_API_KEY": key}
    env.pop("PREFECT_API_URL", None)
    return env


def lock_held(folder: Path) -> bool:
    """Whether some process holds the stage folder's flock (read from /proc/locks: looking takes no lock)."""
    try:
        inode = (folder / ".lock").stat().st_ino
    except FileNotFoundError:
        return False
    return any(len(p) > 5 and p[1] == "FLOCK" and p[5].endswith(f":{inode}")
               for p in (line.split() for line in Path("/proc/locks").read_text().splitlines()))


# --- two runs at once -----------------------------------------------------------------------------

def test_a_second_run_on_the_same_cache_is_refused_at_the_locked_stage_naming_its_holder(repo_root, tmp_path,
                                                                                         ml100k):
    """Run A holds the profiles stage (its LLM requests are held at the server); run B, the same command
    on the same cache, reuses the finished prepare stage and stops at profiles with a message naming A's
    process and what to do, without sending a request. A then finishes; B's rerun reuses everything; the
    LLM cache has each answer once and passes SQLite's integrity check."""
    gate = threading.Event()

    def held(prompt: str) -> str:
        gate.wait(120)
        return pipeline_model(prompt)

    cache = tmp_path / "cache"
    with LLMServer(held) as server:
        args = flow_args(cache, server, ml100k)
        a = subprocess.Popen(args, cwd=repo_root, env=flow_env(tmp_path / "prefect-a"), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            profiles = make_plan(load_config(engine="openai", overrides=args[6::2])).ref("profiles")
            deadline = time.time() + 300
            while not (lock_held(Path(profiles.path)) and server.model_calls()):
                assert a.poll() is None and time.time() < deadline, "run A never reached the profiles stage"
                time.sleep(0.2)

            b = subprocess.run(args, cwd=repo_root, env=flow_env(tmp_path / "prefect-b"), capture_output=True,
                               text=True, timeout=600)
            in_flight = len(server.model_calls())
        finally:
            gate.set()
        a_out, _ = a.communicate(timeout=600)
        assert a.returncode == 0, a_out[-3000:]

        assert b.returncode == 2
        [last] = [line for line in b.stderr.splitlines() if line.startswith("error: ")]
        assert last.startswith("error: stage 'profiles'") and "is being written by another run" in last
        assert f"process {a.pid} on " in last and "run the same command again" in last
        assert in_flight == 8  # A's first requests (engine.max_concurrency), none from B

        n_profiles = read_manifest(Path(profiles.path))["meta"]["requested"]
        assert len(server.model_calls()) == n_profiles == 938 + 1008  # every profile asked once, by A
        again = subprocess.run(args, cwd=repo_root, env=flow_env(tmp_path / "prefect-b"), capture_output=True,
                               text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        assert len(server.model_calls()) == n_profiles  # B's rerun found the stage finished

    con = sqlite3.connect(cache / "llm" / "responses.sqlite")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == n_profiles


# --- a misbehaving server ---------------------------------------------------------------------------

def tiny_dataset(root: Path) -> Path:
    """20 users x 15 items, each user rating 8 items (5, 4 or 2 stars): every user is a cold-start user."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "ratings.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["user_id", "item_id", "rating", "timestamp"])
        for u in range(20):
            for j in range(8):
                w.writerow([f"user {u}", f"item {(u + 2 * j) % 15}", (5, 4, 2)[(u + j) % 3], 1000 * u + j])
    with open(root / "items.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["item_id", "title", "genres"])
        for i in range(15):
            w.writerow([f"item {i}", f"Title {i}", ("Drama", "Comedy|Romance", "Action")[i % 3]])
    return root


def served(calls, since: int) -> dict[str, int]:
    """What the server answered after log position `since`: delivered replies and their tokens."""
    window = [c for c in calls[since:] if c.answered_at is not None and c.outcome in ("reply", "malformed_reply")]
    return {"requests": len(window), "input_tokens": sum(c.input_tokens for c in window),
            "output_tokens": sum(c.output_tokens for c in window)}


def test_llm_stages_finish_against_a_server_with_errors_garbage_latency_and_429_storms_and_accounting_matches(
        tmp_path, monkeypatch):
    """20% 5xx, 10% malformed (half a broken HTTP body, half a reply that is not JSON), latency up to 5 s,
    a 429 storm (Retry-After) every 40 requests. The profiles and augment stages finish with every user and
    item profiled and every candidate scored; each stage run's manifest counts exactly the replies and
    tokens the server's own log says it delivered, and the spend is those tokens at the configured price."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    data = tiny_dataset(tmp_path / "data")
    with LLMServer(pipeline_model) as server:
        server.chaos = Chaos(seed=3, error_rate=0.2, malformed_rate=0.1, max_latency_s=5.0, storm_every=40,
                             storm_length=6, retry_after_s=0.5)
        cfg = load_config(data="my-csv", engine="openai", overrides=[
            f"cache_dir={tmp_path / 'cache'}", f"data.path={data}", "data.kcore=1", "data.name=tiny",
            f"engine.base_url={server.base_url}/v1", "engine.model=chaos-model", "engine.requests_per_minute=null",
            "engine.max_concurrency=16", "engine.timeout_s=30", "engine.retry_base_s=0.05", "engine.retry_max_s=0.5",
            "llm.prices.chaos-model=[1.0,2.0]", "llm.budget_usd=none", "augment.items_per_call=5",
            *[f"pipeline.stages.{s}=false" for s in ("groups", "control", "gcl", "rerank", "evaluate")]])
        plan = make_plan(cfg)
        prepare_stage.run(plan)
        start = time.monotonic()
        for stage in (profiles_stage, augment_stage):
            for _ in range(4):  # a stage that recorded failed requests runs again and asks only those
                since = len(server.log)
                ref = stage.run(plan)
                meta = read_manifest(Path(ref.path))["meta"]
                assert {k: meta["usage"][k] for k in ("requests", "input_tokens", "output_tokens")} == \
                    served(server.log, since)
                got = served(server.log, since)
                assert meta["usage"]["cost_usd"] == pytest.approx(
                    (got["input_tokens"] * 1.0 + got["output_tokens"] * 2.0) / 1e6)
                if not meta["failed"]:
                    break
            assert meta["failed"] == 0
        elapsed = time.monotonic() - start
        outcomes = pl.Series([c.outcome for c in server.model_calls()]).value_counts()
        faults = dict(outcomes.rows())

    print(f"server outcomes {faults}, {len(server.model_calls())} model calls in {elapsed:.0f}s")  # RELIABILITY.md
    assert {"error", "429", "malformed_wire", "malformed_reply"} <= set(faults), faults
    profiles = Path(plan.ref("profiles").path)
    assert read_table(profiles, "user_profiles").height == 20 and read_table(profiles, "item_profiles").height == 15
    assert read_table(profiles, "user_profiles")["summarization"].str.starts_with("Enjoys").all()
    augment = read_manifest(Path(plan.ref("augment").path))["meta"]
    assert augment["cold_users"] == 20 and augment["scores"] > 0
    assert elapsed < 150
    # the run summary puts the HTTP calls and retries behind the answered requests
    from flows.summary import llm_lines

    lines = llm_lines({s: plan.ref(s).path for s in ("prepare", "profiles", "augment")})
    assert [ln.split(":")[0] for ln in lines] == ["LLM profiles", "LLM augment"]
    u = augment["usage"]
    assert u["http_calls"] >= u["requests"] - u["cached"]
    assert f"{u['http_calls']:,} HTTP calls" in lines[1] and f"{u['requests']:,} requests answered" in lines[1]


# --- secrets -----------------------------------------------------------------------------------------

def test_a_fake_api_key_is_sent_to_the_server_but_reaches_no_file_of_the_run_and_no_log(repo_root, tmp_path,
                                                                                        ml100k):
    """A real run (prepare + profiles through the flow, Prefect's temporary server included) with a fake key;
    the server echoes the key back in error bodies. Every file under the run's cache and Prefect home (SQLite,
    WAL, Parquet, JSON, logs) and the captured output are searched for the key's bytes."""
    with LLMServer(pipeline_model) as server:
        echo = '{"error": {"message": "invalid request for key %s"}}' % FAKE_KEY
        server.script = [Status(500, body=echo), Status(429, retry_after=0.1, body=echo), Status(400, body=echo)]
        proc = subprocess.run(flow_args(tmp_path / "cache", server, ml100k, "data.max_interactions=10000",
                                        "data.kcore=4", "engine.retry_base_s=0.05"),
                              cwd=repo_root, env=flow_env(tmp_path / "prefect", FAKE_KEY), capture_output=True,
                              timeout=600)
        sent = server.model_calls()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all(c.headers["authorization"] == f"Bearer {FAKE_KEY}" for c in sent)  # the key was in use
    assert b"invalid request for key [redacted]" in proc.stdout + proc.stderr  # the echo was logged, redacted

    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".sqlite" for p in files) and any(p.suffix == ".parquet" for p in files)
    assert any("prefect" in p.parts for p in files)
    assert [p for p in files if FAKE_KEY.encode() in p.read_bytes()] == []
    print(f"{len(files)} files and {len(proc.stdout + proc.stderr):,} bytes of output searched")  # RELIABILITY.md
    assert FAKE_KEY.encode() not in proc.stdout + proc.stderr
